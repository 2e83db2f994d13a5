"""Multi-label metrics as pure functions of (probabilities [N, K], multi-hot targets [N, K]).

:func:`imgcls.engine.loop.evaluate` computes them for validation and test (it sits in the engine, below
:mod:`imgcls.evaluate`, which reads them for the report), so training, ``imgcls eval`` and the report share one set of
definitions, those of scikit-learn (the tests check them against ``average_precision_score``, ``f1_score``,
``hamming_loss`` and ``accuracy_score``):

- average precision of a label: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores taken as thresholds (no
  interpolation); macro mAP = mean over labels that have a positive, micro = AP of all (sample, label) pairs;
- F1 at per-label thresholds (``p >= t``), macro (mean over labels, 0 for a label with no TP, FP nor FN: scikit-learn's
  ``zero_division=0``) and micro;
- subset accuracy (every label of an image right) and Hamming loss (the fraction of wrong (sample, label) pairs);
- per-label thresholds that maximise F1 on a split (:func:`tune_thresholds`), saved in the checkpoint.

Plain NumPy: importing torchmetrics takes seconds, and this runs after every validation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: the decision threshold of a label when none was tuned
DEFAULT_THRESHOLD = 0.5


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _ranked_counts(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when thresholding at each distinct score, from the highest down: (tps, fps, the
    thresholds), as scikit-learn's ``_binary_clf_curve``."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tps = np.cumsum(y)[last_of_run]
    fps = last_of_run + 1 - tps
    return tps, fps, s[last_of_run]


def average_precision(scores: Any, positives: Any) -> float:
    """Average precision of one label (NaN when it has no positive)."""
    s, y = _numpy(scores).ravel(), _numpy(positives).ravel() > 0.5
    if not y.any():
        return float("nan")
    tps, fps, _ = _ranked_counts(s, y)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_curve(scores: Any, positives: Any) -> tuple[list[float], list[float]]:
    """(precision, recall) at each distinct score as threshold, from the highest down (for PR plots)."""
    s, y = _numpy(scores).ravel(), _numpy(positives).ravel() > 0.5
    tps, fps, _ = _ranked_counts(s, y)
    precision = tps / (tps + fps)
    recall = tps / max(tps[-1], 1)
    return precision.tolist(), recall.tolist()


def _thresholds(thresholds: Any, k: int) -> np.ndarray:
    if thresholds is None:
        return np.full(k, DEFAULT_THRESHOLD)
    t = _numpy(thresholds).ravel()
    return np.full(k, float(t[0])) if t.size == 1 else t


def multilabel_metrics(probs: Any, targets: Any, thresholds: Any = None) -> dict[str, Any]:
    """Every multi-label metric, JSON-ready (NaN as None).

    Args:
        probs: [N, K] per-label probabilities (sigmoids).
        targets: [N, K] multi-hot (values > 0.5 count as positive).
        thresholds: one threshold, or one per label [K] (default 0.5).

    Returns:
        ``map_macro``, ``map_micro``, ``ap`` [K] (None where a label has no positive), ``f1_macro``, ``f1_micro``,
        ``precision_micro``, ``recall_micro``, ``subset_accuracy``, ``hamming_loss``, per-label ``f1`` /
        ``precision`` / ``recall`` / ``support`` [K], and the ``thresholds`` used [K].
    """
    p, y = _numpy(probs), _numpy(targets) > 0.5
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"probs and targets must both be [N, K], got {p.shape} and {y.shape}")
    k = p.shape[1]
    t = _thresholds(thresholds, k)
    pred = p >= t[None, :]
    ap = [average_precision(p[:, c], y[:, c]) for c in range(k)]
    defined = [a for a in ap if not np.isnan(a)]
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    tp_all, fp_all, fn_all = tp.sum(), fp.sum(), fn.sum()
    return {
        "map_macro": float(np.mean(defined)) if defined else None,
        "map_micro": average_precision(p.ravel(), y.ravel()) if y.any() else None,
        "ap": [None if np.isnan(a) else a for a in ap],
        "f1_macro": float(f1.mean()) if k else 0.0,
        "f1_micro": float(2 * tp_all / (2 * tp_all + fp_all + fn_all)) if tp_all + fp_all + fn_all else 0.0,
        "precision_micro": float(tp_all / (tp_all + fp_all)) if tp_all + fp_all else 0.0,
        "recall_micro": float(tp_all / (tp_all + fn_all)) if tp_all + fn_all else 0.0,
        "subset_accuracy": float((pred == y).all(1).mean()) if len(y) else 0.0,
        "hamming_loss": float((pred != y).mean()) if y.size else 0.0,
        "f1": f1.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "support": y.sum(0).astype(int).tolist(),
        "thresholds": t.tolist(),
    }


def tune_thresholds(probs: Any, targets: Any) -> list[float]:
    """Per-label thresholds that maximise each label's F1 on (``probs``, ``targets``) [N, K] (a validation split).

    A label's threshold is the midpoint between the score that gives its best F1 and the next lower score (so that
    ``p >= t`` reproduces that F1 and is not on a sample's exact value); 0.5 for a label without positives.
    """
    p, y = _numpy(probs), _numpy(targets) > 0.5
    out = []
    for c in range(p.shape[1]):
        if not y[:, c].any():
            out.append(DEFAULT_THRESHOLD)
            continue
        tps, fps, scores = _ranked_counts(p[:, c], y[:, c])
        f1 = 2 * tps / (tps + fps + y[:, c].sum())
        best = int(np.argmax(f1))
        lower = scores[best + 1] if best + 1 < len(scores) else 0.0
        out.append(float((scores[best] + lower) / 2))
    return out
