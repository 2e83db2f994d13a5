"""Model cards in the Hugging Face format: a YAML metadata header (``model-index`` with the evaluation's numbers) and
Markdown sections, built from a checkpoint, its evaluation and the run's summary.

Sections: the task and classes; the data and its splits with the data fingerprint; preprocessing and the input the
model expects; the training recipe; the metrics (summary, per class, calibration); the limitations the evaluation
shows (worst classes, most-confused pairs, calibration, the test set's sampling error); versions (imgcls, torch, the
git commit when the run recorded one). Everything here is a pure function of those inputs:
:func:`imgcls.evaluate.publish.write_model_card` is ``imgcls card RUN``, and the evaluation report embeds the same card
(:func:`card_html`).

The header is written and read with ``huggingface_hub``'s ``ModelCard`` (a core dependency through timm), so it
follows the Hub's schema; nothing is uploaded.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from markdown_it import MarkdownIt

from imgcls.config import Config, flatten, from_dict, to_dict

#: the ``model-index`` metrics: (key in the evaluation's metrics.json, Hub metric type, display name, config)
MODEL_INDEX_METRICS: tuple[tuple[str, str, str, str | None], ...] = (
    ("accuracy", "accuracy", "Accuracy", None),
    ("top5", "accuracy", "Top-5 accuracy", "top5"),
    ("f1_macro", "f1", "F1 (macro)", "macro"),
    ("precision_macro", "precision", "Precision (macro)", "macro"),
    ("recall_macro", "recall", "Recall (macro)", "macro"),
    ("nll", "nll", "Negative log-likelihood", None),
    ("brier", "brier", "Brier score", None),
    ("ece", "ece", "Expected calibration error", "15 bins"),
)
#: the same for a multi-label model (sigmoid outputs): ranking (mAP) and the thresholded label sets
MODEL_INDEX_METRICS_MULTILABEL: tuple[tuple[str, str, str, str | None], ...] = (
    ("map_macro", "mAP", "mAP (macro)", "macro"),
    ("map_micro", "mAP", "mAP (micro)", "micro"),
    ("f1_macro", "f1", "F1 (macro, per-label thresholds)", "macro"),
    ("f1_micro", "f1", "F1 (micro, per-label thresholds)", "micro"),
    ("subset_accuracy", "accuracy", "Subset accuracy (exact label set)", "subset"),
    ("hamming_loss", "hamming_loss", "Hamming loss", None),
)


def _index_metrics(metrics: Mapping[str, Any]) -> tuple[tuple[str, str, str, str | None], ...]:
    return MODEL_INDEX_METRICS_MULTILABEL if metrics.get("multilabel") else MODEL_INDEX_METRICS


#: how many worst classes and most-confused pairs the limitations list
WORST_CLASSES = 3
CONFUSED_PAIRS = 5


def _model_id(ckpt: Mapping[str, Any]) -> str:
    cfg = ckpt["config"]
    return f"imgcls-{cfg['model']['name'].replace(':', '-')}-{cfg['data']['name']}"


def card_data(ckpt: Mapping[str, Any], metrics: Mapping[str, Any]) -> ModelCardData:
    """The YAML header: library, task, dataset and the ``model-index`` results of the evaluation in ``metrics``."""
    cfg = ckpt["config"]
    dataset = cfg["data"]["name"]
    split = metrics.get("split") or "test"
    results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            dataset_revision=(ckpt.get("data_fingerprint") or {}).get("sha256"),
            metric_type=metric_type,
            metric_name=name,
            metric_config=config,
            metric_value=float(metrics[key]),
        )
        for key, metric_type, name, config in _index_metrics(metrics)
        if metrics.get(key) is not None
    ]
    return ModelCardData(
        model_name=_model_id(ckpt),
        library_name="imgcls",
        pipeline_tag="image-classification",
        tags=["image-classification", "pytorch", "imgcls", cfg["model"]["name"]],
        datasets=[dataset],
        metrics=sorted({m[1] for m in _index_metrics(metrics)}),
        eval_results=results,
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("|", "\\|")


def _data_section(ckpt: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    cfg = ckpt["config"]["data"]
    fp = ckpt.get("data_fingerprint") or {}
    lines = [f"Dataset `{cfg['name']}`" + (f" from `{cfg['root']}`" if cfg.get("root") else "") + "."]
    if fp:
        lines.append(f"Data fingerprint ({fp.get('algorithm', 'sha256')}): `{fp.get('sha256')}`.")
        lines.append("")
        lines.append(
            _table(
                ["split", "images", "fingerprint"],
                [(n, s["images"], f"`{s.get('sha256', '')[:16]}`") for n, s in fp.get("splits", {}).items()],
            )
        )
    else:
        lines.append("Data fingerprint: not recorded (the checkpoint predates imgcls recording it).")
    lines.append("")
    lines.append(
        f"Splits: val fraction {cfg['val_fraction']}, test fraction {cfg['test_fraction']} (where the dataset has no "
        f"own split), split seed {cfg.get('split_seed')}"
        + (f", train capped at {cfg['subset']} images" if cfg.get("subset") else "")
        + "."
    )
    bad = summary.get("bad_files") or []
    if bad:
        lines.append(f"{len(bad)} image file(s) could not be used and were skipped (listed in summary.json).")
    return "\n".join(lines)


def _preprocess_section(ckpt: Mapping[str, Any]) -> str:
    p = ckpt["preprocess"]
    side, chans = p["image_size"], p["in_chans"]
    kind = "RGB" if chans == 3 else "grayscale"
    return (
        f"The model takes float32 tensors `[batch, {chans}, {side}, {side}]`: {kind} images resized to {side}x{side} "
        f"({p.get('interpolation', 'bilinear')}), scaled to 0..1, then normalised per channel with mean "
        f"`{[round(m, 4) for m in p['mean']]}` and std `{[round(s, 4) for s in p['std']]}`. "
        "`imgcls predict`, `imgcls serve` and `imgcls.evaluate.infer.Predictor` do all of this from any image file "
        "(other channel counts are converted, transparency is composited over white, 16-bit images scaled to 8 bits). "
        "The output is one logit per class, in the order of the class list above."
    )


def non_default_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted keys of a resolved config whose value differs from imgcls's defaults (run bookkeeping left out)."""
    defaults = flatten(to_dict(Config()))
    skip = ("run.", "data.root", "data.download", "data.num_workers")
    return {k: v for k, v in flatten(dict(config)).items() if not k.startswith(skip) and defaults.get(k, object()) != v}


def _recipe_section(ckpt: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    cfg = ckpt["config"]
    tr, opt, sched = cfg["training"], cfg["training"]["optimizer"], cfg["training"]["scheduler"]
    rows = [
        ("model", cfg["model"]["name"] + (" (pretrained)" if cfg["model"].get("pretrained") else "")),
        ("parameters", summary.get("params")),
        (
            "epochs",
            f"{summary.get('epochs_run', ckpt.get('epoch'))} of {tr['epochs']}"
            + (" (stopped early)" if summary.get("stopped_early") else ""),
        ),
        ("best epoch (checkpoint)", summary.get("best_epoch", ckpt.get("epoch"))),
        ("batch size", f"{cfg['data']['batch_size']} x {tr['accum_steps']} accumulation"),
        ("optimizer", f"{opt['name']}, lr {opt['lr']}, weight decay {opt['weight_decay']}"),
        ("schedule", f"{sched['name']}, warmup {sched['warmup_epochs']} epochs"),
        ("loss", f"{tr['loss']['name']}, label smoothing {tr['loss']['label_smoothing']}"),
        ("EMA", "on" if tr["ema"]["enabled"] else "off"),
        ("mixed precision", "on" if tr["amp"] else "off"),
        ("seed", cfg["run"]["seed"]),
        ("training time", f"{summary['seconds']:.0f} s on {summary.get('device')}" if summary.get("seconds") else None),
    ]
    changed = non_default_settings(cfg)
    settings = ", ".join(f"`{k}={v}`" for k, v in changed.items()) or "none (imgcls defaults)"
    return _table(["", ""], rows) + f"\n\nEvery setting that differs from imgcls's defaults: {settings}."


def _multilabel_metrics_section(metrics: Mapping[str, Any]) -> str:
    split, n = metrics.get("split") or "test", metrics.get("num_samples")
    rows = [(name, metrics.get(key)) for key, _, name, _ in _index_metrics(metrics) if metrics.get(key) is not None]
    per_class = [
        (name, v["ap"], v["precision"], v["recall"], v["f1"], v["threshold"], v["support"])
        for name, v in metrics["per_class"].items()
    ]
    tuned = "tuned per label on the validation split" if metrics.get("thresholds_tuned") else "0.5 for every label"
    return "\n\n".join(
        [
            f"On the {split} split ({n} images); a label is predicted when its probability reaches its threshold "
            f"({tuned}):",
            _table(["metric", "value"], rows),
            "Per label:",
            _table(["label", "AP", "precision", "recall", "F1", "threshold", "images"], per_class),
        ]
    )


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    if metrics.get("multilabel"):
        return _multilabel_metrics_section(metrics)
    split, n = metrics.get("split") or "test", metrics.get("num_samples")
    tta = metrics.get("tta") or 1
    rows = [(name, metrics.get(key)) for key, _, name, _ in MODEL_INDEX_METRICS if metrics.get(key) is not None]
    per_class = [
        (name, v["precision"], v["recall"], v["f1"], v.get("roc_auc"), v["support"])
        for name, v in metrics["per_class"].items()
    ]
    cal = metrics.get("calibration") or {}
    calibration = (
        f"Calibration: ECE {100 * metrics['ece']:.2f}% (15 equal-width bins), maximum calibration error "
        f"{100 * metrics['mce']:.2f}%, mean confidence minus accuracy {100 * cal.get('signed_gap', 0.0):+.2f} points "
        f"(positive: over-confident); verdict: **{metrics.get('calibration_verdict')}**."
    )
    return "\n\n".join(
        [
            f"On the {split} split ({n} images" + (f", TTA {tta} views" if tta > 1 else "") + "):",
            _table(["metric", "value"], rows),
            "Per class:",
            _table(["class", "precision", "recall", "F1", "ROC-AUC", "images"], per_class),
            calibration,
        ]
    )


def worst_classes(metrics: Mapping[str, Any], k: int = WORST_CLASSES) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` classes with the lowest F1 (ties: fewer images first), worst first."""
    items = sorted(metrics["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[1]["support"]))
    return items[:k]


def _multilabel_limitations(metrics: Mapping[str, Any], ckpt: Mapping[str, Any]) -> str:
    worst = sorted(metrics["per_class"].items(), key=lambda kv: (kv[1]["ap"], kv[1]["support"]))[:WORST_CLASSES]
    lines = [
        "- Weakest labels (AP): "
        + "; ".join(f"**{n}** {v['ap']:.3f} (F1 {v['f1']:.3f}, {v['support']} images)" for n, v in worst)
        + "."
    ]
    lines.append(
        f"- Subset accuracy {100 * float(metrics['subset_accuracy']):.1f}%: the share of images whose whole label "
        f"set is right; Hamming loss {float(metrics['hamming_loss']):.4f} of the label decisions are wrong."
    )
    side = ckpt["preprocess"]["image_size"]
    lines.append(
        f"- It knows only the {len(ckpt['classes'])} labels above; it saw images like the "
        f"`{ckpt['config']['data']['name']}` data at {side}x{side}, and images unlike them may score far lower."
    )
    return "\n".join(lines)


def _limitations_section(metrics: Mapping[str, Any], ckpt: Mapping[str, Any]) -> str:
    if metrics.get("multilabel"):
        return _multilabel_limitations(metrics, ckpt)
    lines = []
    worst = worst_classes(metrics)
    if worst:
        lines.append(
            "- Weakest classes (F1): "
            + "; ".join(
                f"**{n}** {v['f1']:.3f} (precision {v['precision']:.3f}, recall {v['recall']:.3f}, "
                f"{v['support']} images)"
                for n, v in worst
            )
            + "."
        )
    pairs = list(metrics.get("most_confused") or [])[:CONFUSED_PAIRS]
    if pairs:
        lines.append(
            "- Most confused (true -> predicted): "
            + "; ".join(
                f"{p['true']} -> {p['predicted']} {p['count']}x ({100 * p['fraction_of_true']:.1f}% of {p['true']})"
                for p in pairs
            )
            + "."
        )
    else:
        lines.append("- No mistakes on this split: it says little about harder images.")
    n, acc = metrics.get("num_samples") or 0, float(metrics["accuracy"])
    if n:
        se = math.sqrt(max(acc * (1 - acc), 0.0) / n)
        lines.append(
            f"- The accuracy is measured on {n} images: its sampling error alone is about ±{100 * se:.2f} points "
            "(one standard error); differences smaller than twice that are noise."
        )
    lines.append(f"- Calibration is {metrics.get('calibration_verdict')}: read the probabilities with that in mind.")
    side = ckpt["preprocess"]["image_size"]
    lines.append(
        f"- It knows only the {len(ckpt['classes'])} classes above and always answers one of them, also for images "
        f"of none; it saw images like the `{ckpt['config']['data']['name']}` data at {side}x{side}, and images unlike "
        "them (other sources, sizes, lighting) may score far lower."
    )
    return "\n".join(lines)


def _versions_section(ckpt: Mapping[str, Any]) -> str:
    versions = ckpt.get("versions")
    git = ckpt.get("git")
    if not versions:
        return (
            "Not recorded: the checkpoint predates imgcls recording versions (format < 3) or was not written by "
            "training."
        )
    rows = [(k, v) for k, v in versions.items()]
    if git:
        rows.append(("git commit", git["commit"] + (" (with uncommitted changes)" if git.get("dirty") else "")))
    else:
        rows.append(("git commit", "unknown (imgcls did not run from a git checkout)"))
    rows.append(("checkpoint format", ckpt.get("format")))
    rows.append(("checkpoint sha256", f"`{ckpt.get('sha256')}`" if ckpt.get("sha256") else None))
    return _table(["", "version"], rows)


def card_body(ckpt: Mapping[str, Any], metrics: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The Markdown sections of the card (everything below the YAML header)."""
    cfg = ckpt["config"]
    classes = list(ckpt["classes"])
    shown = ", ".join(f"`{c}`" for c in classes[:50]) + (" ..." if len(classes) > 50 else "")
    multilabel = bool(metrics.get("multilabel"))
    sections = [
        f"# {_model_id(ckpt)}",
        f"An image classifier ({cfg['model']['name']}) trained with imgcls on `{cfg['data']['name']}`: "
        + (
            f"it gives the labels (of {len(classes)}) present in an image, each with its probability."
            if multilabel
            else f"it gives one of {len(classes)} classes for an image, with probabilities."
        ),
        "## Task and classes",
        (
            f"Multi-label image classification (a sigmoid per label) over {len(classes)} labels: {shown}."
            if multilabel
            else f"Single-label image classification into {len(classes)} classes: {shown}."
        ),
        "## Data and splits",
        _data_section(ckpt, summary),
        "## Preprocessing: the input the model expects",
        _preprocess_section(ckpt),
        "## Training recipe",
        _recipe_section(ckpt, summary),
        "## Metrics",
        _metrics_section(metrics),
        "## Limitations seen in the evaluation",
        _limitations_section(metrics, ckpt),
        "## Versions",
        _versions_section(ckpt),
        "## How to use",
        "```bash\nimgcls predict RUN image.png      # RUN: the run folder, a checkpoint or models:/NAME@ALIAS\n"
        "imgcls serve RUN --port 8000\n```",
    ]
    return "\n\n".join(sections) + "\n"


def model_card(
    ckpt: Mapping[str, Any], metrics: Mapping[str, Any], summary: Mapping[str, Any] | None = None
) -> ModelCard:
    """The model card of checkpoint ``ckpt`` (a loaded checkpoint dict) evaluated as ``metrics`` (the evaluation's
    metrics.json), with the run's ``summary.json`` (training time, epochs) when there is one."""
    # the config as this imgcls reads it: keys added since the checkpoint was written get their defaults
    ckpt = {**ckpt, "config": to_dict(from_dict(ckpt["config"]))}
    data = card_data(ckpt, metrics)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(ckpt, metrics, summary or {})}")


def card_html(card: ModelCard) -> str:
    """The card as HTML for the evaluation report: the sections rendered (CommonMark with tables), the YAML header
    collapsed below them."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(card.text)
    header = html.escape(card.data.to_yaml())
    return (
        f"<div class='model-card'>{body}</div>\n<details><summary>Metadata header (YAML, Hugging Face "
        f"model-index)</summary>\n<pre>{header}</pre>\n</details>"
    )
