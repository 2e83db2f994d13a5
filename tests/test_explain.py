"""Interpretability: Grad-CAM / Grad-CAM++ find the object, ViT attention and rollout, embeddings, explain CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imgcls.cli import main
from imgcls.config import build_config, to_dict
from imgcls.engine.checkpoint import atomic_save
from imgcls.explain.attention import all_attention_maps, attention_rollout, layer_attention
from imgcls.explain.embeddings import extract_features, project
from imgcls.explain.figures import Prediction, explanation_figure
from imgcls.explain.gradcam import GradCAM, find_cam_layer, overlay_heatmap, save_png
from imgcls.models import create_model, list_models

TINY = [
    "data.name=digits",
    "data.subset=300",
    "data.batch_size=32",
    "model.name=simple_cnn_tiny",
    "run.progress=false",
    "run.tracker=none",
]


# --------------------------------------------------------------------------------------------------------------------
# Grad-CAM on a synthetic dataset whose class is decided by an object at a known place
# --------------------------------------------------------------------------------------------------------------------


def _shapes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16x16 noise images with one bright 4x4 object at a random known place: class 0 a filled square, class 1 a
    plus sign. Returns (images [n, 1, 16, 16], labels [n], top-left corners [n, 2]).

    The class is decided by the object, not by where it is: a CNN with global pooling has no absolute position (only
    distance to the padded border), so with position-defined classes its evidence sits on the border-facing
    background and the heatmap peak would not test localisation.
    """
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.1 * torch.randn(n, 1, 16, 16, generator=g)
    pos = torch.randint(0, 13, (n, 2), generator=g)
    for i in range(n):
        r, c = pos[i].tolist()
        if y[i] == 0:
            x[i, 0, r : r + 4, c : c + 4] += 1.0
        else:
            x[i, 0, r + 1 : r + 3, c : c + 4] += 1.0
            x[i, 0, r : r + 4, c + 1 : c + 3] += 1.0
    return x, y, pos


@pytest.fixture(scope="module")
def shape_model():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y, _ = _shapes(512, g)
    model = create_model("simple_cnn_tiny", num_classes=2, in_chans=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):  # about 3 s on one core
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = _shapes(40, g)
    with torch.no_grad():
        assert (model(test[0]).argmax(1) == test[1]).float().mean() >= 0.95
    return model, test


@pytest.mark.parametrize("plus_plus", [False, True])
def test_gradcam_peak_falls_on_the_object(shape_model, plus_plus):
    model, (x, y, pos) = shape_model
    cam = GradCAM(model, plus_plus=plus_plus)
    assert cam.layer_name == model.cam_layer == "stages.1"
    maps, logits = cam(x, y)
    assert maps.shape == (40, 16, 16) and logits.shape == (40, 2)
    assert maps.min() >= 0 and maps.max() <= 1
    hits = 0
    for i in range(len(x)):
        r, c = divmod(int(maps[i].argmax()), 16)
        pr, pc = pos[i].tolist()
        hits += (pr - 1 <= r <= pr + 4) and (pc - 1 <= c <= pc + 4)  # on the 4x4 object (1 px of slack)
    assert hits >= 0.85 * len(x), f"peak on the object in only {hits}/{len(x)} images"


def test_generate_cam_shapes_and_layer_choice(shape_model):
    model, (x, _, _) = shape_model
    one = GradCAM(model).generate_cam(x[0])
    assert one.shape == (16, 16) and one.dtype == np.float32 and 0 <= one.min() <= one.max() <= 1
    np.testing.assert_allclose(one, GradCAM(model).generate_cam(x[:1]), atol=1e-6)
    # explaining the other class gives another map
    assert not np.allclose(one, GradCAM(model).generate_cam(x[0], class_idx=1 - int(model(x[:1]).argmax())))
    assert GradCAM(model, target_layer="stages.0").layer_name == "stages.0"
    assert GradCAM(model, target_layer="stages.0.0").generate_cam(x[0]).shape == (16, 16)  # a single conv by name
    with pytest.raises(ValueError, match="no layer 'nope'"):
        GradCAM(model, target_layer="nope")
    with pytest.raises(ValueError, match="one image"):
        GradCAM(model).generate_cam(x[:2])
    # a model without cam_layer: the last Conv2d is used; one without convs gets a clear error
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    assert find_cam_layer(plain)[0] == "2"
    assert GradCAM(plain).generate_cam(x[0]).shape == (16, 16)
    with pytest.raises(ValueError, match="no Conv2d"):
        GradCAM(nn.Sequential(nn.Flatten(), nn.Linear(256, 2)))


def test_gradcam_with_frozen_backbone(shape_model):
    model, (x, _, _) = shape_model
    for p in model.stages.parameters():
        p.requires_grad_(False)
    try:
        cam = GradCAM(model).generate_cam(x[0])
    finally:
        for p in model.stages.parameters():
            p.requires_grad_(True)
    assert cam.max() == pytest.approx(1.0)


def test_overlay_png(tmp_path, shape_model):
    model, (x, _, _) = shape_model
    cam = GradCAM(model).generate_cam(x[0])
    gray = (torch.rand(1, 16, 16) * 255).to(torch.uint8)
    over = overlay_heatmap(gray, cam)
    assert over.shape == (16, 16, 3) and over.dtype == np.uint8
    big = overlay_heatmap(np.zeros((64, 64, 3), np.uint8), cam)  # the map is resized to the image
    assert big.shape == (64, 64, 3)
    path = save_png(over, tmp_path / "o.png", scale=4)
    assert Image.open(path).size == (64, 64)


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_explanation_figure_reads_as_input_overlay_class_probability_and_colour_bar(shape_model):
    """What a person needs to read a heat map: the input beside the overlay, the predicted class and its probability,
    the true class when known, which class the map explains, and a colour bar that says what the colours mean."""
    model, (x, y, _) = shape_model
    cam = GradCAM(model)
    maps, logits = cam(x[:1])
    probs = logits.softmax(1)[0]
    pred = Prediction.from_probs(probs, ["square", "plus"], true=int(y[0]))
    fig = explanation_figure(x[0] * 0.5 + 0.5, maps[0].numpy(), prediction=pred, method="Grad-CAM (stages.1)")
    panels = _image_axes(fig)
    assert len(panels) == 2
    assert panels[0].get_title().startswith("input") and panels[1].get_title() == "Grad-CAM (stages.1)"
    assert panels[0].images[0].get_array().shape[:2] == panels[1].images[0].get_array().shape[:2] == (16, 16)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "evidence" in bars[0].get_ylabel() and bars[0].get_ylim() == (0.0, 1.0)
    title = fig._suptitle.get_text()
    name = ["square", "plus"][int(probs.argmax())]
    assert f"predicted {name} ({100 * float(probs.max()):.1f}%)" in title
    assert f"true {['square', 'plus'][int(y[0])]} (correct)" in title and "for the predicted class" in title
    # explaining the other class says so, with that class's probability; an unknown true class is not invented
    other = 1 - int(probs.argmax())
    pred = Prediction.from_probs(probs, ["square", "plus"], explained=other)
    title = explanation_figure(x[0], maps[0].numpy(), prediction=pred, method="Grad-CAM++ (l)")._suptitle.get_text()
    assert f"Grad-CAM++ for class {['square', 'plus'][other]} ({100 * float(probs[other]):.1f}%)" in title
    assert "true" not in title


# --------------------------------------------------------------------------------------------------------------------
# ViT attention
# --------------------------------------------------------------------------------------------------------------------

needs_vit = pytest.mark.skipif("vit_micro" not in list_models(), reason="vit_micro not registered")


@needs_vit
def test_attention_maps_and_rollout():
    torch.manual_seed(0)
    model = create_model("vit_micro", num_classes=3, in_chans=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = all_attention_maps(model, x)
    assert len(maps) == len(model.blocks)
    for i, m in enumerate(maps):  # the one-pass hooks give what get_attention_maps gives layer by layer
        torch.testing.assert_close(m, model.get_attention_maps(x, i))
    heads = layer_attention(model, x, -1)
    assert heads.shape == (2, model.num_heads, 8, 8)
    torch.testing.assert_close(heads.flatten(2), maps[-1][:, :, 0, 1:])
    roll = attention_rollout(model, x)
    assert roll.shape == (2, 8, 8) and roll.min() >= 0 and roll.max() == pytest.approx(1.0)
    # one layer, no residual: rollout is the class token's head-averaged attention, rescaled to [0, 1]
    first = maps[0].mean(1)[:, 0, 1:]
    expected = (first - first.min(1, keepdim=True).values) / (
        first.max(1, keepdim=True).values - first.min(1, keepdim=True).values
    )
    model_one = create_model("vit_micro", num_classes=3, in_chans=3, image_size=32).eval()
    model_one.load_state_dict(model.state_dict())
    model_one.blocks = model_one.blocks[:1]
    torch.testing.assert_close(attention_rollout(model_one, x, residual=False).flatten(1), expected)
    assert attention_rollout(model, x, head_fusion="max", discard_ratio=0.5).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(model, x, head_fusion="median")
    with pytest.raises(ValueError, match="no attention maps"):
        attention_rollout(create_model("simple_cnn_tiny", num_classes=3), x)


# --------------------------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------------------------


def test_feature_extraction_and_projection(shape_model):
    model, (x, y, _) = shape_model
    feats, targets, preds = extract_features(model, [(x[:20], y[:20]), (x[20:], y[20:])])
    assert feats.shape == (40, model.num_features) and targets.tolist() == y.tolist()
    assert (preds == targets).mean() >= 0.95
    for method in ("tsne", "pca"):
        xy = project(feats, method)
        assert xy.shape == (40, 2) and np.isfinite(xy).all()
    # the two classes separate in 2-D: nearest-centroid accuracy in the PCA plane
    xy = project(feats, "pca")
    c0, c1 = xy[targets == 0].mean(0), xy[targets == 1].mean(0)
    nearest = (np.linalg.norm(xy - c1, axis=1) < np.linalg.norm(xy - c0, axis=1)).astype(int)
    assert (nearest == targets).mean() >= 0.9
    with pytest.raises(ValueError, match="method"):
        project(feats, "lda")


def test_umap_missing_gives_a_clear_error():
    pytest.importorskip("sklearn")
    try:
        import umap  # noqa: F401

        pytest.skip("umap-learn is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="umap-learn"):
        project(np.random.rand(10, 4), "umap")


# --------------------------------------------------------------------------------------------------------------------
# CLI on checkpoints of untrained models (no training needed to test the wiring)
# --------------------------------------------------------------------------------------------------------------------


def _fake_run(tmp_path: Path, model_name: str) -> Path:
    from imgcls.data.build import build_splits, resolve_preprocess
    from imgcls.engine.build import build_model_for

    cfg = build_config("quickstart", [*TINY, f"model.name={model_name}", f"run.dir={tmp_path}"])
    splits = build_splits(cfg)
    torch.manual_seed(0)
    model = build_model_for(cfg, splits.num_classes, splits.in_chans, 16)
    pre = resolve_preprocess(cfg, splits, model)
    run = tmp_path / f"run-{model_name}"
    atomic_save(
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": splits.classes,
            "preprocess": pre.to_dict(),
            "epoch": 0,
        },
        run / "checkpoints" / "best.pt",
    )
    return run


def save_png_of(fig, path):
    from imgcls.plotting import save_figure

    return save_figure(fig, path, dpi=110)


def _digit_png(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    img = (load_digits().images[0] * 255 / 16).astype(np.uint8)
    path = tmp_path / "digit0.png"
    Image.fromarray(img).save(path)
    return path


def test_explain_gradcam_cli(tmp_path, capsys, monkeypatch):
    import imgcls.explain.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, **kw: drawn.append(fig) or save_png_of(fig, path))
    run = _fake_run(tmp_path, "simple_cnn_tiny")
    img = _digit_png(tmp_path)
    assert main(["explain", "gradcam", str(run), str(img), "--plus-plus", "--class", "3", "--true", "0"]) == 0
    out = list((run / "explain" / "gradcam").glob("digit0_gradcampp_3.png"))
    width, height = Image.open(out[0]).size
    assert len(out) == 1 and width >= 600 and width > 1.5 * height  # input | overlay side by side
    title = drawn[0]._suptitle.get_text()
    assert "predicted " in title and "%) · true 0 (" in title and "Grad-CAM++ for class 3" in title
    assert len(_image_axes(drawn[0])) == 2 and any(ax.get_label() == "<colorbar>" for ax in drawn[0].axes)
    # the true class from the ImageFolder layout (the parent folder is a class name)
    (tmp_path / "7").mkdir()
    img.rename(tmp_path / "7" / img.name)
    img = tmp_path / "7" / img.name
    assert main(["explain", "gradcam", str(run), str(img), "--out", str(tmp_path / "f")]) == 0
    assert "true 7" in drawn[-1]._suptitle.get_text()
    assert main(["explain", "gradcam", str(run), str(img), "--layer", "stages.0", "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 1 and drawn[-1].axes[1].get_title() == "Grad-CAM (stages.0)"
    assert "stages.0" in capsys.readouterr().out
    assert main(["explain", "gradcam", str(run), str(img), "--layer", "bogus"]) == 2
    assert "no layer 'bogus'" in capsys.readouterr().err
    assert main(["explain", "gradcam", str(run), str(tmp_path / "missing.png")]) == 2


@needs_vit
def test_explain_attention_cli(tmp_path, capsys, monkeypatch):
    import imgcls.explain.attention as attention
    import imgcls.explain.figures as figures

    drawn = {}
    for module in (attention, figures):
        monkeypatch.setattr(module, "save_figure", lambda fig, path, **kw: drawn.setdefault(Path(path).name, fig))
    run = _fake_run(tmp_path, "vit_micro")
    img = _digit_png(tmp_path)
    assert main(["explain", "attention", str(run), str(img), "--layer-idx", "0", "--rollout", "--true", "0"]) == 0
    assert sorted(drawn) == ["digit0_attention_layer0.png", "digit0_rollout.png"]
    rollout, heads = drawn["digit0_rollout.png"], drawn["digit0_attention_layer0.png"]
    assert len(_image_axes(rollout)) == 2 and rollout.axes[1].get_title().startswith("attention rollout")
    assert "predicted " in rollout._suptitle.get_text() and "true 0" in rollout._suptitle.get_text()
    n_heads = create_model("vit_micro", num_classes=10, in_chans=1, image_size=16).num_heads
    assert len(_image_axes(heads)) == 1 + n_heads
    assert sum(ax.get_label() == "<colorbar>" for ax in heads.axes) == 1
    assert heads._suptitle.get_text().startswith("class-token attention, layer 1 of ")
    cnn = _fake_run(tmp_path, "simple_cnn_tiny")
    assert main(["explain", "attention", str(cnn), str(img)]) == 2
    assert "gradcam" in capsys.readouterr().err


def test_explain_embeddings_cli(tmp_path):
    run = _fake_run(tmp_path, "simple_cnn_tiny")
    assert main(["explain", "embeddings", str(run), "--split", "val", "--method", "pca", "--max-samples", "60"]) == 0
    png, table = run / "explain" / "embeddings_pca.png", run / "explain" / "embeddings_pca.csv"
    assert png.is_file() and Image.open(png).size[0] > 100
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and set(rows[0]) == {"index", "label", "class", "predicted", "x", "y"}
    assert all(r["class"] == r["label"] for r in rows)  # digits' class names are the digits
