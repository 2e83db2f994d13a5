"""The self-contained HTML report of a multi-label model (one file, plots as base64 PNGs), from the metrics of
:func:`imgcls.evaluate.metrics.compute_multilabel_metrics`.

Sections (:data:`MULTILABEL_SECTIONS`): summary numbers (mAP macro/micro, F1 at the tuned thresholds and at 0.5,
subset accuracy, Hamming loss), per-class AP bars (with F1 and the tuned threshold), precision-recall curves,
the co-occurrence of the true labels, training curves, the model card and the resolved config. The single-label report's
confusion matrix, calibration and most-confused pairs have no multi-label meaning and are not drawn.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from imgcls.evaluate.report import _CSS, _SCRIPT, _config_html, _fmt, _img, _meta_html, figure_to_base64
from imgcls.evaluate.training_curves import best_epoch, plot_training_curves, read_metrics_csv

#: section ids, in page order
MULTILABEL_SECTIONS = (
    "summary",
    "per-class-ap",
    "pr-curves",
    "cooccurrence",
    "training-curves",
    "model-card",
    "config",
)
#: precision-recall curves drawn in one plot at most (the lowest-AP classes first: the ones worth looking at)
MAX_PR_CURVES = 12


def plot_ap_bars(metrics: dict[str, Any]) -> Figure:
    """Per-class average precision bars, F1 at the thresholds as dots, mAP as a dashed line."""
    names = list(metrics["per_class"])
    if len(names) > 20:
        names.sort(key=lambda n: metrics["per_class"][n]["ap"] or 0.0)
    k = len(names)
    fig = Figure(figsize=(min(16.0, max(6.0, 0.45 * k + 2)), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(k)
    ax.bar(x, [metrics["per_class"][n]["ap"] or 0.0 for n in names], color="#4c78a8", label="average precision")
    ax.plot(x, [metrics["per_class"][n]["f1"] for n in names], "o", color="#f58518", label="F1 at the threshold")
    ax.set_xticks(x, [str(n)[:12] for n in names], rotation=90 if k > 10 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(metrics["map_macro"] or 0.0, color="gray", ls="--", lw=1, label=f"mAP {metrics['map_macro']:.3f}")
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle("Per-class average precision")
    return fig


def plot_pr_curves(metrics: dict[str, Any]) -> Figure | None:
    """Precision-recall curves of up to :data:`MAX_PR_CURVES` classes (lowest AP first); None without positives."""
    curves = metrics["pr_curves"]
    if not curves:
        return None
    names = sorted(curves, key=lambda n: metrics["per_class"][n]["ap"] or 0.0)[:MAX_PR_CURVES]
    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    ax = fig.subplots()
    for name in names:
        c = curves[name]
        ax.step(
            c["recall"],
            c["precision"],
            where="post",
            lw=1.2,
            label=f"{name} (AP {metrics['per_class'][name]['ap']:.3f})",
        )
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=7, loc="lower left")
    shown = "" if len(names) == len(curves) else f" (the {len(names)} lowest-AP of {len(curves)} classes)"
    ax.set_title(f"Precision-recall curves{shown}")
    return fig


def plot_cooccurrence(cooccurrence: list[list[int]], classes: list[str]) -> Figure:
    """Heatmap of how often two labels are on the same image (true labels), counts annotated for <= 20 classes."""
    cm = np.asarray(cooccurrence, dtype=np.float64)
    k = len(classes)
    side = min(14.0, max(4.5, 0.45 * k + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Purples")
    fig.colorbar(im, ax=ax, fraction=0.046, label="images with both labels")
    if k <= 40:
        ax.set_xticks(range(k), [str(c)[:12] for c in classes], rotation=90 if k > 10 else 45, ha="right", fontsize=8)
        ax.set_yticks(range(k), [str(c)[:12] for c in classes], fontsize=8)
    if k <= 20:
        top = cm.max() or 1.0
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if cm[i, j] > 0.5 * top else "black"
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title("Label co-occurrence (true labels; diagonal: images with the label)")
    return fig


def _summary_html(metrics: dict[str, Any]) -> str:
    at = "tuned on val" if metrics.get("thresholds_tuned") else "0.5"
    keys = [
        ("num_samples", "images"),
        ("map_macro", "mAP (macro)"),
        ("map_micro", "mAP (micro)"),
        ("f1_macro", f"F1 (macro), thresholds {at}"),
        ("f1_micro", f"F1 (micro), thresholds {at}"),
        ("f1_macro_at_0.5", "F1 (macro), threshold 0.5"),
        ("subset_accuracy", f"subset accuracy (every label right), thresholds {at}"),
        ("subset_accuracy_at_0.5", "subset accuracy, threshold 0.5"),
        ("hamming_loss", "Hamming loss (wrong image-label pairs)"),
        ("bce", "binary cross-entropy"),
    ]
    rows = "".join(
        f"<tr><th>{label}</th><td class='num'>{_fmt(metrics.get(k))}</td></tr>" for k, label in keys if k in metrics
    )
    return f"<table>{rows}</table>"


def _per_class_table(metrics: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td>"
        + "".join(f"<td class='num'>{_fmt(v[c])}</td>" for c in ("ap", "f1", "precision", "recall", "threshold"))
        + f"<td class='num'>{v['support']}</td></tr>"
        for n, v in metrics["per_class"].items()
    )
    return (
        "<table><tr><th>class</th><th>AP</th><th>F1</th><th>precision</th><th>recall</th><th>threshold</th>"
        f"<th>support</th></tr>{rows}</table>"
    )


def write_multilabel_report(
    path: str | Path,
    *,
    metrics: dict[str, Any],
    run_dir: str | Path | None = None,
    title: str = "Evaluation report",
    config: Mapping[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Render the plots and write the report (``metrics``: :func:`compute_multilabel_metrics` plus header fields;
    ``run_dir``: the run folder whose metrics.csv gives the training curves and whose config.yaml the config;
    ``card``: the model card as HTML, when the checkpoint is known)."""
    figures: dict[str, str | None] = {
        "per-class-ap": figure_to_base64(plot_ap_bars(metrics)),
        "cooccurrence": figure_to_base64(plot_cooccurrence(metrics["cooccurrence"], metrics["classes"])),
    }
    pr = plot_pr_curves(metrics)
    figures["pr-curves"] = figure_to_base64(pr) if pr is not None else None
    if config is None and run_dir is not None and (Path(run_dir) / "config.yaml").is_file():
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or None
    csv_path = Path(run_dir) / "metrics.csv" if run_dir is not None else None
    curves = None
    if csv_path is not None and csv_path.is_file():
        curves = plot_training_curves(csv_path, best=best_epoch(run_dir, read_metrics_csv(csv_path), config))
    figures["training-curves"] = figure_to_base64(curves) if curves is not None else None

    def section(sid: str, heading: str, body: str) -> str:
        return f'<section id="{sid}">\n<h2>{heading}</h2>\n{body}\n</section>\n'

    def fig_or_note(key: str, alt: str, note: str) -> str:
        b64 = figures.get(key)
        return _img(b64, alt) if b64 else f"<p class='note'>{note}</p>"

    nav = "".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in MULTILABEL_SECTIONS)
    body = (
        section("summary", "Summary (multi-label)", _summary_html(metrics))
        + section(
            "per-class-ap",
            "Per-class average precision",
            fig_or_note("per-class-ap", "per-class AP bars", "") + _per_class_table(metrics),
        )
        + section("pr-curves", "Precision-recall curves", fig_or_note("pr-curves", "PR curves", "no positives"))
        + section("cooccurrence", "Label co-occurrence", fig_or_note("cooccurrence", "label co-occurrence", ""))
        + section(
            "training-curves",
            "Training curves",
            fig_or_note("training-curves", "training curves", "no metrics.csv next to this checkpoint"),
        )
        + section(
            "model-card", "Model card", card or "<p class='note'>no model card: the checkpoint is not known here</p>"
        )
        + section("config", "Config", _config_html(config))
    )
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{_meta_html(metrics)}\n<nav>{nav}</nav>\n{body}"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
