"""The report's training curves: loss, accuracy and learning rate per epoch from a run's ``metrics.csv``, with the
epoch whose checkpoint the report evaluates (the best one) marked in every panel.

What makes them readable: a legend that says "train", "val", "EMA val" (not column names), whole-number epoch ticks,
the learning rate in scientific notation, axis labels, and the best epoch as a dashed line labelled with its
monitored score, so that a reader can tell which point of the curves the rest of the report is about.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from imgcls.plotting import integer_epoch_axis

#: (metrics.csv column, legend label) per panel, and the panels' titles and y labels
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("loss", "loss", (("train_loss", "train"), ("val_loss", "val"), ("ema_val_loss", "EMA val"))),
    ("accuracy", "accuracy", (("train_acc", "train"), ("val_acc", "val"), ("ema_val_acc", "EMA val"))),
    ("learning rate (end of epoch)", "learning rate", (("lr", "lr"),)),
)
_STYLE = {
    "train": ("tab:blue", "-"),
    "val": ("tab:orange", "-"),
    "EMA val": ("tab:green", "--"),
    "lr": ("tab:purple", "-"),
}


@dataclass(frozen=True)
class BestEpoch:
    """The epoch of the best checkpoint and how it was chosen (for the marker's label)."""

    epoch: int
    label: str


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """A run's metrics.csv as columns of floats (NaN for empty cells)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        values = []
        for r in rows:
            try:
                values.append(float(r[key]))
            except (TypeError, ValueError):
                values.append(float("nan"))
        cols[key] = np.array(values)
    return cols


def best_epoch(
    run_dir: str | Path | None, cols: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None
) -> BestEpoch | None:
    """The best epoch: ``summary.json``'s ``best_epoch`` (what training chose, with its score), else the best value
    of the monitored column of ``metrics.csv`` (``training.early_stopping.monitor`` of ``config``, default val_acc).
    None when neither is known."""
    training = (config or {}).get("training") or {}
    ema = training.get("ema") or {}
    by_ema = bool(ema.get("enabled")) and bool(ema.get("use_for_best", True))  # the EMA model's score picked it
    summary_path = Path(run_dir) / "summary.json" if run_dir is not None else None
    if summary_path is not None and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        epoch = summary.get("best_epoch")
        if isinstance(epoch, int) and epoch > 0:
            score = next(((k, v) for k, v in summary.items() if k.startswith("best_val_") and v is not None), None)
            name = ("EMA " if by_ema else "") + score[0].removeprefix("best_") if score else ""
            return BestEpoch(epoch, f"best epoch {epoch}" + (f" ({name} {score[1]:.4g})" if score else ""))
    monitor = (training.get("early_stopping") or {}).get("monitor") or "val_acc"
    if by_ema and "ema_" + monitor in cols:
        monitor = "ema_" + monitor
    values = cols.get(monitor)
    if values is None or "epoch" not in cols or np.isnan(values).all():
        return None
    i = int(np.nanargmin(values) if "loss" in monitor else np.nanargmax(values))
    epoch = int(cols["epoch"][i])
    return BestEpoch(epoch, f"best epoch {epoch} ({monitor} {values[i]:.4g}, from metrics.csv)")


def plot_training_curves(
    metrics_csv: str | Path, *, best: BestEpoch | None = None, config: Mapping[str, Any] | None = None
) -> Figure | None:
    """Loss, accuracy and learning rate per epoch from a run's metrics.csv, the best epoch marked (None if the file
    has no rows).

    Args:
        metrics_csv: the run's ``metrics.csv``.
        best: the epoch to mark (default: :func:`best_epoch` of the file's folder).
        config: the run's resolved config (for the monitored metric when there is no ``summary.json``).
    """
    cols = read_metrics_csv(metrics_csv)
    if not cols or "epoch" not in cols or len(cols["epoch"]) == 0:
        return None
    best = best if best is not None else best_epoch(Path(metrics_csv).parent, cols, config)
    ep = cols["epoch"]
    fig = Figure(figsize=(12.0, 3.8))
    fig.subplots_adjust(left=0.055, right=0.99, bottom=0.15, top=0.9, wspace=0.28)  # fixed layout: faster to draw
    for ax, (title, ylabel, keys) in zip(fig.subplots(1, 3), PANELS, strict=True):
        for key, label in keys:
            if key in cols and not np.isnan(cols[key]).all():
                color, ls = _STYLE[label]
                ax.plot(ep, cols[key], marker="o", ms=3.5, color=color, ls=ls, label=label)
        if best is not None:
            ax.axvline(best.epoch, color="tab:red", ls="--", lw=1, alpha=0.8, label=best.label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        integer_epoch_axis(ax)
        ax.grid(alpha=0.3)
        if title.startswith("learning rate"):
            _scientific(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    return fig


def _scientific(ax: Any) -> None:
    """y tick labels as ``0.04`` / ``5e-05`` (3 significant digits, no offset text over the title); the axis starts
    at zero, so that the height of the curve is the learning rate's size."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    ax.set_ylim(bottom=0.0)
