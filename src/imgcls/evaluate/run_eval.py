"""``imgcls eval``: evaluate a checkpoint on a split of the data it was trained on, through the shared ``evaluate()``.

Plain, TTA (``tta`` views: identity, flip, shifted crops; probabilities averaged) and ensembles all run through
:func:`imgcls.engine.loop.evaluate`. Ensembles come in two kinds:

- ``ensemble_mode="probs"``: the checkpoints' class probabilities are averaged (any architectures, same classes);
- ``ensemble_mode="weights"``: the checkpoints' weights are averaged into one model (same architecture, e.g. best and
  last of one run, or several epochs: a cheap "model soup" / SWA). With a single checkpoint, the run's ``best.pt``
  and ``last.pt`` are averaged. BatchNorm statistics are averaged too (not re-estimated).

The metrics of :mod:`imgcls.evaluate.metrics` go to ``eval/metrics.json`` and, unless ``report=False``, the
self-contained ``eval/report.html`` of :mod:`imgcls.evaluate.report`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from imgcls.config import ConfigError
from imgcls.data.build import build_eval_loader
from imgcls.data.datasets import SplitView
from imgcls.engine.build import load_model, load_split
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.loop import MAX_TTA_VIEWS, EvalResult, evaluate
from imgcls.engine.runs import summary_near
from imgcls.evaluate.metrics import compute_metrics, compute_multilabel_metrics
from imgcls.evaluate.model_card import card_html, model_card
from imgcls.evaluate.multilabel_report import write_multilabel_report
from imgcls.evaluate.report import write_report

ENSEMBLE_MODES = ("probs", "weights")


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (integer buffers such as BN's step counter: the first's).

    Raises:
        ConfigError: if the state dicts do not have the same keys and shapes (different architectures).
    """
    if not states:
        raise ConfigError("no state dicts to average")
    first = states[0]
    for i, s in enumerate(states[1:], start=1):
        if s.keys() != first.keys() or any(s[k].shape != v.shape for k, v in first.items()):
            raise ConfigError(
                f"checkpoint {i} has other weights than the first: weight averaging needs one "
                "architecture (use --ensemble-mode probs)"
            )
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def weight_average_paths(checkpoint: str | Path, ensemble: Sequence[str | Path]) -> list[Path]:
    """The checkpoints to weight-average: ``checkpoint`` and ``ensemble``, or (no ensemble) the run's best and last."""
    first = Path(load_checkpoint(checkpoint)["path"])
    if ensemble:
        return [first, *(Path(load_checkpoint(p)["path"]) for p in ensemble)]
    folder = first.parent
    paths = [p for p in (folder / "best.pt", folder / "last.pt") if p.is_file()]
    if len(paths) < 2:
        raise ConfigError(
            f"--ensemble-mode weights with one checkpoint averages best.pt and last.pt of its run, "
            f"but {folder} does not have both; list the checkpoints with --ensemble"
        )
    return paths


def build_ensemble(
    model: nn.Module, ckpt: dict[str, Any], ensemble: Sequence[str | Path], mode: str, device: str | torch.device
) -> tuple[nn.Module | list[nn.Module], list[str]]:
    """``model`` plus ``ensemble`` as ``evaluate()`` takes them: a list (probability averaging) or one averaged model.

    Returns:
        (model or list of models, paths of the members).
    """
    if mode not in ENSEMBLE_MODES:
        raise ConfigError(f"ensemble mode must be one of {', '.join(ENSEMBLE_MODES)}, got '{mode}'")
    classes = list(ckpt["classes"])
    if mode == "weights":
        paths = weight_average_paths(ckpt["path"], ensemble)
        members = [load_checkpoint(p) for p in paths]
        for p, m in zip(paths, members, strict=True):
            if list(m["classes"]) != classes:
                raise ConfigError(f"{p} was trained on other classes than {ckpt['path']}")
        model.load_state_dict(average_state_dicts([m["model"] for m in members]))
        return model.eval(), [str(p) for p in paths]
    if not ensemble:
        return model, [ckpt["path"]]
    models = [model]
    for p in ensemble:
        member, member_ckpt = load_model(p, device)
        if list(member_ckpt["classes"]) != classes:
            raise ConfigError(f"{p} was trained on other classes than {ckpt['path']}: cannot average probabilities")
        models.append(member)
    return models, [ckpt["path"], *(load_checkpoint(p)["path"] for p in ensemble)]


def _card_html(checkpoint: dict[str, Any] | None, models: Any, metrics: dict[str, Any]) -> str | None:
    """The report's model-card section: for one known checkpoint (an ensemble has no single card)."""
    if checkpoint is None or isinstance(models, list):
        return None
    return card_html(model_card(checkpoint, metrics, summary_near(checkpoint["path"])))


def evaluate_split(
    models: nn.Module | list[nn.Module],
    view: SplitView,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    classes: Sequence[str],
    device: str | torch.device = "cpu",
    tta: int = 1,
    batch_size: int = 256,
    out_dir: str | Path | None = None,
    report: bool = True,
    run_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    title: str = "Evaluation report",
    outputs: EvalResult | None = None,
    config: dict[str, Any] | None = None,
    multilabel: bool = False,
    thresholds: Sequence[float] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate on a split in its stored order, compute every metric, write ``metrics.json`` and ``report.html``.

    Shared by ``imgcls eval`` and the report at the end of training.

    Args:
        models: a model or a list (probabilities averaged).
        view: the split; outputs stay in its order so that gallery images can be looked up.
        transform: uint8 image -> model input.
        classes: class names.
        device: where to run.
        tta: number of test-time views (1 = off).
        batch_size: evaluation batch size.
        out_dir: where to write (None: write nothing).
        report: also write the HTML report.
        run_dir: the run folder (for training curves in the report), if known.
        meta: extra fields for metrics.json and the report header (checkpoint, split, ...).
        title: the report's title.
        outputs: an evaluation of ``models`` on ``view`` already made, in the view's order and with outputs (the
            test pass at the end of training): used as it is, so the report and the run's summary cannot disagree.
        config: the resolved config of the checkpoint, for the report's config section (default: the run folder's
            ``config.yaml``).
        multilabel: sigmoid outputs and multi-hot targets: the multi-label metrics
            (:func:`~imgcls.evaluate.metrics.compute_multilabel_metrics`) and report.
        thresholds: multi-label: the per-label thresholds (the checkpoint's, tuned on val); None: 0.5.
        checkpoint: the loaded checkpoint of ``models`` (a single model): the report then has its model card.

    Returns:
        (the EvalResult with outputs, the metrics dict).
    """
    device = torch.device(device)
    if outputs is not None and outputs.targets is not None and len(outputs.targets) == len(view):
        result = outputs
    else:
        loader = build_eval_loader(view, transform, batch_size=batch_size)
        result = evaluate(
            models,
            loader,
            device=device,
            num_classes=len(classes),
            tta=tta,
            return_outputs=True,
            multilabel=multilabel,
            thresholds=thresholds,
        )
    assert result.log_probs is not None and result.targets is not None
    probs = result.log_probs.double().exp()
    metrics: dict[str, Any] = {**(meta or {}), "tta": tta}
    if multilabel:
        metrics.update(compute_multilabel_metrics(probs, result.targets, classes, thresholds=thresholds))
        metrics["bce"] = result.loss
        metrics["eval_seconds"] = result.seconds
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
            if report:
                card = _card_html(checkpoint, models, metrics)
                write_multilabel_report(
                    out / "report.html", metrics=metrics, run_dir=run_dir, title=title, config=config, card=card
                )
        return result, metrics
    metrics.update(compute_metrics(probs, result.targets, classes))
    metrics["nll"] = result.loss  # the evaluate() path's own number (the same up to float rounding)
    metrics["per_class_accuracy"] = {name: v["recall"] for name, v in metrics["per_class"].items()}
    metrics["eval_seconds"] = result.seconds
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if report:
            first = models[0] if isinstance(models, list) else models
            card = _card_html(checkpoint, models, metrics)
            write_report(
                out / "report.html",
                metrics=metrics,
                probs=probs,
                targets=result.targets,
                view=view,
                transform=transform,
                model=first,
                run_dir=run_dir,
                device=device,
                title=title,
                config=config,
                card=card,
            )
    return result, metrics


def run_eval(
    checkpoint: str | Path,
    *,
    split: str = "test",
    overrides: Sequence[str] = (),
    tta: int = 1,
    ensemble: Sequence[str] = (),
    ensemble_mode: str = "probs",
    batch_size: int | None = None,
    out_dir: str | Path | None = None,
    report: bool = True,
    device: str = "cpu",
    quiet: bool = False,
) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate ``checkpoint`` (plus ``ensemble`` members) on ``split``; write ``eval/metrics.json`` and the report.

    Args:
        checkpoint: a checkpoint file or a run folder (its best.pt).
        split: train, val or test (as split at training time).
        overrides: ``data.*`` overrides (e.g. ``data.root=...`` when the data moved).
        tta: test-time augmentation views (1 = off).
        ensemble: more checkpoints.
        ensemble_mode: "probs" (average probabilities) or "weights" (average weights; with no ``ensemble``: the
            run's best and last).
        batch_size: default twice the training batch size.
        out_dir: default ``<run>/eval``.
        report: write ``report.html`` too.
        device: where to run.
        quiet: no console output.

    Returns:
        The EvalResult (with ``log_probs``/``targets``) and the metrics dict written.

    Raises:
        ConfigError: ``tta`` outside 1..MAX_TTA_VIEWS (checked before anything is loaded), bad overrides or split.
    """
    if not 1 <= tta <= MAX_TTA_VIEWS:
        raise ConfigError(f"--tta {tta}: must be between 1 (off) and {MAX_TTA_VIEWS} views")
    model, ckpt, view, tf = load_split(checkpoint, split=split, overrides=overrides, device=device)
    cfg = ckpt["config"]
    models, members = build_ensemble(model, ckpt, ensemble, ensemble_mode, device)
    classes = list(ckpt["classes"])
    # a model name with published weights has no run folder: its eval folder goes into the working directory
    published = bool(ckpt.get("published"))
    run_dir = Path("eval-" + ckpt["path"].replace(":", "_")) if published else Path(ckpt["path"]).parent.parent
    is_ensemble = bool(ensemble) or ensemble_mode == "weights"
    meta = {
        "checkpoint": ckpt["path"],
        "split": split,
        "model": cfg["model"]["name"],
        "dataset": cfg["data"]["name"],
        "ensemble": [str(p) for p in ensemble],
        "ensemble_mode": ensemble_mode if is_ensemble else None,
        "members": members,
    }
    out = Path(out_dir) if out_dir else run_dir if published else run_dir / "eval"
    result, metrics = evaluate_split(
        models,
        view,
        tf,
        classes=classes,
        device=device,
        tta=tta,
        batch_size=batch_size or 2 * int(cfg["data"]["batch_size"]),
        out_dir=out,
        report=report,
        run_dir=run_dir if (run_dir / "metrics.csv").is_file() else None,
        meta=meta,
        title=f"{cfg['model']['name']} on {cfg['data']['name']} ({split})",
        config=cfg,
        multilabel=bool(ckpt.get("multilabel")),
        thresholds=ckpt.get("thresholds"),
        checkpoint=None if is_ensemble else ckpt,
    )
    if not quiet:
        if ckpt.get("multilabel"):
            print_multilabel_eval(metrics, split)
        else:
            print_eval(result, classes, split, metrics)
        print(f"metrics written to {out / 'metrics.json'}")
        if report:
            print(f"report written to {out / 'report.html'}")
    return result, metrics


def print_eval(result: EvalResult, classes: list[str], split: str, metrics: dict[str, Any] | None = None) -> None:
    """Summary line, per-class table (precision/recall/F1/AUC when ``metrics`` is given) and confusion matrix."""
    console = Console(width=160)
    tops = "  ".join(f"top-{k} {v:.4f}" for k, v in result.topk.items())
    tta = (metrics or {}).get("tta") or 1
    views = f" (TTA {tta} views)" if tta > 1 else ""
    console.print(
        f"[bold]{split}{views}[/bold]: {result.num_samples} images  accuracy {result.acc:.4f}  {tops}  NLL "
        f"{result.loss:.4f}"
    )
    if metrics is not None:
        auc = metrics.get("roc_auc_macro")
        console.print(
            f"macro F1 {metrics['f1_macro']:.4f}  weighted F1 {metrics['f1_weighted']:.4f}  "
            f"ROC-AUC (ovr, macro) {auc if auc is None else f'{auc:.4f}'}  ECE {metrics['ece']:.4f} "
            f"({metrics['calibration_verdict']})  Brier {metrics['brier']:.4f}"
        )
    per_class = Table(title="per-class metrics")
    per_class.add_column("class")
    cols = ["precision", "recall", "f1", "roc_auc"] if metrics is not None else ["accuracy"]
    for c in cols:
        per_class.add_column(c, justify="right")
    per_class.add_column("support", justify="right")
    support = result.confusion.sum(1).tolist()
    absent = sum(1 for n in support if n == 0)
    if absent:  # e.g. ImageNet's 1000 classes, of which an ImageFolder holds a few
        per_class.caption = f"{absent} of the {len(classes)} classes have no image in the split and are not listed"
    for i, name in enumerate(classes):
        if absent and support[i] == 0:
            continue
        if metrics is not None:
            pc = metrics["per_class"][name]
            values = [pc[c] for c in cols]
        else:
            values = [result.per_class_acc[i]]
        per_class.add_row(name, *("-" if v is None else f"{v:.4f}" for v in values), str(support[i]))
    console.print(per_class)
    if len(classes) <= 20:
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for name in classes:
            cm.add_column(name[:8], justify="right")
        for name, row in zip(classes, result.confusion.tolist(), strict=True):
            cm.add_row(name[:12], *(str(v) for v in row))
        console.print(cm)


def print_multilabel_eval(metrics: dict[str, Any], split: str) -> None:
    """Summary lines and the per-class table (AP, F1, precision, recall, threshold, support) of a multi-label model."""
    console = Console(width=160)
    tta = metrics.get("tta") or 1
    views = f" (TTA {tta} views)" if tta > 1 else ""
    at = "tuned thresholds" if metrics.get("thresholds_tuned") else "threshold 0.5"
    console.print(
        f"[bold]{split}{views}[/bold]: {metrics['num_samples']} images  mAP {metrics['map_macro']:.4f} (micro "
        f"{metrics['map_micro']:.4f})  at the {at}: F1 macro {metrics['f1_macro']:.4f} micro {metrics['f1_micro']:.4f}"
        f"  subset accuracy {metrics['subset_accuracy']:.4f}  Hamming loss {metrics['hamming_loss']:.4f}"
    )
    table = Table(title="per-class metrics")
    table.add_column("class")
    cols = ["ap", "f1", "precision", "recall", "threshold"]
    for c in cols:
        table.add_column(c, justify="right")
    table.add_column("support", justify="right")
    for name, pc in metrics["per_class"].items():
        table.add_row(name, *("-" if pc[c] is None else f"{pc[c]:.4f}" for c in cols), str(pc["support"]))
    console.print(table)
