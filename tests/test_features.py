"""Feature maps of any layer: the hooked outputs are the layer's real outputs, ViT tokens become patch grids, a bad
layer name lists the valid ones, and ``imgcls explain features`` writes the figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.evaluate.infer import Predictor
from imgcls.explain.features import UnknownLayerError, as_maps, feature_maps, plot_feature_maps, viewable_layers
from imgcls.export.bench import init_checkpoint
from imgcls.plotting import save_figure

ARTIFACTS = Path(__file__).parent / "artifacts" / "features"


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("features") / "run"
    init_checkpoint(run / "checkpoints" / "best.pt", ["model.name=simple_cnn_tiny"])
    return run


def _digit(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    path = tmp_path / "digit.png"
    Image.fromarray((load_digits().images[3] * 16).clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_feature_maps_are_the_layers_outputs(cnn, tmp_path):
    p = Predictor.from_checkpoint(cnn)
    x = p.load_image(_digit(tmp_path))[None]
    maps = feature_maps(p.model, x, ["stages.0", "stages.1"])
    with torch.no_grad():
        first = p.model.stages[0](x)
        second = p.model.stages[1](first)
    assert torch.equal(maps["stages.0"], first) and torch.equal(maps["stages.1"], second)
    assert x.shape[-1] > maps["stages.0"].shape[-1] and maps["stages.1"].shape[1] == 16  # coarser, wider
    layers = viewable_layers(p.model, x)
    assert {"stages.0", "stages.1", "stages.0.0"} <= set(layers) and "head" not in layers  # logits are no map
    fig = plot_feature_maps(maps["stages.0"][0], image=p.load_image(_digit(tmp_path)), layer="stages.0", channels=6)
    assert len([a for a in fig.axes if a.images]) == 7  # the input and six channels
    save_figure(fig, ARTIFACTS / "simple_cnn_tiny_stages-0.png")


def test_bad_layer_lists_the_valid_ones(cnn, tmp_path):
    p = Predictor.from_checkpoint(cnn)
    x = p.load_image(_digit(tmp_path))[None]
    for name, says in (("stages.9", "the model has no layer 'stages.9'"), ("head", "no feature maps come out")):
        with pytest.raises(UnknownLayerError, match="layers with feature maps: ") as e:
            feature_maps(p.model, x, [name])
        assert says in str(e.value) and "stages.1" in str(e.value)


def test_vit_tokens_become_patch_grids():
    tokens = torch.randn(2, 1 + 16, 8)  # a class token and a 4x4 grid of patches, 8 dims
    grid = as_maps(tokens)
    assert grid.shape == (2, 8, 4, 4) and torch.equal(grid[1, :, 2, 3], tokens[1, 1 + 2 * 4 + 3])
    assert as_maps(torch.randn(2, 10)) is None and as_maps(torch.randn(2, 7, 8)) is None


def test_explain_features_cli(cnn, tmp_path, capsys):
    img = _digit(tmp_path)
    out = tmp_path / "out"
    assert main(["explain", "features", str(cnn), str(img), "--layer", "stages.0", "--layer", "stages.1",
                 "--channels", "4", "--out", str(out)]) == 0  # fmt: skip
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["digit_features_stages-0.png", "digit_features_stages-1.png"]
    assert "stages.1 (16 channels of" in capsys.readouterr().out
    assert main(["explain", "features", str(cnn), str(img), "--layer", "nope"]) == 2
    assert "no layer 'nope'; layers with feature maps: stages, stages.0" in capsys.readouterr().err
    assert main(["explain", "features", str(cnn), str(img)]) == 2
    assert "name the layer(s) to show with --layer" in capsys.readouterr().err
