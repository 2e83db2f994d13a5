"""The two plain functions everything else is built from: :func:`train_one_epoch` and :func:`evaluate`.

Hot-loop rules (nanoGPT/airbench): running sums stay on the device as tensors and are read (``.item()``) only at log
intervals and at the end of the epoch; the lr is set from a pure function of the step.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.engine.ema import ModelEma


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: training stopped before any non-finite weight was saved."""


def assert_finite_state(module: nn.Module, what: str = "model") -> None:
    """Raise :class:`NonFiniteLossError` if any parameter or floating-point buffer is NaN/Inf (checked before saving).

    The per-step guard keeps non-finite updates out of the parameters; this also covers buffers such as BatchNorm
    statistics, which a forward pass on extreme activations can overflow.
    """
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteLossError(
                f"{what} tensor '{name}' holds NaN/Inf values: stopping without saving them. Lower "
                "training.optimizer.lr, enable training.clip_grad_norm, or check the data"
            )


def autocast_context(device: torch.device, amp: bool, amp_dtype: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast for ``device``: bf16 on CPU; fp16 (default) or bf16 on CUDA. A no-op context when ``amp`` is off."""
    if not amp:
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if amp_dtype == "bf16" else torch.float16
    else:
        dtype = torch.bfloat16  # CPU autocast supports bf16 (fp16 would be emulated and slow)
        _warn_if_bf16_is_emulated()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.cache
def _warn_if_bf16_is_emulated() -> None:
    """bf16 convolutions and matmuls are fast on CPUs with AVX512-BF16 / AMX (measured 2-3x fp32 for airbench on a
    2-core Xeon with AMX); elsewhere oneDNN has no native bf16 kernels and autocast can be slower than fp32."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(
            "training.amp=true on a CPU without native bf16 support (AVX512-BF16/AMX): bf16 would be emulated and "
            "may be slower than fp32. Set training.amp=false on this machine.",
            stacklevel=3,
        )


def needs_grad_scaler(device: torch.device, amp: bool, amp_dtype: str) -> bool:
    """fp16 on CUDA needs loss scaling; bf16 has fp32's exponent range and does not."""
    return amp and device.type == "cuda" and amp_dtype != "bf16"


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float
    steps: int  # optimizer steps taken in this epoch
    skipped_steps: int = 0  # non-finite steps skipped

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    *,
    device: torch.device,
    start_step: int = 0,
    lr_at: Callable[[int], float] | None = None,
    amp: bool = False,
    amp_dtype: str = "auto",
    scaler: torch.amp.GradScaler | None = None,
    accum_steps: int = 1,
    clip_grad_norm: float | None = None,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ema: ModelEma | None = None,
    teacher: nn.Module | None = None,
    channels_last: bool = False,
    max_nonfinite_steps: int = 5,
    log_interval: int = 50,
    on_log: Callable[[int, float], None] | None = None,
    after_train_mode: Callable[[nn.Module], None] | None = None,
    num_batches: int | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: the model (possibly DDP-wrapped or compiled).
        loader: yields (images, targets); images may already be on ``device`` (device loader).
        optimizer: its groups carry ``initial_lr``; ``lr_at(step)`` gives the multiplier applied before each step.
        loss_fn: ``loss_fn(logits, targets)`` or, with a teacher, ``loss_fn(logits, targets, teacher_logits)``.
        device: where to compute.
        start_step: optimizer steps taken before this epoch (the schedule's clock).
        lr_at: step -> lr multiplier (None: keep the lr).
        amp, amp_dtype: autocast settings (see :func:`autocast_context`).
        scaler: a GradScaler for fp16 on CUDA.
        accum_steps: optimizer step every ``accum_steps`` batches; each loss is divided by it so the update equals
            the one from a single batch of ``accum_steps`` x the size.
        clip_grad_norm: clip the global gradient norm to this value.
        batch_transform: batch-level op on the device, e.g. CutMix/MixUp: (images, labels) -> (images, soft targets).
        ema: weight EMA updated after every optimizer step.
        teacher: a frozen model whose logits the loss uses (distillation).
        channels_last: feed NHWC-strided images.
        max_nonfinite_steps: a step whose loss or gradient norm is non-finite is skipped (no update, no EMA
            update); raise :class:`NonFiniteLossError` after this many skipped steps in a row.
        log_interval: steps between ``on_log(step, loss)`` calls (each one syncs with the device).
        on_log: progress callback.
        after_train_mode: called after ``model.train()`` (keeps frozen BatchNorm layers in eval mode).
        num_batches: the loader's length if it has none (for the accumulation tail).

    Returns:
        Loss and accuracy averaged over the epoch's samples, image count, wall time and steps taken.
    """
    model.train()
    if after_train_mode is not None:
        after_train_mode(model)
    total = num_batches if num_batches is not None else len(loader)  # type: ignore[arg-type]
    loss_sum = torch.zeros((), device=device)  # sum of the finite per-batch losses x batch size
    loss_count = torch.zeros((), device=device)  # samples whose loss was finite
    correct = torch.zeros((), device=device)
    group_finite = torch.ones((), dtype=torch.bool, device=device)  # every loss of this accumulation group finite
    params = [p for p in model.parameters() if p.requires_grad]
    seen = 0
    step = start_step
    skipped = 0
    nonfinite_in_row = 0
    optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_targets = targets
        if batch_transform is not None:
            images, targets = batch_transform(images, targets)
        # the last group of an epoch may be shorter than accum_steps: scale by its real size
        group_start = (i // accum_steps) * accum_steps
        group_size = min(accum_steps, total - group_start)
        is_step = (i + 1) % accum_steps == 0 or (i + 1) == total
        # DDP: all-reduce gradients only on the micro-batch that ends an accumulation group
        sync = contextlib.nullcontext() if is_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_context(device, amp, amp_dtype):
                logits = model(images)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = loss_fn(logits, targets, teacher_logits)
                else:
                    loss = loss_fn(logits, targets)
            scaled = loss / group_size
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        n = images.shape[0]
        seen += n
        detached = loss.detach().float()
        finite = torch.isfinite(detached)
        group_finite &= finite
        loss_sum += torch.where(finite, detached, 0.0) * n  # a NaN batch must not turn the epoch's mean into NaN
        loss_count += finite * n
        labels = hard_targets if hard_targets.ndim == 1 else hard_targets.argmax(1)
        correct += (logits.detach().argmax(1) == labels).sum()
        if not is_step:
            continue
        if lr_at is not None:
            mult = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * mult
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
        # Non-finite guard: one scalar read per optimizer step. The gradient norm is checked as well as the loss:
        # under DDP a NaN on one rank reaches every rank through the all-reduced gradients, so all ranks skip together.
        # A GradScaler (fp16) already skips inf/nan steps and lowers its scale, so with fp16 we let it decide.
        if scaler is None and not bool(group_finite & torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            group_finite.fill_(True)
            skipped += 1
            nonfinite_in_row += 1
            if nonfinite_in_row >= max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{nonfinite_in_row} non-finite losses or gradients in a row at step {step}: lower "
                    "training.optimizer.lr, enable training.clip_grad_norm, or check the data; no non-finite "
                    "weights were saved"
                )
            step += 1  # the schedule's clock keeps running so that the lr curve stays a function of the step
            continue
        nonfinite_in_row = 0
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        step += 1
        if on_log is not None and log_interval > 0 and step % log_interval == 0:
            on_log(step, float(detached))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    count = float(loss_count)
    loss_mean = float(loss_sum) / count if count > 0 else float("nan")
    return EpochStats(
        loss=loss_mean, acc=float(correct) / max(seen, 1), images=seen, seconds=seconds, steps=step - start_step,
        skipped_steps=skipped,
    )  # fmt: skip


@dataclass
class EvalResult:
    """Metrics of one evaluation pass. ``log_probs``/``targets`` are kept on CPU when ``return_outputs`` is set.

    ``log_probs`` [N, K] are the log of the probabilities averaged over models and TTA views (not raw logits: an
    ensemble has no single logit vector); ``log_probs.exp()`` gives the probabilities.
    """

    loss: float
    acc: float
    topk: dict[int, float]
    confusion: torch.Tensor  # [K, K] counts, rows = true class, columns = predicted
    num_samples: int
    seconds: float
    log_probs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def logits(self) -> torch.Tensor | None:
        """Deprecated alias of ``log_probs`` (they were never raw logits)."""
        return self.log_probs

    @property
    def per_class_acc(self) -> list[float]:
        cm = self.confusion.double()
        return (cm.diag() / cm.sum(1).clamp_min(1)).tolist()

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss, f"{prefix}acc": self.acc}
        out.update({f"{prefix}top{k}": v for k, v in self.topk.items()})
        return out


#: crop offsets (dy, dx) of the translated TTA views, in pixels of a 1-pixel reflect padding (airbench's TTA)
TTA_SHIFTS = ((1, 1), (-1, -1), (1, -1), (-1, 1))
#: identity + mirror + each translation and its mirror
MAX_TTA_VIEWS = 2 + 2 * len(TTA_SHIFTS)


def tta_views(images: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Test-time augmentation views of a batch [B, C, H, W]: identity, horizontal flip, then 1-pixel translations
    (reflect padding, so no pixel wraps around) each followed by its mirror image.

    ``n`` = number of views, at most 10 (1 = identity only; 6 = airbench's "mirror + translate" TTA: the identity, two
    diagonal translations and their mirrors).
    """
    if not 1 <= n <= MAX_TTA_VIEWS:
        raise ValueError(f"tta must be between 1 and {MAX_TTA_VIEWS} views, got {n}")
    views = [images, images.flip(-1)]
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect") if n > 2 else None
    for dy, dx in TTA_SHIFTS[: max(0, (n - 1) // 2)]:
        shifted = padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        views += [shifted, shifted.flip(-1)]
    return views[:n]


@torch.no_grad()
def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor] | list,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    num_classes: int,
    amp: bool = False,
    amp_dtype: str = "auto",
    topk: tuple[int, ...] = (5,),
    tta: int = 1,
    view_fn: Callable[[torch.Tensor, int], list[torch.Tensor]] = tta_views,
    channels_last: bool = False,
    return_outputs: bool = False,
    distributed: bool = False,
) -> EvalResult:
    """Evaluate a model, an ensemble (a list of models: probabilities averaged) or TTA views on a loader.

    The one evaluation path for validation, test, EMA, TTA, ensembles and export parity checks. With ``distributed``
    the sums are all-reduced so every rank gets the metrics of the full split.

    Returns:
        loss (NLL of the averaged probabilities), accuracy, top-k accuracies, confusion matrix, sample count.
    """
    models = model if isinstance(model, list) else [model]
    for m in models:
        if isinstance(m, nn.Module):
            m.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    ks = tuple(k for k in topk if k < num_classes)
    topk_hits = torch.zeros(len(ks), dtype=torch.long, device=device)
    all_logits, all_targets = [], []
    t0 = time.perf_counter()
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        probs = torch.zeros(images.shape[0], num_classes, device=device)
        views = view_fn(images, tta) if tta > 1 else [images]
        with autocast_context(device, amp, amp_dtype):
            for m in models:
                for v in views:
                    probs += F.softmax(m(v).float(), dim=1)
        probs /= len(models) * len(views)
        logp = probs.clamp_min(1e-12).log()  # log of averaged probabilities: a proper score for ensembles/TTA
        nll_sum += F.nll_loss(logp, targets, reduction="sum").double()
        pred = probs.argmax(1)
        confusion += torch.bincount(targets * num_classes + pred, minlength=num_classes**2).view(num_classes, -1)
        if ks:
            top = probs.topk(max(ks), dim=1).indices
            hits = top == targets[:, None]
            topk_hits += torch.stack([hits[:, :k].any(1).sum() for k in ks])
        if return_outputs:
            all_logits.append(logp.cpu())
            all_targets.append(targets.cpu())
    if distributed:
        import torch.distributed as dist

        for t in (confusion, nll_sum, topk_hits):
            dist.all_reduce(t)
    n = int(confusion.sum())
    return EvalResult(
        loss=float(nll_sum) / max(n, 1),
        acc=float(confusion.diag().sum()) / max(n, 1),
        topk={k: float(h) / max(n, 1) for k, h in zip(ks, topk_hits.tolist(), strict=True)},
        confusion=confusion.cpu(),
        num_samples=n,
        seconds=time.perf_counter() - t0,
        log_probs=torch.cat(all_logits) if return_outputs and all_logits else None,
        targets=torch.cat(all_targets) if return_outputs and all_targets else None,
    )
