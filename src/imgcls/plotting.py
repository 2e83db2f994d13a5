"""The one way every command draws a matplotlib figure and writes it to disk, and the per-epoch curves that compare
and studies both draw.

Bottom layer: only the standard library and matplotlib, no other imgcls module (a run's history is passed in as plain
rows, not as a run record).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt


def pyplot() -> Any:
    """matplotlib's pyplot switched to the Agg backend (files only; never needs a display)."""
    matplotlib.use("Agg")
    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: float | None = None) -> Path:
    """Save ``fig`` as ``path`` (parent folders created), release it from pyplot, and return the path.

    Args:
        fig: a matplotlib Figure (pyplot-managed or not).
        path: output file; the format follows the suffix.
        dpi: resolution (None: the figure's own).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **({"dpi": dpi} if dpi is not None else {}))
    plt.close(fig)  # pyplot keeps every figure alive until closed; a no-op for plain Figure objects
    return path


def plot_curves(
    histories: Sequence[Sequence[Mapping[str, Any]]],
    out: str | Path,
    *,
    labels: Sequence[str],
    curves: Sequence[tuple[str, str]],
    title: str | None = None,
    log_scale: Collection[str] = ("lr",),
) -> Path | None:
    """Overlay per-epoch curves of several runs (one panel per metric, one line per run) and save a PNG.

    Args:
        histories: per run, its rows in epoch order (``{"epoch": 1.0, "val_acc": 0.91, ...}``; a missing value is
            None or absent), e.g. the rows of a run's ``metrics.csv``.
        out: the PNG path.
        labels: legend labels, one per history.
        curves: (row key, panel title) pairs; keys no history has a value for are skipped.
        title: figure title.
        log_scale: keys drawn on a log y axis (the learning rate).

    Returns:
        The PNG path, or None when no history has any of the curves.
    """
    present = [(k, t) for k, t in curves if any(row.get(k) is not None for h in histories for row in h)]
    if not present:
        return None
    plt = pyplot()
    cols = min(2, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.6 * rows), squeeze=False)
    for ax, (key, name) in zip(axes.flat, present, strict=False):
        for history, label in zip(histories, labels, strict=True):
            pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and r.get("epoch") is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if key in log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(names) - 1) // 4), 1, 1))
    return save_figure(fig, out, dpi=110)
