"""The one way every command draws a matplotlib figure and writes it to disk, the per-epoch curves that compare and
studies both draw, and what keeps many runs apart (one colour and marker per run, shortened labels, epoch ticks).

Bottom layer: only the standard library and matplotlib, no other imgcls module (a run's history is passed in as plain
rows, not as a run record).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.colors import to_hex
from matplotlib.ticker import MaxNLocator


def pyplot() -> Any:
    """matplotlib's pyplot switched to the Agg backend (files only; never needs a display)."""
    matplotlib.use("Agg")
    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: float | None = None) -> Path:
    """Save ``fig`` as ``path`` (parent folders created), release it from pyplot, and return the path.

    Args:
        fig: a matplotlib Figure (pyplot-managed or not).
        path: output file; the format follows the suffix (none: PNG, and ``.png`` is added).
        dpi: resolution (None: the figure's own).
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")  # what matplotlib writes then; the returned path must be the real file
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **({"dpi": dpi} if dpi is not None else {}))
    plt.close(fig)  # pyplot keeps every figure alive until closed; a no-op for plain Figure objects
    return path


def run_colors(n: int) -> list[str]:
    """``n`` distinct colours (hex), the same for the same ``n`` everywhere (curves, the compare table's swatches).

    Up to 10: tab10. Up to 20: tab20's dark shades first, then its light ones (neighbours in the list differ in hue).
    More: the perceptual ``turbo`` map sampled at golden-ratio steps, so that consecutive runs are far apart in hue;
    :func:`run_markers` tells apart what colour alone cannot.
    """
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [to_hex(cmap(i)) for i in order[:n]]
    cmap = matplotlib.colormaps["turbo"]
    return [to_hex(cmap(0.05 + 0.9 * ((i * 0.6180339887) % 1.0))) for i in range(n)]


#: marker shapes, cycled over runs (with :func:`run_colors`, two runs differ in colour or shape or both)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def run_markers(n: int) -> list[str]:
    """``n`` marker shapes: all circles up to 10 runs (colour is enough), then a new shape every 10 runs."""
    return [MARKERS[(i // 10) % len(MARKERS)] if n > 10 else "o" for i in range(n)]


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis in the middle (the start and the end of a run name, its
    timestamp, usually tell runs apart)."""
    if width < 1:
        return ""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 1) // 2 + (width - 1) % 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def integer_epoch_axis(ax: Any) -> None:
    """Whole-number ticks on the x axis (epochs are counted, ``1.5`` is not an epoch); call it after plotting. A
    single epoch gets half an epoch of room either side, so that its one tick is the epoch itself."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    lo, hi = ax.dataLim.intervalx
    if math.isfinite(lo) and math.isfinite(hi) and hi - lo < 1:
        ax.set_xlim(lo - 0.5, hi + 0.5)


def plot_curves(
    histories: Sequence[Sequence[Mapping[str, Any]]],
    out: str | Path,
    *,
    labels: Sequence[str],
    curves: Sequence[tuple[str, str]],
    title: str | None = None,
    log_scale: Collection[str] = ("lr",),
    label_width: int = 40,
) -> Path | None:
    """Overlay per-epoch curves of several runs (one panel per metric, one line per run) and save a PNG.

    Every run has its own colour (:func:`run_colors`, the compare table's swatches use the same) and, past 10 runs,
    marker; epochs are whole-number ticks; the legend sits under the panels, labels shortened to ``label_width``
    characters in the middle.

    Args:
        histories: per run, its rows in epoch order (``{"epoch": 1.0, "val_acc": 0.91, ...}``; a missing value is
            None or absent), e.g. the rows of a run's ``metrics.csv``.
        out: the PNG path.
        labels: legend labels, one per history.
        curves: (row key, panel title) pairs; keys no history has a value for are skipped.
        title: figure title.
        log_scale: keys drawn on a log y axis (the learning rate).
        label_width: the longest legend label, in characters.

    Returns:
        The PNG path, or None when no history has any of the curves.
    """
    present = [(k, t) for k, t in curves if any(row.get(k) is not None for h in histories for row in h)]
    if not present:
        return None
    plt = pyplot()
    cols = min(2, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    colors, markers = run_colors(len(histories)), run_markers(len(histories))
    short = [shorten(str(label), label_width) for label in labels]
    for ax, (key, name) in zip(axes.flat, present, strict=False):
        for i, history in enumerate(histories):
            pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and r.get("epoch") is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker=markers[i], markersize=3.5, color=colors[i], lw=1.3, label=short[i])
        ax.set_title(name)
        ax.set_xlabel("epoch")
        integer_epoch_axis(ax)
        if key in log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        per_row = max(1, int(6.0 * cols * 72 / (8 * 0.6)) // (max(len(n) for n in names) + 6))
        fig.legend(handles, names, loc="outside lower center", ncol=min(per_row, len(names)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out, dpi=110)
