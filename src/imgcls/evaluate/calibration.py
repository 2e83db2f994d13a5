"""Calibration: does a confidence of 0.8 mean "right 80% of the time"?

The top-1 confidence ``max_k p_k`` of every sample is put into one of ``n_bins`` equal-width bins on [0, 1]; in each
bin the mean confidence is compared with the accuracy. The expected calibration error (Guo et al., 2017) is the
sample-weighted mean gap ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``; the reliability diagram plots accuracy
against confidence per bin (bars below the diagonal: over-confident; above: under-confident).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: the usual number of bins for ECE (Guo et al., 2017; torchmetrics' default)
DEFAULT_BINS = 15


@dataclass
class ReliabilityBins:
    """Per-bin statistics of top-1 confidence against accuracy.

    Attributes:
        edges: bin edges [n_bins + 1] on [0, 1]; bin b holds confidences in [edges[b], edges[b + 1]).
        counts: samples per bin [n_bins].
        confidence: mean top-1 confidence per bin [n_bins] (NaN for empty bins).
        accuracy: fraction correct per bin [n_bins] (NaN for empty bins).
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    @property
    def weights(self) -> np.ndarray:
        """Fraction of all samples in each bin."""
        return self.counts / max(self.num_samples, 1)

    @property
    def gaps(self) -> np.ndarray:
        """confidence - accuracy per bin (0 for empty bins): positive = over-confident."""
        return np.where(self.counts > 0, np.nan_to_num(self.confidence - self.accuracy), 0.0)

    @property
    def ece(self) -> float:
        """Expected calibration error: sample-weighted mean of |confidence - accuracy|."""
        return float((self.weights * np.abs(self.gaps)).sum())

    @property
    def mce(self) -> float:
        """Maximum calibration error: the largest |confidence - accuracy| over non-empty bins."""
        return float(np.abs(self.gaps).max()) if self.num_samples else 0.0

    @property
    def signed_gap(self) -> float:
        """Sample-weighted mean of confidence - accuracy: > 0 over-confident, < 0 under-confident."""
        return float((self.weights * self.gaps).sum())

    @property
    def verdict(self) -> str:
        """ "well calibrated" (ECE < 2 points), else "over-confident" / "under-confident" when most of the ECE has
        one sign, else "mixed" (over-confident in some bins, under-confident in others)."""
        if self.ece < 0.02:
            return "well calibrated"
        if self.signed_gap > 0.5 * self.ece:
            return "over-confident"
        if self.signed_gap < -0.5 * self.ece:
            return "under-confident"
        return "mixed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists with None for empty bins."""

        def clean(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "n_bins": len(self.counts),
            "edges": [float(e) for e in self.edges],
            "counts": self.counts.tolist(),
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "ece": self.ece,
            "mce": self.mce,
            "signed_gap": self.signed_gap,
            "verdict": self.verdict,
        }


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def reliability_bins(
    probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, n_bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Bin the top-1 confidences of ``probs`` [N, K] and compare with correctness against ``targets`` [N].

    A 1-D ``probs`` is taken as the confidences themselves and ``targets`` as 0/1 correctness (for toy checks).
    """
    p = _as_numpy(probs).astype(np.float64)
    t = _as_numpy(targets)
    if p.ndim == 2:
        conf, correct = p.max(1), (p.argmax(1) == t).astype(np.float64)
    elif p.ndim == 1:
        conf, correct = p, t.astype(np.float64)
    else:
        raise ValueError(f"probs must be [N, K] probabilities or [N] confidences, got shape {p.shape}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins are left-closed [lo, hi) as in torchmetrics; a confidence of exactly 1 goes to the last bin
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        acc = np.where(counts > 0, correct_sum / counts, np.nan)
    return ReliabilityBins(edges=edges, counts=counts, confidence=mean_conf, accuracy=acc)


def expected_calibration_error(
    probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE of ``probs`` [N, K] against ``targets`` [N] with ``n_bins`` equal-width bins (see module docstring)."""
    return reliability_bins(probs, targets, n_bins).ece


def plot_reliability_diagram(bins: ReliabilityBins, *, title: str = "Reliability diagram") -> Figure:
    """Accuracy per confidence bin against the diagonal, gaps shaded, with the confidence histogram below.

    Returns a matplotlib Figure (Agg, not shown); the caller saves or embeds it.
    """

    fig = Figure(figsize=(5.2, 6.0))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.09, top=0.9, hspace=0.08)  # fixed layout: faster to draw
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = bins.edges[1] - bins.edges[0]
    centres = bins.edges[:-1] + width / 2
    filled = bins.counts > 0
    acc = np.nan_to_num(bins.accuracy)
    conf = np.nan_to_num(bins.confidence)
    ax.bar(centres[filled], acc[filled], width=width, edgecolor="#1f3b73", color="#4c78a8", label="accuracy")
    # the gap between accuracy and mean confidence of each bin (hatched, so it reads over the bar when under-confident)
    ax.bar(
        centres[filled],
        (conf - acc)[filled],
        bottom=acc[filled],
        width=width,
        facecolor="none",
        edgecolor="#e45756",
        hatch="///",
        linewidth=0.8,
        label="gap to mean confidence",
    )
    ax.hlines(
        conf[filled],
        centres[filled] - width / 2,
        centres[filled] + width / 2,
        colors="#b22222",
        linewidth=2,
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {100 * bins.ece:.2f}%  ({bins.verdict})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centres, bins.counts, width=width, color="#72b7b2", edgecolor="#2f6f6b")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("samples")
    return fig
