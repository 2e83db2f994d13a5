"""Evaluation metrics against hand-computed values and reference libraries; TTA and ensembles through evaluate()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgcls.engine.loop import evaluate
from imgcls.evaluate.calibration import expected_calibration_error, plot_reliability_diagram, reliability_bins
from imgcls.evaluate.metrics import (
    binary_roc_auc,
    brier_score,
    classification_report,
    compute_metrics,
    confusion_matrix,
    most_confused_pairs,
    negative_log_likelihood,
    precision_recall_f1,
    roc_auc_ovr,
    top_k_accuracy,
)
from imgcls.evaluate.run_eval import average_state_dicts
from imgcls.models import create_model

# targets and predictions of six samples, three classes
TARGETS = [0, 0, 1, 1, 2, 2]
PREDS = [0, 1, 1, 1, 2, 0]


def test_confusion_and_precision_recall_f1_by_hand():
    cm = confusion_matrix(PREDS, TARGETS, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    prf = precision_recall_f1(cm)
    # precision = tp / predicted: class 0 1/2, class 1 2/3, class 2 1/1; recall = tp / support: 1/2, 2/2, 1/2
    assert prf["precision"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert prf["recall"] == pytest.approx([0.5, 1.0, 0.5])
    assert prf["f1"] == pytest.approx([0.5, 0.8, 2 / 3])  # 2pr / (p + r)
    assert prf["support"] == [2, 2, 2] and prf["accuracy"] == pytest.approx(4 / 6)
    assert prf["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert prf["recall_macro"] == pytest.approx(2 / 3)
    assert prf["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert prf["f1_weighted"] == pytest.approx(prf["f1_macro"])  # equal supports


def test_precision_recall_f1_match_sklearn_and_torchmetrics():
    from sklearn.metrics import precision_recall_fscore_support
    from torchmetrics.functional.classification import multiclass_f1_score

    rng = np.random.default_rng(0)
    k = 5
    t = rng.integers(0, k, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, k - 1, 200))  # class 4 is never predicted
    prf = precision_recall_f1(confusion_matrix(p, t, k))
    for avg in (None, "macro", "weighted"):
        ref = precision_recall_fscore_support(t, p, labels=list(range(k)), average=avg, zero_division=0)
        suffix = "" if avg is None else f"_{avg}"
        for i, name in enumerate(("precision", "recall", "f1")):
            np.testing.assert_allclose(prf[name + suffix], ref[i], atol=1e-12)
    tm = multiclass_f1_score(torch.as_tensor(p), torch.as_tensor(t), num_classes=k, average=None)
    np.testing.assert_allclose(prf["f1"], tm.numpy(), atol=1e-6)


def test_roc_auc_by_hand_and_against_references():
    # the classic example: of the 4 (positive, negative) pairs, 3 are ordered correctly
    assert binary_roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert binary_roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts one half
    assert binary_roc_auc([0.1, 0.9, 0.9, 0.2], [0, 1, 0, 1]) == pytest.approx(0.625)
    assert math.isnan(binary_roc_auc([0.1, 0.2], [1, 1]))
    from sklearn.metrics import roc_auc_score
    from torchmetrics.functional.classification import multiclass_auroc

    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 4, (300,), generator=g)
    probs = (torch.randn(300, 4, generator=g) + 1.5 * torch.nn.functional.one_hot(t, 4)).softmax(1)
    probs = (probs * 20).round() / 20  # create ties
    probs = probs / probs.sum(1, keepdim=True)
    auc = roc_auc_ovr(probs, t)
    assert auc["macro"] == pytest.approx(roc_auc_score(t.numpy(), probs.numpy(), multi_class="ovr"), abs=1e-9)
    ref = multiclass_auroc(probs, t, num_classes=4, average=None)
    np.testing.assert_allclose(auc["per_class"], ref.numpy(), atol=1e-5)
    # a class absent from the targets: its AUC is undefined and left out of the average
    auc3 = roc_auc_ovr(probs[t != 3], t[t != 3], 4)
    assert math.isnan(auc3["per_class"][3]) and not math.isnan(auc3["macro"])


def test_nll_brier_topk_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.15, 0.75]])
    t = torch.tensor([0, 1])
    assert negative_log_likelihood(probs, t) == pytest.approx(-(math.log(0.7) + math.log(0.15)) / 2)
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.1^2 + 0.85^2 + 0.75^2) = 1.295
    assert brier_score(probs, t) == pytest.approx((0.14 + 1.295) / 2)
    assert top_k_accuracy(probs, t, 1) == 0.5 and top_k_accuracy(probs, t, 2) == 1.0


def test_ece_by_hand():
    # two samples at confidence 0.9 (one right) and two at 0.65 (both right), 15 bins:
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.65| * 2/4 = 0.2 + 0.175
    conf = np.array([0.9, 0.9, 0.65, 0.65])
    correct = np.array([1, 0, 1, 1])
    bins = reliability_bins(conf, correct, 15)
    assert bins.ece == pytest.approx(0.375)
    assert bins.counts.sum() == 4 and (bins.counts > 0).sum() == 2
    assert bins.mce == pytest.approx(0.4)
    assert bins.signed_gap == pytest.approx(0.2 - 0.175)


def test_ece_of_calibrated_overconfident_and_underconfident_toys():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 200_000)
    calibrated = reliability_bins(conf, rng.random(conf.size) < conf)
    assert calibrated.ece < 0.01 and calibrated.verdict == "well calibrated"
    over = reliability_bins(conf, rng.random(conf.size) < conf**3)  # right far less often than claimed
    assert over.ece > 0.15 and over.verdict == "over-confident"
    low = np.clip(conf * 0.6, 0, 1)  # claims 60% of the real hit rate
    under = reliability_bins(low, rng.random(conf.size) < conf)
    assert under.ece > 0.15 and under.verdict == "under-confident"
    fig = plot_reliability_diagram(over, title="toy")
    assert "ECE" in fig.axes[0].get_title()


def test_ece_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 5, (2000,), generator=g)
    probs = (2 * torch.randn(2000, 5, generator=g) + 2 * torch.nn.functional.one_hot(t, 5)).softmax(1)
    ref = multiclass_calibration_error(probs, t, num_classes=5, n_bins=15, norm="l1")
    assert expected_calibration_error(probs, t, 15) == pytest.approx(float(ref), abs=1e-5)


def test_most_confused_and_report_text():
    cm = confusion_matrix(PREDS, TARGETS, 3)
    pairs = most_confused_pairs(cm, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 1), ("c", "a", 1)]
    assert pairs[0]["fraction_of_true"] == pytest.approx(0.5)
    assert most_confused_pairs(np.eye(3, dtype=int), ["a", "b", "c"]) == []
    text = classification_report(cm, ["a", "b", "c"])
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["a", "0.5000", "0.5000", "0.5000", "2"]
    assert lines[3].split() == ["b", "0.6667", "1.0000", "0.8000", "2"]
    assert "accuracy" in text and text.splitlines()[-2].split()[:2] == ["macro", "avg"]
    assert lines[-1].split() == ["weighted", "avg", "0.7222", "0.6667", "0.6556", "6"]


def test_compute_metrics_is_json_ready():
    import json

    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 3, (50,), generator=g)
    probs = torch.randn(50, 3, generator=g).softmax(1)
    m = compute_metrics(probs, t, ["a", "b", "c"], topk=(2, 5))
    json.dumps(m, allow_nan=False)
    assert "top2" in m and "top5" not in m  # k >= number of classes is skipped
    for key in (
        "accuracy",
        "nll",
        "brier",
        "ece",
        "f1_macro",
        "f1_weighted",
        "roc_auc_macro",
        "per_class",
        "calibration",
        "most_confused",
        "confusion_matrix",
        "classification_report",
    ):
        assert key in m
    assert sum(map(sum, m["confusion_matrix"])) == 50
    with pytest.raises(ValueError, match="probs must be"):
        compute_metrics(probs, t, ["a", "b"])


# --------------------------------------------------------------------------------------------------------------------
# TTA and ensembles go through the one evaluate()
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_loader():
    torch.manual_seed(0)
    model = create_model("simple_cnn_tiny", num_classes=4, in_chans=1).eval()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(3)]
    return model, loader


def _eval(models, loader, **kw):
    return evaluate(models, loader, device=torch.device("cpu"), num_classes=4, topk=(2,), return_outputs=True, **kw)


def test_tta_with_identity_views_equals_plain_eval(model_and_loader):
    model, loader = model_and_loader
    plain = _eval(model, loader)
    tta = _eval(model, loader, tta=3, view_fn=lambda x, n: [x] * n)
    torch.testing.assert_close(tta.log_probs, plain.log_probs, atol=1e-6, rtol=0)
    assert tta.acc == plain.acc and tta.topk == plain.topk and torch.equal(tta.confusion, plain.confusion)
    assert tta.loss == pytest.approx(plain.loss, abs=1e-6)
    assert torch.equal(tta.targets, plain.targets) and plain.log_probs.shape == (24, 4)
    assert plain.logits is plain.log_probs  # the old name still works


def test_tta_views_change_the_prediction_input(model_and_loader):
    model, loader = model_and_loader
    real = _eval(model, loader, tta=2)  # identity + flip
    assert not torch.allclose(real.log_probs, _eval(model, loader).log_probs)


def test_ensemble_of_a_model_with_itself_equals_the_model(model_and_loader):
    model, loader = model_and_loader
    plain = _eval(model, loader)
    pair = _eval([model, model], loader)
    torch.testing.assert_close(pair.log_probs, plain.log_probs, atol=1e-6, rtol=0)
    assert pair.acc == plain.acc and pair.loss == pytest.approx(plain.loss, abs=1e-6)


def test_ensemble_averages_probabilities(model_and_loader):
    model, loader = model_and_loader
    torch.manual_seed(1)
    other = create_model("simple_cnn_tiny", num_classes=4, in_chans=1).eval()
    pair = _eval([model, other], loader)
    expected = (_eval(model, loader).log_probs.exp() + _eval(other, loader).log_probs.exp()) / 2
    torch.testing.assert_close(pair.log_probs.exp(), expected, atol=1e-6, rtol=1e-5)


def test_weight_average(model_and_loader):
    model, loader = model_and_loader
    sd = model.state_dict()
    same = average_state_dicts([sd, sd])
    assert all(torch.equal(same[k], v) for k, v in sd.items())
    torch.manual_seed(1)
    other = create_model("simple_cnn_tiny", num_classes=4, in_chans=1).state_dict()
    mean = average_state_dicts([sd, other])
    torch.testing.assert_close(mean["head.weight"], (sd["head.weight"] + other["head.weight"]) / 2)
    assert torch.equal(mean["stages.0.1.num_batches_tracked"], sd["stages.0.1.num_batches_tracked"])
    from imgcls.config import ConfigError

    with pytest.raises(ConfigError, match="one architecture"):
        average_state_dicts([sd, create_model("simple_cnn", num_classes=4, in_chans=1).state_dict()])
