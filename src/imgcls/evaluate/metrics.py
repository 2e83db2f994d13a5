"""Classification metrics as pure functions of (probabilities, targets) or of a confusion matrix.

Everything here is computed from what :func:`imgcls.engine.loop.evaluate` returns (``log_probs``, ``targets``,
``confusion``), so validation, test, TTA and ensembles share one set of definitions:

- precision / recall / F1 per class from the confusion matrix (rows = true class, columns = predicted), averaged
  "macro" (every class counts the same) and "weighted" (by support); a class never predicted has precision 0 and a
  class never present has recall 0 (scikit-learn's ``zero_division=0``);
- one-vs-rest ROC-AUC per class (exact, from ranks; NaN for a class that has no positive or no negative sample),
  macro = mean of the defined ones;
- negative log-likelihood and Brier score of the probabilities; ECE and reliability bins (:mod:`.calibration`);
- the most-confused class pairs and a scikit-learn style classification report.

The tests check these against scikit-learn and torchmetrics; they are plain NumPy here because importing
torchmetrics takes seconds, and the report at the end of every training run should not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from imgcls.engine.multilabel import multilabel_metrics, precision_recall_curve
from imgcls.evaluate.calibration import DEFAULT_BINS, reliability_bins

ArrayLike = torch.Tensor | np.ndarray


def _tensor(x: ArrayLike) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def confusion_matrix(preds: ArrayLike, targets: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts [K, K] with rows = true class and columns = predicted class (``preds`` are class indices)."""
    p, t = _numpy(preds).astype(np.int64), _numpy(targets).astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def precision_recall_f1(confusion: ArrayLike) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and their macro and weighted averages.

    Args:
        confusion: [K, K] counts, rows = true class, columns = predicted.

    Returns:
        ``{"precision": [K], "recall": [K], "f1": [K], "support": [K], "accuracy": float,
        "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted", "f1_weighted"}``.
        Macro averages run over all K classes, as scikit-learn's ``labels=range(K)``.
    """
    cm = _numpy(confusion).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = support.sum()
    w = support / total if total > 0 else np.zeros_like(support)
    out: dict[str, Any] = {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(np.int64).tolist(),
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"{name}_macro"] = float(values.mean()) if len(values) else 0.0
        out[f"{name}_weighted"] = float((values * w).sum())
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])  # boundaries of runs of equal values
    run_ranks = (starts[:-1] + starts[1:] + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, np.diff(starts))
    return ranks


def binary_roc_auc(scores: ArrayLike, positives: ArrayLike) -> float:
    """Exact ROC-AUC = P(score of a random positive > score of a random negative), ties counting one half.

    Computed from ranks (the Mann-Whitney U statistic); NaN when there is no positive or no negative.
    """
    s = _numpy(scores).astype(np.float64)
    pos = _numpy(positives).astype(bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_ovr(probs: ArrayLike, targets: ArrayLike, num_classes: int | None = None) -> dict[str, Any]:
    """One-vs-rest ROC-AUC of each class's probability column.

    Args:
        probs: [N, K] probabilities (any monotone score works: AUC depends only on the ranking).
        targets: [N] class indices.
        num_classes: K (default: ``probs.shape[1]``).

    Returns:
        ``{"per_class": [K] (NaN where undefined), "macro": float, "weighted": float}`` (NaN if no class is defined).
        Macro is scikit-learn's ``roc_auc_score(multi_class="ovr")`` when every class is present.
    """
    p = _numpy(probs).astype(np.float64)
    t = _numpy(targets).astype(np.int64)
    k = num_classes or p.shape[1]
    per_class = [binary_roc_auc(p[:, c], t == c) for c in range(k)]
    support = np.bincount(t, minlength=k)[:k].astype(np.float64)
    values = np.array(per_class, dtype=np.float64)
    defined = ~np.isnan(values)
    weights = support * defined
    macro = float(values[defined].mean()) if defined.any() else float("nan")
    weighted = float((np.nan_to_num(values) * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan")
    return {"per_class": per_class, "macro": macro, "weighted": weighted}


def negative_log_likelihood(probs: ArrayLike, targets: ArrayLike, *, eps: float = 1e-12) -> float:
    """Mean ``-log p[target]`` (probabilities clamped at ``eps``, as :func:`~imgcls.engine.loop.evaluate` does)."""
    p = _tensor(probs).double()
    t = _tensor(targets).long()
    return float(-p.gather(1, t[:, None]).clamp_min(eps).log().mean())


def brier_score(probs: ArrayLike, targets: ArrayLike) -> float:
    """Mean over samples of ``sum_k (p_k - onehot_k)^2`` (0 = perfect, 2 = confidently wrong)."""
    p = _tensor(probs).double()
    onehot = torch.nn.functional.one_hot(_tensor(targets).long(), p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(1).mean())


def top_k_accuracy(probs: ArrayLike, targets: ArrayLike, k: int) -> float:
    """Fraction of samples whose target is among the ``k`` most probable classes."""
    p = _tensor(probs)
    t = _tensor(targets).long()
    k = min(k, p.shape[1])
    return float((p.topk(k, dim=1).indices == t[:, None]).any(1).double().mean())


def most_confused_pairs(confusion: ArrayLike, classes: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells of the confusion matrix (true class mistaken for predicted class).

    Returns:
        ``[{"true": name, "predicted": name, "count": n, "fraction_of_true": n / support(true)}, ...]``, largest
        first; only pairs with at least one mistake.
    """
    cm = _numpy(confusion).astype(np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    support = cm.sum(1)
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] == 0:
            break
        pairs.append(
            {
                "true": classes[i],
                "predicted": classes[j],
                "count": int(off[i, j]),
                "fraction_of_true": float(off[i, j] / max(support[i], 1)),
            }
        )
    return pairs


def classification_report(confusion: ArrayLike, classes: Sequence[str], digits: int = 4) -> str:
    """A text table as scikit-learn's ``classification_report``: per-class precision/recall/F1/support, accuracy,
    macro and weighted averages."""
    prf = precision_recall_f1(confusion)
    names = [str(c) for c in classes]
    width = max([len(n) for n in names] + [len("weighted avg")])
    head = f"{'':>{width}} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}"
    lines = [head, ""]
    row = f"{{:>{width}}} {{:>10.{digits}f}} {{:>10.{digits}f}} {{:>10.{digits}f}} {{:>10}}"
    for i, name in enumerate(names):
        lines.append(row.format(name, prf["precision"][i], prf["recall"][i], prf["f1"][i], prf["support"][i]))
    total = sum(prf["support"])
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>10} {'':>10} {prf['accuracy']:>10.{digits}f} {total:>10}")
    for avg in ("macro", "weighted"):
        lines.append(row.format(f"{avg} avg", prf[f"precision_{avg}"], prf[f"recall_{avg}"], prf[f"f1_{avg}"], total))
    return "\n".join(lines) + "\n"


def _finite_or_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def compute_metrics(
    probs: ArrayLike,
    targets: ArrayLike,
    classes: Sequence[str],
    *,
    topk: Sequence[int] = (5,),
    n_bins: int = DEFAULT_BINS,
    confused_pairs: int = 10,
) -> dict[str, Any]:
    """Every metric of the evaluation report, JSON-ready (NaN written as None).

    Args:
        probs: [N, K] probabilities (for an :class:`~imgcls.engine.loop.EvalResult`: ``result.log_probs.exp()``).
        targets: [N] class indices.
        classes: the K class names.
        topk: top-k accuracies to report (k >= K is skipped).
        n_bins: bins of the expected calibration error.
        confused_pairs: how many most-confused pairs to list.

    Returns:
        A flat dict of summary numbers plus ``per_class``, ``calibration``, ``confusion_matrix``, ``most_confused``
        and the ``classification_report`` text.
    """
    p = _tensor(probs).double()
    t = _tensor(targets).long()
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"probs must be [N, {k}] for {k} classes, got {tuple(p.shape)}")
    cm = confusion_matrix(p.argmax(1), t, k)
    prf = precision_recall_f1(cm)
    auc = roc_auc_ovr(p, t, k)
    bins = reliability_bins(p, t, n_bins)
    out: dict[str, Any] = {"num_samples": int(len(t)), "accuracy": prf["accuracy"]}
    for kk in topk:
        if kk < k:
            out[f"top{kk}"] = top_k_accuracy(p, t, kk)
    out.update(
        {
            "nll": negative_log_likelihood(p, t),
            "brier": brier_score(p, t),
            "ece": bins.ece,
            "mce": bins.mce,
            "calibration_verdict": bins.verdict,
            **{f"{m}_{a}": prf[f"{m}_{a}"] for a in ("macro", "weighted") for m in ("precision", "recall", "f1")},
            "roc_auc_macro": _finite_or_none(auc["macro"]),
            "roc_auc_weighted": _finite_or_none(auc["weighted"]),
        }
    )
    out["per_class"] = {
        name: {
            "precision": prf["precision"][i],
            "recall": prf["recall"][i],
            "f1": prf["f1"][i],
            "support": prf["support"][i],
            "roc_auc": _finite_or_none(auc["per_class"][i]),
        }
        for i, name in enumerate(classes)
    }
    out["calibration"] = bins.to_dict()
    out["most_confused"] = most_confused_pairs(cm, classes, confused_pairs)
    out["classes"] = list(classes)
    out["confusion_matrix"] = cm.tolist()
    out["classification_report"] = classification_report(cm, classes)
    return out


#: at most this many points of each precision-recall curve are kept in metrics.json (evenly spaced along the curve)
PR_CURVE_POINTS = 200


def compute_multilabel_metrics(
    probs: ArrayLike, targets: ArrayLike, classes: Sequence[str], *, thresholds: Sequence[float] | None = None
) -> dict[str, Any]:
    """Every metric of the multi-label evaluation report, JSON-ready: the numbers of
    :func:`imgcls.engine.multilabel.multilabel_metrics` (mAP macro/micro, F1 at ``thresholds``, subset accuracy,
    Hamming loss) plus F1 at 0.5 for comparison, ``per_class`` (AP, F1, precision, recall, support, threshold),
    ``pr_curves`` per class, and the ``cooccurrence`` of the true labels [K, K] (diagonal: each label's count).

    Args:
        probs: [N, K] per-label probabilities (sigmoids).
        targets: [N, K] multi-hot.
        classes: the K class names.
        thresholds: per-label thresholds (tuned on val, from the checkpoint); None: 0.5 for all.
    """
    p, y = _numpy(probs).astype(np.float64), _numpy(targets) > 0.5
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k or y.shape != p.shape:
        raise ValueError(f"probs and targets must be [N, {k}] for {k} classes, got {p.shape} and {y.shape}")
    m = multilabel_metrics(p, y, thresholds)
    at_half = multilabel_metrics(p, y, 0.5)
    out: dict[str, Any] = {
        "multilabel": True,
        "num_samples": int(len(p)),
        **{
            key: m[key]
            for key in (
                "map_macro",
                "map_micro",
                "f1_macro",
                "f1_micro",
                "precision_micro",
                "recall_micro",
                "subset_accuracy",
                "hamming_loss",
            )
        },
        "f1_macro_at_0.5": at_half["f1_macro"],
        "subset_accuracy_at_0.5": at_half["subset_accuracy"],
        "thresholds_tuned": thresholds is not None,
    }
    out["accuracy"] = out["subset_accuracy"]  # what single-label readers of metrics.json look up
    out["per_class"] = {
        name: {
            "ap": m["ap"][i],
            "f1": m["f1"][i],
            "precision": m["precision"][i],
            "recall": m["recall"][i],
            "support": m["support"][i],
            "threshold": m["thresholds"][i],
        }
        for i, name in enumerate(classes)
    }
    curves = {}
    for i, name in enumerate(classes):
        if not y[:, i].any():
            continue
        precision, recall = precision_recall_curve(p[:, i], y[:, i])
        keep = np.unique(np.linspace(0, len(precision) - 1, min(PR_CURVE_POINTS, len(precision))).round().astype(int))
        curves[name] = {"precision": [precision[j] for j in keep], "recall": [recall[j] for j in keep]}
    out["pr_curves"] = curves
    out["cooccurrence"] = (y.T.astype(np.int64) @ y.astype(np.int64)).tolist()
    out["classes"] = list(classes)
    return out
