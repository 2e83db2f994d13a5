"""``imgcls eval``: evaluate a checkpoint on a split of the data it was trained on, through the shared
``evaluate()``, and print accuracy, top-k, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from imgcls.config import ConfigError, from_dict, parse_override, set_value
from imgcls.data.build import build_eval_loader
from imgcls.data.loaders import PreprocessInfo
from imgcls.data.transforms import build_eval_transform
from imgcls.engine.loop import EvalResult, evaluate
from imgcls.evaluate.infer import load_model


def run_eval(
    checkpoint: str | Path,
    *,
    split: str = "test",
    overrides: Sequence[str] = (),
    tta: int = 1,
    ensemble: Sequence[str] = (),
    batch_size: int | None = None,
    out_dir: str | Path | None = None,
    report: bool = True,
    device: str = "cpu",
    quiet: bool = False,
) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate ``checkpoint`` (plus ``ensemble`` members) on ``split``; write ``eval/metrics.json``.

    Overrides may only touch ``data.*`` (e.g. a new ``data.root``): the model and preprocessing come from the
    checkpoint. Returns the result and the metrics dict written.
    """
    from imgcls.engine.train import build_splits

    model, ckpt = load_model(checkpoint, device)
    cfg = from_dict(ckpt["config"])
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("data."):
            raise ConfigError(f"eval only takes data.* overrides (the model comes from the checkpoint), got '{key}'")
        set_value(cfg, key, value)
    splits = build_splits(cfg)
    view = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if view is None or len(view) == 0:
        raise ConfigError(f"the dataset has no '{split}' split for this config; try --split val")
    pre = PreprocessInfo(**ckpt["preprocess"])
    tf = build_eval_transform(image_size=pre.image_size, resize=pre.resize, in_chans=pre.in_chans, mean=pre.mean,
                              std=pre.std, interpolation=pre.interpolation)  # fmt: skip
    loader = build_eval_loader(view, tf, batch_size=batch_size or 2 * cfg.data.batch_size)
    models: Any = model
    if ensemble:
        members = [load_model(p, device)[0] for p in ensemble]
        models = [model, *members]
    result = evaluate(models, loader, device=torch.device(device), num_classes=len(ckpt["classes"]), tta=tta,
                      return_outputs=True)  # fmt: skip
    classes = list(ckpt["classes"])
    metrics: dict[str, Any] = {
        "checkpoint": ckpt["path"], "split": split, "num_samples": result.num_samples, "accuracy": result.acc,
        **{f"top{k}": v for k, v in result.topk.items()}, "nll": result.loss, "tta": tta,
        "ensemble": [str(p) for p in ensemble],
        "per_class_accuracy": dict(zip(classes, result.per_class_acc, strict=True)),
        "confusion_matrix": result.confusion.tolist(), "classes": classes,
    }  # fmt: skip
    out = Path(out_dir) if out_dir else Path(ckpt["path"]).parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if not quiet:
        print_eval(result, classes, split)
        print(f"metrics written to {out / 'metrics.json'}")
    return result, metrics


def print_eval(result: EvalResult, classes: list[str], split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    tops = "  ".join(f"top-{k} {v:.4f}" for k, v in result.topk.items())
    console.print(f"[bold]{split}[/bold]: {result.num_samples} images  accuracy {result.acc:.4f}  {tops}  "
                  f"NLL {result.loss:.4f}")  # fmt: skip
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("support", justify="right")
    support = result.confusion.sum(1).tolist()
    for name, acc, n in zip(classes, result.per_class_acc, support, strict=True):
        per_class.add_row(name, f"{acc:.4f}", str(n))
    console.print(per_class)
    if len(classes) <= 20:
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for name in classes:
            cm.add_column(name[:8], justify="right")
        for name, row in zip(classes, result.confusion.tolist(), strict=True):
            cm.add_row(name[:12], *(str(v) for v in row))
        console.print(cm)
