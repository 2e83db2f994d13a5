"""Learning-rate tools: draw the configured schedule (``imgcls lr-plot``) and run an LR range test (``imgcls lr-find``).

``lr-plot`` needs no training: the schedule is a pure function of the step (:mod:`imgcls.engine.schedules`), so the
curve is exactly what :func:`imgcls.engine.train.train` will apply.

``lr-find`` is Smith's LR range test as popularised by fastai: train for ``num_steps`` optimizer steps while the lr
grows exponentially from ``start_lr`` to ``end_lr``, record the loss, smooth it with a bias-corrected exponential
moving average, stop once it diverges, and suggest the lr where the smoothed loss falls fastest (the most negative
slope against log lr). The model's weights, buffers and optimizer state are restored afterwards.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from imgcls.config import Config
from imgcls.data.build import build_splits
from imgcls.engine.build import check_config, class_weights_for, seed_everything
from imgcls.engine.distributed import DistInfo, select_device
from imgcls.engine.loop import autocast_context
from imgcls.engine.losses import build_loss
from imgcls.engine.optim import build_optimizer
from imgcls.engine.schedules import lr_curve, warmup_steps_for
from imgcls.engine.train import build_data_and_model
from imgcls.plotting import save_figure

# --------------------------------------------------------------------------------------------------------------------
# lr-plot
# --------------------------------------------------------------------------------------------------------------------


def default_steps_per_epoch(cfg: Config) -> int:
    """Optimizer steps per epoch as the runner computes them: train-split size, batch size, accumulation.

    Builds the dataset's splits (cheap for in-memory datasets) to learn the train size. Mirrors the loader's
    ``drop_last`` rule (full batches only when there is more than one batch) in a single process.
    """
    n = len(build_splits(cfg).train)
    bs = cfg.data.batch_size
    batches = n // bs if n > bs else 1
    return max(1, -(-batches // cfg.training.accum_steps))


def schedule_lrs(cfg: Config, steps_per_epoch: int) -> list[float]:
    """The lr of the first parameter group at every optimizer step of the run (``plateau``: as if never reduced)."""
    total = steps_per_epoch * cfg.training.epochs
    base = cfg.training.optimizer.lr
    return [base * m for m in lr_curve(cfg.training.scheduler, total_steps=total, steps_per_epoch=steps_per_epoch)]


def lr_plot(cfg: Config, out: str | Path, steps_per_epoch: int | None = None) -> Path:
    """Write a PNG of the learning rate against the epoch for ``cfg``'s optimizer and schedule.

    Args:
        cfg: the resolved config (``training.optimizer.lr``, ``training.scheduler.*``, ``training.epochs``).
        out: the PNG path to write (folders are created).
        steps_per_epoch: optimizer steps per epoch (default: from the dataset size, batch size and accumulation,
            see :func:`default_steps_per_epoch`).

    Returns:
        The path written.
    """
    check_config(cfg)
    spe = steps_per_epoch or default_steps_per_epoch(cfg)
    lrs = schedule_lrs(cfg, spe)
    sched = cfg.training.scheduler
    fig = Figure(figsize=(7, 4), dpi=120)  # a plain Figure (Agg canvas), never pyplot: no global backend state
    ax = fig.subplots()
    epochs = np.arange(len(lrs)) / spe
    ax.plot(epochs, lrs, lw=1.5)
    warm = warmup_steps_for(sched, total_steps=len(lrs), steps_per_epoch=spe)
    if warm > 0:
        ax.axvline(warm / spe, color="grey", ls=":", lw=1, label=f"end of warmup ({warm / spe:g} epochs)")
        ax.legend(loc="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    note = " (drawn without plateau reductions)" if sched.name == "plateau" else ""
    ax.set_title(
        f"{sched.name} schedule, {cfg.training.optimizer.name} lr {cfg.training.optimizer.lr:g}, "
        f"{cfg.training.epochs} epochs x {spe} steps{note}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


# --------------------------------------------------------------------------------------------------------------------
# lr-find
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LrFindResult:
    """The sweep: lr and raw / smoothed loss per step, the suggestion, and the plot (if one was written)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float | None
    diverged: bool
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr-find: the training loader is empty")


def zero_lag_smooth(values: list[float], beta: float) -> list[float]:
    """A forward then backward bias-corrected EMA: as smooth as an EMA, but without its lag. The online EMA that
    decides when the sweep has diverged trails the raw loss by about ``1 / (1 - beta)`` steps (with fastai's 0.98
    over a 100-step sweep, 50 steps: four decades of lr), which put the steepest descent past the raw loss's
    minimum; the suggestion is judged on this curve instead."""

    def ema(xs: list[float]) -> list[float]:
        out, avg = [], 0.0
        for i, v in enumerate(xs):
            avg = beta * avg + (1 - beta) * v
            out.append(avg / (1 - beta ** (i + 1)))
        return out

    return ema(ema(values)[::-1])[::-1]


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 5, skip_end: int = 3) -> float | None:
    """The lr at the steepest descent of the smoothed loss against log10(lr), before its minimum, ignoring the noisy
    ends.

    Returns None when fewer than 3 points remain after skipping.
    """
    lo, hi = skip_start, len(smoothed) - skip_end
    if hi - lo < 3:
        lo, hi = 0, len(smoothed)
    if hi - lo < 3:
        return None
    hi = max(lo + 3, min(hi, int(np.argmin(smoothed)) + 1))  # a descent, not the climb after the minimum
    x = np.log10(np.asarray(lrs[lo:hi], dtype=np.float64))
    y = np.asarray(smoothed[lo:hi], dtype=np.float64)
    slope = np.gradient(y, x)
    return float(lrs[lo + int(np.argmin(slope))])


def _sweep_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    batch_transform: Callable | None,
    autocast: Callable[[], Any] | None,
) -> float | None:
    """One optimizer step of the sweep; returns its loss, or None (and no step) when the loss is not finite."""
    images, targets = batch[0].to(device), batch[1].to(device)
    if batch_transform is not None:
        images, targets = batch_transform(images, targets)
    optimizer.zero_grad(set_to_none=True)
    with autocast() if autocast is not None else torch.enable_grad():
        loss = loss_fn(model(images), targets)
    value = float(loss.detach())  # one sync per step: the sweep is short and needs every value
    if not math.isfinite(value):
        return None
    loss.backward()
    optimizer.step()
    return value


def lr_range_test(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth_beta: float = 0.98,
    diverge_factor: float = 4.0,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    autocast: Callable[[], Any] | None = None,
) -> LrFindResult:
    """Exponential LR sweep; the model's weights/buffers and the optimizer's state are restored afterwards.

    Args:
        model: the model to probe (left as it was on return).
        loader: training batches (cycled if shorter than ``num_steps``).
        optimizer: its groups' ``initial_lr`` (or ``lr``) ratios are kept, so per-group multipliers are honoured.
        loss_fn: ``loss_fn(logits, targets)``.
        device: where to compute.
        start_lr, end_lr: the sweep's first and last lr (of the group with the largest base lr).
        num_steps: optimizer steps in the sweep.
        smooth_beta: EMA factor of the online loss smoothing that detects divergence (bias-corrected); the
            suggestion is judged on a zero-lag smoothing (:func:`zero_lag_smooth`) with a window of ~5% of the sweep.
        diverge_factor: stop when the smoothed loss exceeds this multiple of its minimum (or is not finite).
        batch_transform: optional batch-level augmentation (CutMix/MixUp) as in training.
        autocast: a zero-argument factory of the autocast context (None: full precision).

    Returns:
        The sweep and the suggested lr.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr-find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_steps < 2:
        raise ValueError(f"lr-find needs num_steps >= 2, got {num_steps}")
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    ratios = [b / max(base) for b in base]
    lrs, losses = [], []
    avg, best, diverged = 0.0, math.inf, False
    was_training = model.training
    model.train()
    batches = _cycle(loader)
    try:
        for i in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            value = _sweep_step(model, optimizer, loss_fn, next(batches), device, batch_transform, autocast)
            if value is None:
                diverged = True
                break
            avg = smooth_beta * avg + (1 - smooth_beta) * value
            s = avg / (1 - smooth_beta ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            best = min(best, s)
            if s > diverge_factor * best:
                diverged = True
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        for group, b in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = b
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    # judged on a lag-free smoothing with a window of about 5% of the sweep (the online EMA above only stops it)
    beta = min(smooth_beta, max(0.0, 1.0 - 20.0 / num_steps))
    judged = zero_lag_smooth(losses, beta) if losses else []
    return LrFindResult(
        lrs=lrs,
        losses=losses,
        smoothed=judged,
        suggested_lr=suggest_lr(lrs, judged),
        diverged=diverged,
        extra={"smooth_beta": beta, "smoothing": "forward-backward EMA", "stop_beta": smooth_beta},
    )


def lr_find_figure(result: LrFindResult, title: str = "LR range test") -> Figure:
    """Loss against lr (log x): every step's raw loss (light), the smoothed loss it is judged by (bold), the suggested
    lr marked on it, and where the sweep stopped when the loss diverged.

    The y axis spans the raw loss, from its lowest value to a little above where it starts, so that the noise the
    smoothing removes stays visible; spikes above that (divergence) are clipped and counted in the legend.
    """
    fig = Figure(figsize=(7.5, 4.4), dpi=120)  # a plain Figure (Agg canvas), never pyplot: no global backend state
    ax = fig.subplots()
    raw, smooth = np.asarray(result.losses, dtype=np.float64), np.asarray(result.smoothed, dtype=np.float64)
    lo = hi = None
    if len(raw):
        head = raw[: max(5, len(raw) // 2)]
        lo = float(min(raw.min(), smooth.min()))
        hi = float(max(smooth[0], np.percentile(head, 90)))
        pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
        lo, hi = lo - pad, hi + 2 * pad
    clipped = int((raw > hi).sum()) if hi is not None else 0
    raw_label = "loss per step (raw)" + (f", {clipped} above the axis" if clipped else "")
    ax.plot(result.lrs, raw, color="tab:blue", alpha=0.35, lw=0.9, marker=".", ms=3, label=raw_label)
    beta = result.extra.get("smooth_beta")
    kind = result.extra.get("smoothing", "EMA")
    label = "smoothed" + (f" ({kind}, beta {beta:.2g})" if beta else "")
    ax.plot(result.lrs, smooth, color="tab:blue", lw=2.2, label=label)
    if result.suggested_lr is not None:
        i = int(np.argmin(np.abs(np.log(np.asarray(result.lrs)) - math.log(result.suggested_lr))))
        ax.axvline(result.suggested_lr, color="tab:red", ls="--", lw=1)
        ax.plot(
            [result.suggested_lr],
            [smooth[i]],
            "o",
            color="tab:red",
            ms=7,
            label=f"suggested lr {result.suggested_lr:.2g} (steepest descent)",
        )
    if result.diverged and result.lrs:
        ax.axvline(result.lrs[-1], color="gray", ls=":", lw=1.2, label=f"stopped at lr {result.lrs[-1]:.2g}: diverged")
    ax.set_xscale("log")
    if lo is not None:
        ax.set_ylim(lo, hi)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_lr_find(result: LrFindResult, out: str | Path, title: str = "LR range test") -> Path:
    """:func:`lr_find_figure` written as a PNG; returns the path."""
    return save_figure(lr_find_figure(result, title), out)


def lr_find(
    cfg: Config, out: str | Path | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100
) -> LrFindResult:
    """Run the LR range test with the model, data, loss and optimizer that ``cfg`` describes.

    Args:
        cfg: the resolved config (its ``training.optimizer.lr`` is ignored: the sweep sets the lr).
        out: where to write the loss-vs-lr PNG (None: no plot).
        start_lr, end_lr, num_steps: the sweep (see :func:`lr_range_test`).

    Returns:
        The sweep, with ``suggested_lr`` and ``plot`` filled in.
    """
    check_config(cfg)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = select_device(cfg.run.device)
    splits, _, model, loaders = build_data_and_model(cfg, device, DistInfo())
    weights = class_weights_for(splits).to(device) if cfg.training.loss.class_weights == "balanced" else None
    loss_fn = build_loss(cfg.training.loss, weights).to(device)
    optimizer = build_optimizer(model, cfg.training.optimizer)
    result = lr_range_test(
        model,
        loaders.train,
        optimizer,
        loss_fn,
        device=device,
        start_lr=start_lr,
        end_lr=end_lr,
        num_steps=num_steps,
        batch_transform=loaders.batch_transform_for(0, cfg.training.epochs),
        autocast=lambda: autocast_context(device, cfg.training.amp, cfg.training.amp_dtype),
    )
    if out is not None:
        title = (
            f"LR range test: {cfg.model.name} on {cfg.data.name}, {cfg.training.optimizer.name}, "
            f"batch {cfg.data.batch_size}, {len(result.lrs)} steps"
        )
        result.plot = plot_lr_find(result, out, title=title)
    return result
