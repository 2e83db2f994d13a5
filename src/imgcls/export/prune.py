"""Magnitude pruning of a trained checkpoint, optional fine-tuning, and a new self-describing checkpoint.

Two methods from ``torch.nn.utils.prune``:

- unstructured (default): global L1 pruning over the weights of every ``Conv2d`` and ``Linear`` layer, so that
  ``amount`` of all those weights become zero, the smallest in absolute value first, wherever they are;
- structured: ``ln_structured`` on each ``Conv2d``: ``amount`` of its output channels (the filters with the smallest
  L2 norm) become zero. The tensors keep their shapes (a later export can drop the channels); the zeros are what a
  structured-sparsity runtime or a channel-removing rewrite would use.

While fine-tuning, the masks stay attached (``weight = weight_orig * mask``), so pruned weights stay zero; afterwards
``prune.remove`` makes the zeros permanent and the state dict has plain ``weight`` entries again, loadable by
:func:`imgcls.evaluate.infer.load_model` like any checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from imgcls.config import Config, from_dict
from imgcls.data.build import build_loaders, build_splits
from imgcls.data.datasets import Splits
from imgcls.data.loaders import Loaders, PreprocessInfo, set_epoch
from imgcls.engine.build import class_weights_for, load_model
from imgcls.engine.checkpoint import save_checkpoint
from imgcls.engine.loop import OptimState, TrainOptions, evaluate, train_one_epoch
from imgcls.engine.losses import build_loss
from imgcls.engine.optim import build_optimizer

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module, *, structured: bool) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers whose ``weight`` is pruned: convs (structured) or convs and linears."""
    kinds = (nn.Conv2d,) if structured else PRUNABLE
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


def apply_pruning(model: nn.Module, amount: float, *, structured: bool = False, norm: float = 2) -> list[nn.Module]:
    """Attach pruning masks to ``model`` (in place). Returns the pruned modules.

    Args:
        model: the model.
        amount: fraction in [0, 1): of all prunable weights (unstructured) or of each conv's output channels.
        structured: prune whole conv output channels by their L``norm`` instead of single weights globally.
        norm: the norm that ranks channels (structured only).
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    layers = prunable_layers(model, structured=structured)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {'Conv2d' if structured else 'Conv2d/Linear'} layer to prune")
    modules = [m for _, m in layers]
    if structured:
        for m in modules:
            prune.ln_structured(m, name="weight", amount=amount, n=norm, dim=0)
    else:
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount)
    return modules


def make_permanent(modules: list[nn.Module]) -> None:
    """Fold the masks into the weights and drop the re-parametrisation (``weight_orig``/``weight_mask``)."""
    for m in modules:
        if prune.is_pruned(m):
            prune.remove(m, "weight")


def sparsity(model: nn.Module, *, structured: bool = False) -> dict[str, float]:
    """Fraction of zeros: in the prunable weights, in all parameters, and (conv) output channels that are all zero."""
    layers = prunable_layers(model, structured=structured)
    w_zero = sum(int((m.weight == 0).sum()) for _, m in layers)
    w_total = sum(m.weight.numel() for _, m in layers)
    p_zero = sum(int((p == 0).sum()) for p in model.parameters())
    p_total = sum(p.numel() for p in model.parameters())
    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ch_zero = sum(int((m.weight.flatten(1).abs().sum(1) == 0).sum()) for m in convs)
    ch_total = sum(m.weight.shape[0] for m in convs)
    return {
        "weights": w_zero / max(w_total, 1),
        "parameters": p_zero / max(p_total, 1),
        "conv_channels": ch_zero / max(ch_total, 1),
        "pruned_weights": float(w_zero),
        "prunable_weights": float(w_total),
    }


@dataclass
class PruneResult:
    path: Path
    amount: float
    structured: bool
    finetune_epochs: int
    sparsity: dict[str, float]
    eval_split: str
    acc_before: float | None
    acc_pruned: float | None  # right after pruning, before fine-tuning
    acc_after: float | None  # after fine-tuning (= acc_pruned without fine-tuning)
    epochs: list[dict[str, float]] = field(default_factory=list)

    def lines(self) -> list[str]:
        kind = "structured (conv channels)" if self.structured else "global unstructured L1"
        s = self.sparsity
        out = [
            f"pruned {self.amount:.0%} {kind}: weight sparsity {s['weights']:.2%} of "
            f"{int(s['prunable_weights']):,} prunable weights, {s['parameters']:.2%} of all parameters, "
            f"{s['conv_channels']:.2%} of conv channels all zero"
        ]
        if self.acc_before is not None:
            acc = f"{self.eval_split} accuracy: before {self.acc_before:.4f}, pruned {self.acc_pruned:.4f}"
            if self.finetune_epochs:
                acc += f", after {self.finetune_epochs} fine-tuning epoch(s) {self.acc_after:.4f}"
            out.append(acc)
        out.append(f"saved {self.path}")
        return out


def default_prune_path(checkpoint_path: str | Path, amount: float, structured: bool) -> Path:
    p = Path(checkpoint_path)
    stem = p.name.removesuffix(".pt").removesuffix(".pth")
    return p.with_name(f"{stem}-pruned{round(100 * amount)}{'-structured' if structured else ''}.pt")


def prune_checkpoint(
    checkpoint: str | Path,
    *,
    amount: float = 0.3,
    structured: bool = False,
    finetune_epochs: int = 0,
    finetune_lr: float | None = None,
    out: str | Path | None = None,
    device: str | torch.device = "cpu",
    evaluate_models: bool = True,
    log: Any = None,
) -> PruneResult:
    """``imgcls prune``: prune a checkpoint's model, optionally fine-tune it, and save a new checkpoint.

    Args:
        checkpoint: a checkpoint file or run folder.
        amount: fraction to prune (see :func:`apply_pruning`).
        structured: prune conv output channels instead of single weights.
        finetune_epochs: epochs of training with the masks on, with the checkpoint's own config and loaders.
        finetune_lr: peak lr of the fine-tuning (default: a tenth of the config's lr), decayed to 0 by a cosine.
        out: output checkpoint (default: ``<name>-pruned<percent>[-structured].pt`` beside the input).
        device: where to fine-tune and evaluate.
        evaluate_models: report accuracy before and after on the test split (val when there is none).
        log: progress messages (e.g. ``print``).

    Returns:
        A :class:`PruneResult` with sparsity and accuracies.
    """

    say = log or (lambda _msg: None)
    device = torch.device(device)
    model, ckpt = load_model(checkpoint, device)
    cfg = from_dict(ckpt["config"])
    loaders = splits = None
    if evaluate_models or finetune_epochs > 0:
        splits = build_splits(cfg)
        loaders = build_loaders(cfg, splits, PreprocessInfo(**ckpt["preprocess"]), device=device)
    eval_loader, split = _eval_loader(loaders)

    def accuracy() -> float | None:
        if not evaluate_models or eval_loader is None:
            return None
        return evaluate(model, eval_loader, device=device, num_classes=len(ckpt["classes"])).acc

    acc_before = accuracy()
    modules = apply_pruning(model, amount, structured=structured)
    acc_pruned = accuracy()
    if acc_before is not None and acc_pruned is not None:
        say(f"pruned {amount:.0%}: {split} accuracy {acc_before:.4f} -> {acc_pruned:.4f}")
    epochs: list[dict[str, float]] = []
    if finetune_epochs > 0:
        assert loaders is not None and splits is not None
        for row in _finetune(model, cfg, splits, loaders, epochs=finetune_epochs, lr=finetune_lr, device=device):
            if evaluate_models and eval_loader is not None:
                row[f"{split}_acc"] = accuracy()  # type: ignore[assignment]
            epochs.append(row)
            say(f"fine-tune epoch {row['epoch']}/{finetune_epochs}: " + _format_row(row))
    make_permanent(modules)
    model.eval()
    acc_after = accuracy() if finetune_epochs > 0 else acc_pruned
    out_path = Path(out) if out is not None else default_prune_path(ckpt["path"], amount, structured)
    result = PruneResult(
        path=out_path,
        amount=amount,
        structured=structured,
        finetune_epochs=finetune_epochs,
        sparsity=sparsity(model, structured=structured),
        eval_split=split,
        acc_before=acc_before,
        acc_pruned=acc_pruned,
        acc_after=acc_after,
        epochs=epochs,
    )
    save_checkpoint(_pruned_checkpoint(ckpt, model, result), out_path)
    return result


def _finetune(
    model: nn.Module,
    cfg: Config,
    splits: Splits,
    loaders: Loaders,
    *,
    epochs: int,
    lr: float | None,
    device: torch.device,
) -> Iterator[dict[str, float]]:
    """Train the pruned model (masks on) with its own config for ``epochs``; yields each epoch's metrics row.

    The peak lr (default: a tenth of the config's) decays to 0 by a cosine over the whole fine-tuning.
    """
    lr = lr if lr is not None else cfg.training.optimizer.lr * 0.1
    optimizer = _scale_lr(build_optimizer(model, cfg.training.optimizer), lr / cfg.training.optimizer.lr)
    class_weights = class_weights_for(splits).to(device) if cfg.training.loss.class_weights == "balanced" else None
    loss_fn = build_loss(cfg.training.loss, class_weights).to(device)
    opt = OptimState(optimizer, lr_at=_cosine_to_zero(max(1, len(loaders.train) * epochs)))
    opts = TrainOptions(device=device, clip_grad_norm=cfg.training.clip_grad_norm, log_interval=0)
    for epoch in range(epochs):
        set_epoch(loaders.train, 10_000 + epoch)  # a different order from the original training's epochs
        stats = train_one_epoch(model, loaders.train, opt, loss_fn, opts)
        yield {"epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.acc}


def _eval_loader(loaders: Any) -> tuple[Any, str]:
    """(loader, split name) that accuracy is measured on: test, else val; (None, "") without loaders."""
    if loaders is None:
        return None, ""
    if loaders.test is not None:
        return loaders.test, "test"
    return loaders.val, "val"


def _scale_lr(optimizer: torch.optim.Optimizer, scale: float) -> torch.optim.Optimizer:
    """Multiply every group's ``initial_lr`` by ``scale``, keeping per-group multipliers (backbone_lr_mult)."""
    for group in optimizer.param_groups:
        group["initial_lr"] *= scale
    return optimizer


def _cosine_to_zero(total_steps: int) -> Callable[[int], float]:
    """lr multiplier of step ``s``: a half cosine from 1 to 0 over ``total_steps`` (0 afterwards)."""
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))


def _format_row(row: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")


def _pruned_checkpoint(ckpt: dict[str, Any], model: nn.Module, result: PruneResult) -> dict[str, Any]:
    """The source checkpoint with the pruned weights, a ``pruning`` record and no training state."""
    split = result.eval_split
    pruning = {
        "amount": result.amount,
        "method": "ln_structured" if result.structured else "global_l1_unstructured",
        "finetune_epochs": result.finetune_epochs,
        "source": str(ckpt["path"]),
        "sparsity": result.sparsity,
        "acc_before": result.acc_before,
        "acc_after": result.acc_after,
        "eval_split": split,
    }
    metrics = ckpt.get("metrics")
    if split:
        metrics = {**(metrics or {}), f"{split}_acc_pruned": result.acc_after}
    new = {k: v for k, v in ckpt.items() if k != "path"}
    new.update(
        model={k: v.detach().cpu() for k, v in model.state_dict().items()},
        optimizer=None,
        scaler=None,
        ema=None,
        weights="pruned",
        pruning=pruning,
        metrics=metrics,
    )
    return new
