"""Multi-label classification (issue #21): losses, mixing of label vectors, metrics equal to scikit-learn's, the
one evaluate() path with sigmoid outputs, and training on the bundled digit_pairs data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from imgcls.config import ConfigError, LossConfig, build_config
from imgcls.data.batch import CutMix, MixParams, MixUp
from imgcls.engine.build import class_weights_for
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.loop import evaluate
from imgcls.engine.losses import build_loss, is_multilabel_loss, loss_for_data
from imgcls.engine.multilabel import multilabel_metrics, tune_thresholds
from imgcls.engine.train import train


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [200, 6] that rank positives higher, with ties (rounded to 0.05), and multi-hot targets."""
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.4])).astype(np.float64)
    y[0] = 1  # every label has a positive
    p = np.clip(0.35 * y + rng.random((200, 6)) * 0.65, 0, 1).round(2)
    return p, y


def test_metrics_equal_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    p, y = scored
    thresholds = np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.45])
    m = multilabel_metrics(torch.from_numpy(p), torch.from_numpy(y), thresholds)
    pred = (p >= thresholds).astype(int)
    assert m["ap"] == pytest.approx(average_precision_score(y, p, average=None).tolist(), abs=1e-12)
    assert m["map_macro"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-12)
    assert m["map_micro"] == pytest.approx(average_precision_score(y, p, average="micro"), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, pred, average=None, zero_division=0).tolist(), abs=1e-12)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred), abs=1e-12)
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    # one threshold for all labels (default 0.5) and a label that is never predicted (F1 0, as zero_division=0)
    m5 = multilabel_metrics(p, y)
    assert m5["f1_macro"] == pytest.approx(f1_score(y, (p >= 0.5).astype(int), average="macro", zero_division=0))
    assert multilabel_metrics(p, y, 1.01)["f1_micro"] == 0.0


def test_tuned_thresholds_maximise_each_label_f1(scored: tuple[np.ndarray, np.ndarray]) -> None:
    p, y = scored
    tuned = tune_thresholds(p, y)
    best = multilabel_metrics(p, y, tuned)["f1"]
    for c in range(p.shape[1]):
        grid = [f1_score(y[:, c], (p[:, c] >= t).astype(int), zero_division=0) for t in np.unique(p[:, c])]
        assert best[c] == pytest.approx(max(grid), abs=1e-12)
    assert multilabel_metrics(p, y, tuned)["f1_macro"] >= multilabel_metrics(p, y)["f1_macro"]


def test_losses_for_multilabel_targets() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(8, 5), (torch.rand(8, 5) < 0.4).float()
    w = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0])
    bce = build_loss(LossConfig(name="bce"), w)
    assert bce(logits, y).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, y, pos_weight=w).item())
    # ASL without focusing or clipping is BCE (same reduction); its focusing lowers the loss of easy negatives
    plain = build_loss(LossConfig(name="asl", kwargs={"gamma_neg": 0.0, "clip": 0.0}))
    expected = F.binary_cross_entropy_with_logits(logits, y).item()
    assert plain(logits, y).item() == pytest.approx(expected, rel=1e-5)
    assert build_loss(LossConfig(name="asl"))(logits, y).item() < plain(logits, y).item()
    assert is_multilabel_loss("bce") and is_multilabel_loss("asl") and not is_multilabel_loss("focal")
    assert loss_for_data("cross_entropy", multilabel=True)[0] == "bce"
    assert loss_for_data("focal", multilabel=False) == ("focal", "")
    with pytest.raises(ConfigError, match="single-label.*asl, bce"):
        loss_for_data("focal", multilabel=True)


def test_mixing_mixes_label_vectors() -> None:
    images = torch.rand(4, 1, 8, 8)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    _, mixed = MixUp(0.2, num_classes=3).apply(images, y, MixParams("mixup", 0.7))
    assert torch.allclose(mixed, 0.7 * y + 0.3 * y.roll(1, 0))
    _, cut = CutMix(1.0, num_classes=3).apply(images, y, MixParams("cutmix", 0.75, (0, 4, 0, 4)))
    assert torch.allclose(cut, 0.75 * y + 0.25 * y.roll(1, 0))


class _Fixed(torch.nn.Module):
    """Logits given per sample (the first pixel indexes a table), to check evaluate() against metrics computed by
    hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def test_evaluate_multilabel_is_the_metrics_of_the_sigmoids(scored: tuple[np.ndarray, np.ndarray]) -> None:
    p, y = scored
    logits = torch.logit(torch.from_numpy(p).float().clamp(1e-4, 1 - 1e-4))
    images = torch.arange(len(p)).float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    targets = torch.from_numpy(y).float()
    loader = [(images[i : i + 64], targets[i : i + 64]) for i in range(0, len(p), 64)]
    r = evaluate(
        _Fixed(logits), loader, device=torch.device("cpu"), num_classes=6, multilabel=True, return_outputs=True
    )
    probs = torch.sigmoid(logits)
    assert r.extra["map_macro"] == pytest.approx(average_precision_score(y, probs.numpy(), average="macro"))
    assert r.acc == pytest.approx(accuracy_score(y, (probs.numpy() >= 0.5).astype(int)))
    assert r.loss == pytest.approx(F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets).item(), rel=1e-5)
    assert torch.allclose(r.log_probs.exp(), probs, atol=1e-6) and r.topk == {}
    assert r.confusion.shape == (6, 6) and int(r.confusion.diag().sum()) == int(((probs >= 0.5) & (targets > 0)).sum())


def test_evaluate_multilabel_averages_sigmoids_over_models_and_views(scored: tuple[np.ndarray, np.ndarray]) -> None:
    """Ensembles and TTA go through the same path: the mean of the members' (views') sigmoids is scored."""
    p, y = scored
    a = torch.logit(torch.from_numpy(p).float().clamp(1e-4, 1 - 1e-4))
    b = torch.randn_like(a)
    images = torch.arange(len(p)).float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    loader = [(images, torch.from_numpy(y).float())]
    kw = dict(device=torch.device("cpu"), num_classes=6, multilabel=True, return_outputs=True)
    r = evaluate([_Fixed(a), _Fixed(b)], loader, **kw)
    mean = (torch.sigmoid(a) + torch.sigmoid(b)) / 2
    assert torch.allclose(r.log_probs.exp(), mean, atol=1e-6)
    assert r.extra["map_macro"] == pytest.approx(average_precision_score(y, mean.numpy(), average="macro"))
    # TTA views of an image the model scores the same way (the index pixel is unchanged by a flip): same numbers
    tta = evaluate(_Fixed(a), loader, tta=2, **kw)
    assert torch.allclose(tta.log_probs.exp(), torch.sigmoid(a), atol=1e-6)


def test_positive_class_weights_for_multilabel_splits() -> None:
    from imgcls.data.build import build_splits

    splits = build_splits(build_config("quickstart", ["data.name=digit_pairs"]))
    w = class_weights_for(splits)
    pos = splits.train.targets.sum(0)
    assert torch.allclose(w, (len(splits.train) - pos) / pos)


def test_train_on_digit_pairs_tunes_thresholds_and_saves_them(tmp_path) -> None:
    cfg_overrides = [
        "data.name=digit_pairs",
        "training.epochs=1",
        "training.scheduler.warmup_epochs=0",
        "model.name=simple_cnn_tiny",
        "augmentation.mix.mixup_alpha=0.2",
        "training.ema.enabled=true",
        "training.early_stopping.monitor=val_map",
        "run.tracker=none",
        "run.progress=false",
        "run.report=false",
        f"run.dir={tmp_path}",
    ]
    result = train(build_config("quickstart", cfg_overrides))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    # one epoch of a 3k-parameter CNN: above the mAP of random scores (the labels' positive rate, about 0.19)
    assert summary["multilabel"] is True and summary["test_map_macro"] > 0.3
    assert set(summary["test_ap"]) == {str(i) for i in range(10)}
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert best["multilabel"] is True and len(best["thresholds"]) == 10
    assert best["config"]["data"]["multilabel"] is True and best["config"]["training"]["loss"]["name"] == "bce"
    assert best["thresholds"] == summary["thresholds"]
    # run.tune_thresholds=false: every class decides at 0.5, and best.pt holds no thresholds
    untuned = train(build_config("quickstart", [*cfg_overrides, "data.subset=500", "run.tune_thresholds=false"]))
    assert "thresholds" not in load_checkpoint(untuned.run_dir / "checkpoints" / "best.pt")
    assert json.loads((untuned.run_dir / "summary.json").read_text())["thresholds"] == [0.5] * 10
    with pytest.raises(ConfigError, match="val_map needs multi-label data"):
        train(build_config("quickstart", ["training.early_stopping.monitor=val_map", f"run.dir={tmp_path}"]))
