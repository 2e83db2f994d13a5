"""A study's figures: ``study.png`` (the deciding metric as a dot plot, or a sweep line, with std error bars, the seeds
as small dots and a shaded noise band around the best; a second panel of zero-based bars for train time when the study
reports it), ``curves.png`` (validation curves, seed 0) and ``lr.png`` (each variant's learning-rate schedule).

Honest axes: a bar's length is read as its value, so bars always start at zero; the deciding metric is drawn as dots
(a position, not a length), so its axis may zoom to the values, and the noise band gives the zoom its scale: variants
whose dots fall inside the band are not distinguishable from the best at this budget. Error bars are drawn only where
there is a spread (two seeds or more), and the title says how many seeds there are. Variants that tie for the best are
all marked, none as the winner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.engine.lr_tools import default_steps_per_epoch, schedule_lrs
from imgcls.engine.runs import load_run
from imgcls.plotting import plot_curves, pyplot, save_figure
from imgcls.studies.definitions import StudyDefinition
from imgcls.studies.metrics import fmt_gap, fmt_value, metric_info
from imgcls.studies.plan import variant_config
from imgcls.studies.stats import Summary, best_names, mean_test_n, within_noise

#: the colour of the dots and bars, and of the noise band
_COLOR = "#4c72b0"


@dataclass
class _Panel:
    """One metric's numbers in plot units (percent metrics x 100), per variant in study order."""

    metric: str
    names: list[str]
    means: list[float]
    stds: list[float | None]  # None: one seed, no spread to draw
    seeds: list[list[float]]
    scale: float

    @classmethod
    def of(cls, metric: str, names: list[str], summary: Summary, rows: list[dict[str, Any]]) -> _Panel:
        scale = 100.0 if metric_info(metric).percent else 1.0
        stds = [summary[n][metric]["std"] for n in names]
        return cls(
            metric=metric,
            names=names,
            means=[summary[n][metric]["mean"] * scale for n in names],
            stds=[None if math.isnan(s) else s * scale for s in stds],
            seeds=[[r[metric] * scale for r in rows if r["variant"] == n and r.get(metric) is not None] for n in names],
            scale=scale,
        )

    @property
    def has_spread(self) -> bool:
        return any(s is not None for s in self.stds)


def seeds_label(summary: Summary, names: Sequence[str], metric: str) -> str:
    """``1 seed``, ``3 seeds`` or ``2-3 seeds`` (variants with different numbers of finished seeds)."""
    counts = sorted({int(summary[n][metric]["n"]) for n in names if n in summary})
    if not counts:
        return "no seeds"
    text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{text} seed{'' if counts == [1] else 's'}"


def plot_results(
    study: StudyDefinition, summary: Summary, rows: list[dict[str, Any]], path: Path, dataset: str
) -> Path:
    """The deciding metric (dots or a sweep line, std error bars, seeds, noise band), and zero-based bars of the
    first ranked secondary metric (train time) when the study reports one."""
    plt = pyplot()
    metric = study.metric
    ranked_also = [m for m in study.also if m != metric and metric_info(m).higher is not None]
    names = [n for n in study.names if n in summary and summary[n][metric]["n"] > 0]
    panels = [metric, *[m for m in ranked_also[:1] if any(summary[n][m]["n"] > 0 for n in names)]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    notes = []
    for i, (ax, m) in enumerate(zip(axes[0], panels, strict=True)):
        panel = _Panel.of(m, names, summary, rows)
        info = metric_info(m)
        if i == 0:
            notes.append(_main_panel(ax, study, panel, summary, rows))
        else:
            _bar_panel(ax, panel)
        ax.set_ylabel(info.label + (" (%)" if info.percent else ""))
        ax.grid(alpha=0.3, axis="y")
    seeds = seeds_label(summary, names, metric)
    how = "mean ± std over seeds (small dots: each seed)" if seeds != "1 seed" else "one run per variant: no error bars"
    fig.suptitle(f"{study.title} ({dataset}, {seeds})\n{how}{'; ' + notes[0] if notes[0] else ''}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _main_panel(ax: Any, study: StudyDefinition, panel: _Panel, summary: Summary, rows: list[dict[str, Any]]) -> str:
    """The deciding metric: a dot plot (or sweep line), the best (or every variant tied for it) ringed, and the
    noise band around the best; returns the title note on the band."""
    best = best_names(summary, [n for n in study.ranked if n in panel.names], panel.metric)
    xs: list[Any]
    if study.plot == "line" and all(study.variant(n).x is not None for n in panel.names):
        xs = [study.variant(n).x for n in panel.names]
        ax.plot(xs, panel.means, color=_COLOR, lw=1.2, zorder=2)
        if study.x_log:
            ax.set_xscale("log")
        ax.set_xlabel(study.x_label or "")
    else:
        xs = list(range(len(panel.names)))
        ax.set_xticks(xs)
        ax.set_xticklabels(panel.names, rotation=25, ha="right", fontsize=8)
        for label in ax.get_xticklabels():
            label.set_fontweight("bold" if label.get_text() in best else "normal")
        ax.set_xlim(-0.6, len(xs) - 0.4)
    _dots(ax, xs, panel)
    ringed = [(x, m) for x, m, n in zip(xs, panel.means, panel.names, strict=True) if n in best]
    if ringed:
        bx, by = zip(*ringed, strict=True)
        label = "tied best" if len(best) > 1 else "best"
        ax.scatter(bx, by, s=170, facecolors="none", edgecolors="black", lw=1.2, zorder=6, label=label)
    note = _noise_band(ax, panel, summary, best, mean_test_n(rows))
    ax.legend(loc="best", fontsize=8, frameon=False)
    if panel.scale == 100.0:
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 100.0))
    return note


def _dots(ax: Any, xs: list[Any], panel: _Panel) -> None:
    """Each variant's mean as a dot with its value, std error bars where there is a spread, each seed as a small dot."""
    if panel.has_spread:
        yerr = [0.0 if s is None else s for s in panel.stds]
        ax.errorbar(xs, panel.means, yerr=yerr, fmt="none", ecolor=_COLOR, capsize=5, lw=1.2, zorder=3)
        for x, pts in zip(xs, panel.seeds, strict=True):
            ax.scatter([x] * len(pts), pts, s=12, color="black", alpha=0.5, zorder=4)
    ax.scatter(xs, panel.means, s=48, color=_COLOR, zorder=5)
    for x, mean in zip(xs, panel.means, strict=True):
        text = fmt_value(panel.metric, mean / panel.scale)
        ax.annotate(text, (x, mean), xytext=(9, 0), textcoords="offset points", va="center", fontsize=8)


def _noise_band(ax: Any, panel: _Panel, summary: Summary, best: list[str], n_test: float | None) -> str:
    """Shade best ± noise (2 std of the best's seeds, at least the test-set sampling floor); returns the note."""
    if not best:
        return ""
    top = summary[best[0]][panel.metric]
    _, noise, source = within_noise(panel.metric, top, top, n_test)
    who = f"tied best: {', '.join(best)}" if len(best) > 1 else f"best: {best[0]}"
    if noise is None:
        return f"{who}; noise unknown with one seed"
    centre, half = top["mean"] * panel.scale, noise * panel.scale
    label = f"noise around the best (± {fmt_gap(panel.metric, noise).lstrip('+')})"
    ax.axhspan(centre - half, centre + half, color=_COLOR, alpha=0.12, zorder=1, label=label)
    if source.startswith("2 std"):
        source = "2 std of the best's seeds"
    inside = [n for n, m in zip(panel.names, panel.means, strict=True) if n not in best and abs(m - centre) < half]
    if inside:
        who += f" ({', '.join(inside)} within noise of it)"
    return f"{who}; band: ± {source}"


def _bar_panel(ax: Any, panel: _Panel) -> None:
    """One zero-based bar per variant (mean), std error bars and the seeds where there are two or more."""
    pos = list(range(len(panel.names)))
    yerr = [0.0 if s is None else s for s in panel.stds] if panel.has_spread else None
    ax.bar(pos, panel.means, yerr=yerr, capsize=4, color=_COLOR, alpha=0.85)
    if panel.has_spread:
        for i, pts in enumerate(panel.seeds):
            ax.scatter([i] * len(pts), pts, s=12, color="black", alpha=0.6, zorder=3)
    ax.set_xticks(pos)
    ax.set_xticklabels(panel.names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(bottom=0.0)


def plot_seed_curves(study: StudyDefinition, dataset: str, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation accuracy and train loss per epoch of every seed-0 run (variants sharing a run share its line)."""
    variants_of: dict[str, list[str]] = {}  # run folder -> the variants evaluated on it
    for r in rows:
        if r["seed"] == 0:
            variants_of.setdefault(r["run_dir"], []).append(r["variant"])
    if not variants_of:
        return None
    return plot_curves(
        [load_run(d).metrics for d in variants_of],
        path,
        labels=[", ".join(v) for v in variants_of.values()],
        curves=(("val_acc", "val accuracy"), ("train_loss", "train loss")),
        title=f"{study.title} ({dataset}, seed 0)",
    )


def plot_lr_curves(study: StudyDefinition, dataset: str, extra: Sequence[str], path: Path) -> Path:
    """Each variant's learning rate against the epoch (the schedule is a pure function of the step)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for v in study.variants:
        cfg = variant_config(study, v, dataset, extra=extra)
        spe = default_steps_per_epoch(cfg)
        lrs = schedule_lrs(cfg, spe)
        ax.plot([i / spe for i in range(len(lrs))], lrs, label=v.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{study.title}: learning-rate curves ({dataset})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
