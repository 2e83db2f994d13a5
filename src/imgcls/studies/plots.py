"""A study's figures: ``study.png`` (bars, or a sweep line, of the deciding metric with std error bars and the seeds
as dots), ``curves.png`` (validation curves, seed 0) and ``lr.png`` (each variant's learning-rate schedule)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgcls.engine.lr_tools import default_steps_per_epoch, schedule_lrs
from imgcls.engine.runs import load_run
from imgcls.plotting import plot_curves, pyplot, save_figure
from imgcls.studies.definitions import StudyDefinition
from imgcls.studies.metrics import MetricInfo, metric_info
from imgcls.studies.plan import variant_config
from imgcls.studies.stats import Summary


def plot_results(
    study: StudyDefinition, summary: Summary, rows: list[dict[str, Any]], path: Path, dataset: str
) -> Path:
    """Bars (or a sweep line) of the deciding metric with std error bars and the seeds as dots; a second panel for
    train time when the study reports it."""
    plt = pyplot()
    metric = study.metric
    ranked_also = [m for m in study.also if m != metric and metric_info(m).higher is not None]
    panels = [metric, *ranked_also[:1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    names = [n for n in study.names if n in summary]
    for ax, m in zip(axes[0], panels, strict=True):
        info = metric_info(m)
        scale = 100.0 if info.percent else 1.0
        means = [summary[n][m]["mean"] * scale for n in names]
        stds = [0.0 if math.isnan(summary[n][m]["std"]) else summary[n][m]["std"] * scale for n in names]
        seeds = [[r[m] * scale for r in rows if r["variant"] == n and r.get(m) is not None] for n in names]
        if study.plot == "line" and all(study.variant(n).x is not None for n in names):
            _sweep_panel(ax, study, [study.variant(n).x for n in names], means, stds, seeds)
        else:
            _bar_panel(ax, m, info, names, means, stds, seeds)
        ax.set_ylabel(info.label + (" (%)" if info.percent else ""))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{study.title} ({dataset})\nmean ± std over seeds, dots = seeds", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _sweep_panel(
    ax: Any, study: StudyDefinition, xs: list[Any], means: list[float], stds: list[float], seeds: list[list[float]]
) -> None:
    """Mean ± std against ``Variant.x``, the seeds as grey dots."""
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4)
    for x, pts in zip(xs, seeds, strict=True):
        ax.scatter([x] * len(pts), pts, s=10, color="gray", alpha=0.6, zorder=3)
    if study.x_log:
        ax.set_xscale("log")
    ax.set_xlabel(study.x_label or "")


def _bar_panel(
    ax: Any,
    metric: str,
    info: MetricInfo,
    names: list[str],
    means: list[float],
    stds: list[float],
    seeds: list[list[float]],
) -> None:
    """One bar per variant (mean ± std), the seeds as black dots; percentages zoomed to the bars' range."""
    pos = list(range(len(names)))
    ax.bar(pos, means, yerr=stds, capsize=4, color="#4c72b0", alpha=0.85)
    for i, pts in enumerate(seeds):
        ax.scatter([i] * len(pts), pts, s=12, color="black", alpha=0.6, zorder=3)
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    finite = [v for v in means if not math.isnan(v)]
    if finite and info.percent and metric != "ece":
        lo = min(v - s for v, s in zip(means, stds, strict=True) if not math.isnan(v))
        hi = max(v + s for v, s in zip(means, stds, strict=True) if not math.isnan(v))
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1.0)), min(100.5, hi + 1.0))


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
