"""The metrics of a study row: how each is named, ranked and shown (values and differences)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """How to show and rank one metric.

    Attributes:
        label: human name.
        higher: True if higher is better, False if lower is, None if it is not ranked (parameter counts).
        percent: shown in percent (differences in percentage points).
    """

    label: str
    higher: bool | None
    percent: bool = False


METRICS: dict[str, MetricInfo] = {
    "test_acc": MetricInfo("test accuracy", True, True),
    "best_val_acc": MetricInfo("best val accuracy", True, True),
    "final_val_acc": MetricInfo("final val accuracy", True, True),
    "ece": MetricInfo("ECE", False, True),
    "nll": MetricInfo("test NLL", False),
    "f1_macro": MetricInfo("macro F1", True, True),
    # multi-label studies (F1 above is at the run's thresholds, 0.5 or tuned on val)
    "map_macro": MetricInfo("test mAP (macro)", True, True),
    "subset_acc": MetricInfo("subset accuracy", True, True),
    "hamming_loss": MetricInfo("Hamming loss", False, True),
    "min_class_acc": MetricInfo("worst-class accuracy", True, True),
    "train_s": MetricInfo("train time (s)", False),
    "total_s": MetricInfo("wall time (s)", False),
    "images_per_s": MetricInfo("train images/s", True),
    "epochs_run": MetricInfo("epochs run", None),
    "params": MetricInfo("parameters", None),
    "trainable_params": MetricInfo("trainable parameters", None),
}

#: the columns of ``study.csv``
CSV_FIELDS = ["study", "dataset", "variant", "seed", *METRICS, "test_n", "run_dir"]


def metric_info(metric: str, higher: bool | None = None) -> MetricInfo:
    """:data:`METRICS` entry of ``metric``; for an unknown name, one labelled by the name that ranks as ``higher``."""
    return METRICS.get(metric, MetricInfo(metric, higher))


def fmt_value(metric: str, value: float | None, std: float | None = None) -> str:
    """``97.2% ± 0.4`` for percentages, ``12.3 ± 0.5`` for times, ``1.23M`` for parameter counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    info = metric_info(metric)
    has_std = std is not None and not math.isnan(std)
    if info.percent:
        return f"{100 * value:.1f}%" + (f" ± {100 * std:.1f}" if has_std else "")
    if metric in ("params", "trainable_params"):
        return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"
    if metric == "epochs_run":
        return f"{value:.1f}".rstrip("0").rstrip(".") + (f" ± {std:.1f}" if has_std else "")
    if metric in ("train_s", "total_s"):
        digits = 1
    elif metric == "images_per_s":
        digits = 0
    else:
        digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if has_std else "")


def fmt_gap(metric: str, gap: float) -> str:
    """A difference: percentage points for percentages."""
    if metric_info(metric).percent:
        return f"{100 * gap:+.1f} pts"
    digits = 1 if metric in ("train_s", "total_s", "images_per_s") or abs(gap) >= 10 else 3
    return f"{gap:+.{digits}f}"
