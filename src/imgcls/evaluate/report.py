"""A self-contained HTML evaluation report: one file, every plot embedded as a base64 PNG (matplotlib, Agg).

Sections (each a ``<section id=...>``, listed in :data:`REPORT_SECTIONS`): summary numbers, classification report,
confusion matrix heatmap, reliability diagram, per-class precision/recall/F1 bars, training curves (from the run's
``metrics.csv``, the best epoch marked), most-confused class pairs, a gallery of the most confidently wrong images with
a heatmap of what drove the wrong prediction (Grad-CAM for CNNs, attention rollout for transformers), the model card
(:mod:`imgcls.evaluate.model_card`, when the checkpoint is known) and the run's resolved config (collapsed).

:func:`write_run_report` is what training calls at its end; ``imgcls eval`` writes the same report through
:func:`imgcls.evaluate.run_eval.evaluate_split`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import nn

from imgcls.evaluate.calibration import ReliabilityBins, plot_reliability_diagram
from imgcls.evaluate.training_curves import best_epoch, plot_training_curves, read_metrics_csv
from imgcls.explain.attention import attention_rollout, upsample_map
from imgcls.explain.gradcam import GradCAM, overlay_heatmap, to_display_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from imgcls.data.datasets import SplitView

log = logging.getLogger("imgcls")

#: section ids, in page order
REPORT_SECTIONS = (
    "summary",
    "classification-report",
    "confusion-matrix",
    "calibration",
    "per-class",
    "training-curves",
    "most-confused",
    "confidently-wrong",
    "model-card",
    "config",
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; } nav a { margin-right: 0.8em; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f5f5f5; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eee; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 6px; font-size: 0.8em; width: 212px; }
.card img { width: 100px; height: 100px; image-rendering: pixelated; }
.note { color: #777; font-style: italic; }
details > summary { cursor: pointer; font-weight: 600; } details pre { max-height: 36em; }
.model-card h1 { font-size: 1.3em; } .model-card h2 { font-size: 1.1em; border: none; }
"""

# marks images the browser could not decode (a headless-browser check reads data-broken-images)
_SCRIPT = """
window.addEventListener("load", function () {
  var broken = Array.prototype.filter.call(document.images, function (im) { return !im.complete || !im.naturalWidth; });
  document.body.setAttribute("data-broken-images", String(broken.length));
  broken.forEach(function (im) { im.alt = "[image failed to load] " + im.alt; });
});
"""


# --------------------------------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------------------------------


def figure_to_base64(fig: Figure, dpi: int = 90) -> str:
    """PNG bytes of a matplotlib figure as a base64 string."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def array_to_base64(array: np.ndarray) -> str:
    """A uint8 [H, W, 3] image as a base64 PNG string."""

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


# --------------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------------


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Row-normalised heatmap (colour = fraction of the true class), annotated with counts for <= 20 classes."""

    cm = np.asarray(confusion, dtype=np.float64)
    k = len(classes)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(14.0, max(4.5, 0.45 * k + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    if k <= 40:
        ax.set_xticks(range(k), [str(c)[:12] for c in classes], rotation=90 if k > 10 else 45, ha="right", fontsize=8)
        ax.set_yticks(range(k), [str(c)[:12] for c in classes], fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(cm[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (rows normalised, counts annotated)")
    return fig


def plot_per_class(metrics: dict[str, Any]) -> Figure:
    """Grouped precision / recall / F1 bars per class (classes sorted by F1 when there are more than 20)."""

    names = list(metrics["per_class"])
    if len(names) > 20:
        names.sort(key=lambda n: metrics["per_class"][n]["f1"])
    k = len(names)
    fig = Figure(figsize=(min(16.0, max(6.0, 0.45 * k + 2)), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(k)
    width = 0.27
    for off, key, color in ((-width, "precision", "#4c78a8"), (0.0, "recall", "#f58518"), (width, "f1", "#54a24b")):
        ax.bar(x + off, [metrics["per_class"][n][key] for n in names], width=width, label=key, color=color)
    ax.set_xticks(x, [str(n)[:12] for n in names], rotation=90 if k > 10 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(metrics["f1_macro"], color="gray", ls="--", lw=1, label=f"macro F1 {metrics['f1_macro']:.3f}")
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle("Per-class precision, recall and F1")
    return fig


def plot_most_confused(pairs: Sequence[dict[str, Any]]) -> Figure | None:
    """Horizontal bars of the most-confused (true -> predicted) pairs (None when there are no mistakes)."""

    if not pairs:
        return None
    fig = Figure(figsize=(7.0, 0.35 * len(pairs) + 1.2), layout="constrained")
    ax = fig.subplots()
    labels = [f"{p['true']} -> {p['predicted']}" for p in pairs][::-1]
    ax.barh(labels, [p["count"] for p in pairs][::-1], color="#e45756")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images: no 0.2-image ticks
    ax.set_xlabel("images")
    ax.set_title("Most-confused pairs (true -> predicted)")
    return fig


# --------------------------------------------------------------------------------------------------------------------
# Confidently wrong gallery
# --------------------------------------------------------------------------------------------------------------------


def confidently_wrong(probs: torch.Tensor, targets: torch.Tensor, k: int = 12) -> list[int]:
    """Indices of the ``k`` wrong predictions with the highest top-1 probability, most confident first."""
    conf, pred = probs.max(1)
    wrong = (pred != targets).nonzero().flatten()
    order = conf[wrong].argsort(descending=True, stable=True)
    return wrong[order][:k].tolist()


def explanation_maps(model: nn.Module, images: torch.Tensor, class_idx: Sequence[int]) -> tuple[np.ndarray, str] | None:
    """Heatmaps [B, H, W] in [0, 1] of why ``model`` chose ``class_idx``, and the method's name.

    Grad-CAM at ``model.cam_layer`` (or the last conv) for CNNs and hybrids; attention rollout for transformers
    without a conv layer to look at. None when neither applies.
    """

    if not getattr(model, "cam_layer", "") and hasattr(model, "get_attention_maps"):
        device = next(model.parameters()).device
        grid = attention_rollout(model, images.to(device)).cpu()
        return np.stack([upsample_map(g, tuple(images.shape[-2:])) for g in grid]), "attention rollout"
    try:
        cam = GradCAM(model)
        maps, _ = cam(images, torch.tensor(list(class_idx)))
    except ValueError as e:
        log.info("no heatmaps in the report gallery: %s", e)
        return None
    return maps.numpy(), f"Grad-CAM ({cam.layer_name})"


def build_gallery(
    model: nn.Module,
    view: SplitView,
    transform: Callable[[torch.Tensor], torch.Tensor],
    probs: torch.Tensor,
    targets: torch.Tensor,
    classes: Sequence[str],
    *,
    k: int = 12,
    display_size: int = 100,
) -> tuple[list[dict[str, Any]], str | None]:
    """The most confidently wrong images with heatmaps for the predicted class.

    Returns:
        (cards with ``index``, ``true``, ``predicted``, ``confidence``, ``image`` and ``overlay`` base64 PNGs;
        the heatmap method or None).
    """

    indices = confidently_wrong(probs, targets, k)
    if not indices:
        return [], None
    raw = [view.get(i)[0] for i in indices]
    batch = torch.stack([transform(r) for r in raw])
    preds = probs[indices].argmax(1).tolist()
    maps = explanation_maps(model, batch, preds)
    cards = []
    for n, (i, img) in enumerate(zip(indices, raw, strict=True)):
        base = to_display_image(img)
        scale = max(1, math.ceil(display_size / max(base.shape[:2])))
        if scale > 1:
            base = np.asarray(
                Image.fromarray(base).resize((base.shape[1] * scale, base.shape[0] * scale), Image.NEAREST)
            )
        card = {
            "index": i,
            "true": classes[int(targets[i])],
            "predicted": classes[preds[n]],
            "confidence": float(probs[i].max()),
            "image": array_to_base64(base),
        }
        if maps is not None:
            card["overlay"] = array_to_base64(overlay_heatmap(base, maps[0][n]))
        cards.append(card)
    return cards, maps[1] if maps is not None else None


# --------------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------------


def _summary_html(metrics: dict[str, Any]) -> str:
    keys = [("num_samples", "images"), ("accuracy", "accuracy")]
    keys += [(k, k.replace("top", "top-") + " accuracy") for k in metrics if k.startswith("top") and k[3:].isdigit()]
    keys += [
        ("precision_macro", "precision (macro)"),
        ("recall_macro", "recall (macro)"),
        ("f1_macro", "F1 (macro)"),
        ("precision_weighted", "precision (weighted)"),
        ("recall_weighted", "recall (weighted)"),
        ("f1_weighted", "F1 (weighted)"),
        ("roc_auc_macro", "ROC-AUC one-vs-rest (macro)"),
        ("roc_auc_weighted", "ROC-AUC one-vs-rest (weighted)"),
        ("nll", "negative log-likelihood"),
        ("brier", "Brier score"),
        ("ece", "expected calibration error (15 bins)"),
        ("mce", "maximum calibration error"),
        ("calibration_verdict", "calibration"),
    ]
    rows = "".join(
        f"<tr><th>{label}</th><td class='num'>{_fmt(metrics.get(k))}</td></tr>" for k, label in keys if k in metrics
    )
    return f"<table>{rows}</table>"


def _meta_html(metrics: dict[str, Any]) -> str:
    keys = ("checkpoint", "model", "dataset", "split", "tta", "ensemble_mode", "members")
    parts = []
    for k in keys:
        v = metrics.get(k)
        if v in (None, [], ""):
            continue
        if k == "members" and isinstance(v, list):
            if len(v) <= 1:
                continue
            v = ", ".join(str(x) for x in v)
        parts.append(f"<b>{k}</b>: {html.escape(str(v))}")
    parts.append(f"<b>written</b>: {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return "<p class='meta'>" + " &middot; ".join(parts) + "</p>"


def _gallery_html(gallery: Sequence[dict[str, Any]], gallery_method: str | None) -> str:
    """The most-confidently-wrong cards: image, heatmap overlay (when a method applies) and caption."""
    if gallery:
        cards = []
        for c in gallery:
            imgs = _img(c["image"], f"image {c['index']}", "thumb")
            if "overlay" in c:
                imgs += " " + _img(c["overlay"], f"heatmap {c['index']}", "thumb")
            caption = (
                f"#{c['index']}: true <b>{html.escape(c['true'])}</b>, predicted "
                f"<b>{html.escape(c['predicted'])}</b> ({100 * c['confidence']:.1f}%)"
            )
            cards.append(f"<div class='card'>{imgs}<br>{caption}</div>")
        how = (
            f"Right: {html.escape(gallery_method)} for the predicted class (red = most evidence)."
            if gallery_method
            else "No heatmap method applies to this model."
        )
        return f"<p>{how}</p><div class='gallery'>{''.join(cards)}</div>"
    return "<p class='note'>no wrong predictions</p>"


def _tables_html(metrics: dict[str, Any]) -> tuple[str, str]:
    """The most-confused pairs table and the per-class metrics table."""
    pairs = metrics.get("most_confused", [])
    pair_rows = "".join(
        f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['predicted'])}</td><td class='num'>{p['count']}</td>"
        f"<td class='num'>{100 * p['fraction_of_true']:.1f}%</td></tr>"
        for p in pairs
    )
    pair_table = (
        f"<table><tr><th>true</th><th>predicted as</th><th>images</th><th>of the true class</th></tr>"
        f"{pair_rows}</table>"
        if pairs
        else "<p class='note'>no mistakes</p>"
    )
    per_class_rows = "".join(
        f"<tr><td>{html.escape(n)}</td>"
        + "".join(f"<td class='num'>{_fmt(v[c])}</td>" for c in ("precision", "recall", "f1", "roc_auc"))
        + f"<td class='num'>{v['support']}</td></tr>"
        for n, v in metrics["per_class"].items()
    )
    per_class_table = (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>ROC-AUC</th>"
        f"<th>support</th></tr>{per_class_rows}</table>"
    )
    return pair_table, per_class_table


def _config_html(config: Mapping[str, Any] | None) -> str:
    """The run's resolved config as YAML in a collapsed ``<details>`` (its summary line says what it is)."""
    if not config:
        return "<p class='note'>no config: the checkpoint and the run folder have none</p>"
    try:
        text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True)
    except yaml.YAMLError:
        text = json.dumps(config, indent=2, default=str)
    model = (config.get("model") or {}).get("name", "?")
    data = (config.get("data") or {}).get("name", "?")
    epochs = (config.get("training") or {}).get("epochs", "?")
    return (
        f"<details id='resolved-config'><summary>Resolved config: {html.escape(str(model))} on "
        f"{html.escape(str(data))}, {html.escape(str(epochs))} epochs (every key, as the run used it; click to "
        f"expand)</summary>\n<pre>{html.escape(text)}</pre>\n</details>"
    )


def render_report(
    *,
    title: str,
    metrics: dict[str, Any],
    figures: dict[str, str | None],
    gallery: Sequence[dict[str, Any]],
    gallery_method: str | None,
    config: Mapping[str, Any] | None = None,
    card: str | None = None,
) -> str:
    """The HTML page from the metrics, base64 figures (by section id), gallery cards, the model card (HTML) and the
    run's config."""

    def section(sid: str, heading: str, body: str) -> str:
        return f'<section id="{sid}">\n<h2>{heading}</h2>\n{body}\n</section>\n'

    def fig_or_note(key: str, alt: str, note: str) -> str:
        b64 = figures.get(key)
        return _img(b64, alt) if b64 else f"<p class='note'>{note}</p>"

    bins = metrics["calibration"]
    cal_text = (
        f"<p>ECE {100 * metrics['ece']:.2f}% over {bins['n_bins']} equal-width confidence bins; mean "
        f"confidence minus accuracy {100 * bins['signed_gap']:+.2f} points (positive: over-confident). "
        f"Verdict: <b>{html.escape(bins['verdict'])}</b>. Bars below the diagonal are bins where the model is "
        "more confident than it is accurate.</p>"
    )
    pair_table, per_class_table = _tables_html(metrics)
    gallery_html = _gallery_html(gallery, gallery_method)
    nav = "".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in REPORT_SECTIONS)
    body = (
        section("summary", "Summary", _summary_html(metrics))
        + section(
            "classification-report",
            "Classification report",
            f"<pre>{html.escape(metrics['classification_report'])}</pre>",
        )
        + section("confusion-matrix", "Confusion matrix", fig_or_note("confusion-matrix", "confusion matrix", ""))
        + section(
            "calibration",
            "Calibration: reliability diagram",
            cal_text + fig_or_note("calibration", "reliability diagram", ""),
        )
        + section("per-class", "Per-class metrics", fig_or_note("per-class", "per-class bars", "") + per_class_table)
        + section(
            "training-curves",
            "Training curves",
            fig_or_note("training-curves", "training curves", "no metrics.csv next to this checkpoint"),
        )
        + section(
            "most-confused", "Most-confused pairs", fig_or_note("most-confused", "most-confused pairs", "") + pair_table
        )
        + section("confidently-wrong", "Most confidently wrong", gallery_html)
        + section(
            "model-card", "Model card", card or "<p class='note'>no model card: the checkpoint is not known here</p>"
        )
        + section("config", "Config", _config_html(config))
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{_meta_html(metrics)}\n<nav>{nav}</nav>\n{body}"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_report(
    path: str | Path,
    *,
    metrics: dict[str, Any],
    probs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    view: SplitView | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    model: nn.Module | None = None,
    run_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    title: str = "Evaluation report",
    gallery_size: int = 12,
    config: Mapping[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Render every plot and write the self-contained report.

    Args:
        path: the .html file to write.
        metrics: from :func:`imgcls.evaluate.metrics.compute_metrics` (plus header fields).
        probs, targets: [N, K] probabilities and [N] labels in the order of ``view`` (for the gallery).
        view, transform, model: the split, its eval transform and a model for the gallery heatmaps (optional: no
            gallery without them).
        run_dir: the run folder whose metrics.csv gives the training curves.
        device: unused (the model's own device is used); kept for symmetry with the callers.
        title: page title.
        gallery_size: number of confidently wrong images.
        config: the run's resolved config (the checkpoint's) for the config section; default: the run folder's
            ``config.yaml``.
        card: the model card as HTML (:func:`imgcls.evaluate.model_card.card_html`) for its section.

    Returns:
        The path written.
    """
    # plots are matplotlib Figure objects saved directly (Agg canvas), never pyplot: no global backend state

    classes = metrics["classes"]
    figures: dict[str, str | None] = {
        "confusion-matrix": figure_to_base64(plot_confusion_matrix(metrics["confusion_matrix"], classes)),
        "per-class": figure_to_base64(plot_per_class(metrics)),
    }
    cal = metrics["calibration"]
    bins = ReliabilityBins(
        edges=np.array(cal["edges"]),
        counts=np.array(cal["counts"]),
        confidence=np.array([np.nan if v is None else v for v in cal["confidence"]], dtype=np.float64),
        accuracy=np.array([np.nan if v is None else v for v in cal["accuracy"]], dtype=np.float64),
    )
    figures["calibration"] = figure_to_base64(plot_reliability_diagram(bins))
    config_path = Path(run_dir) / "config.yaml" if run_dir is not None else None
    if config is None and config_path is not None and config_path.is_file():
        config = yaml.safe_load(config_path.read_text()) or None
    csv_path = Path(run_dir) / "metrics.csv" if run_dir is not None else None
    curves = None
    if csv_path is not None and csv_path.is_file():
        curves = plot_training_curves(csv_path, best=best_epoch(run_dir, read_metrics_csv(csv_path), config))
    figures["training-curves"] = figure_to_base64(curves) if curves is not None else None
    confused = plot_most_confused(metrics.get("most_confused", []))
    figures["most-confused"] = figure_to_base64(confused) if confused is not None else None
    gallery: list[dict[str, Any]] = []
    method = None
    if model is not None and view is not None and transform is not None and probs is not None and targets is not None:
        gallery, method = build_gallery(model, view, transform, probs.float(), targets, classes, k=gallery_size)
    page = render_report(
        title=title,
        metrics=metrics,
        figures=figures,
        gallery=gallery,
        gallery_method=method,
        config=config,
        card=card,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
