"""Numbers over seeds: per-variant mean, std and count, the noise level of a gap, and the ranking of variants."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from imgcls.studies.metrics import METRICS, metric_info

#: per variant: metric -> {"mean", "std", "n"} (std is NaN with one seed; mean NaN without values)
Summary = dict[str, dict[str, dict[str, float]]]


def _stats(values: list[float]) -> dict[str, float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
        "n": len(vals),
    }


def aggregate(rows: list[dict[str, Any]], order: Sequence[str]) -> Summary:
    """Per variant (in ``order``) and metric: mean, sample std (NaN for one seed) and count."""
    out: Summary = {}
    for name in order:
        mine = [r for r in rows if r["variant"] == name]
        if mine:
            out[name] = {m: _stats([r.get(m) for r in mine]) for m in METRICS}
            out[name]["test_n"] = _stats([r.get("test_n") for r in mine])
    return out


def mean_test_n(rows: Sequence[dict[str, Any]] | None) -> float | None:
    """The mean test-set size of the rows (None when no row has one)."""
    return statistics.fmean([r["test_n"] for r in (rows or ()) if r.get("test_n")] or [0]) or None


def _binomial_floor(metric: str, p: float, n_test: float | None, n_seeds: int) -> float | None:
    """2 binomial standard errors of a mean of ``n_seeds`` accuracies each measured on ``n_test`` images."""
    if metric not in ("test_acc", "min_class_acc", "f1_macro") or not n_test or math.isnan(n_test) or math.isnan(p):
        return None
    if metric == "min_class_acc":
        n_test = n_test / 10  # roughly one class's share of a 10-class test set
    return 2 * math.sqrt(max(p * (1 - p), 1e-4) / (n_test * max(1, n_seeds)))


def within_noise(
    metric: str, a: dict[str, float], b: dict[str, float], n_test: float | None = None
) -> tuple[bool | None, float | None, str]:
    """Whether the gap between two variants' means is below their noise level.

    The noise level is 2 x the pooled standard deviation of the seeds, sqrt((sd_a^2 + sd_b^2) / 2), when both
    variants have at least two seeds. Two or three seeds can agree by chance (an accuracy on 360 images moves in
    steps of 0.28 points), so for accuracy-like metrics it is never taken below the test-set sampling floor: 2
    binomial standard errors of a mean of n accuracies measured on ``n_test`` images each. With one seed that floor
    is the only estimate; for other metrics with one seed the noise is unknown.

    Returns:
        (within noise? (None if unknown), the noise level, where it comes from).
    """
    gap = abs(a["mean"] - b["mean"])
    n = int(min(a["n"], b["n"]))
    floor = _binomial_floor(metric, (a["mean"] + b["mean"]) / 2, n_test, n)
    noise, source = None, ""
    if n >= 2 and not (math.isnan(a["std"]) or math.isnan(b["std"])):
        noise, source = 2 * math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2), "2 std of the seeds"
        if floor is not None and floor > noise:
            noise, source = floor, f"test-set sampling floor, 2 binomial s.e. on {int(n_test)} images x {n} seeds"
    elif floor is not None:
        noise, source = floor, f"2 binomial standard errors on {int(n_test)} test images (one seed)"
    if noise is None:
        return None, None, ""
    return gap < noise, noise, source


def rank(summary: Summary, names: Sequence[str], metric: str) -> list[str]:
    """The variants of ``names`` that have ``metric``, best first (an unknown metric counts higher-is-better)."""
    have = [n for n in names if n in summary and summary[n][metric]["n"] > 0]
    return sorted(have, key=lambda n: summary[n][metric]["mean"], reverse=bool(metric_info(metric, True).higher))


def best_names(summary: Summary, names: Sequence[str], metric: str) -> list[str]:
    """The variants of ``names`` with the best mean of ``metric``: one, or every variant tied for it (equal means)."""
    ranked = rank(summary, names, metric)
    if not ranked:
        return []
    top = summary[ranked[0]][metric]["mean"]
    return [n for n in ranked if math.isclose(summary[n][metric]["mean"], top, rel_tol=1e-9, abs_tol=1e-12)]
