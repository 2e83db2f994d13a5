"""The two plain functions everything else is built from: :func:`train_one_epoch` and :func:`evaluate`.

Hot-loop rules (nanoGPT/airbench): running sums stay on the device as tensors and are read (``.item()``) only at log
intervals and at the end of the epoch; the lr is set from a pure function of the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from imgcls.config import UserFacingError
from imgcls.engine.ema import ModelEma
from imgcls.engine.multilabel import DEFAULT_THRESHOLD, multilabel_metrics


class NonFiniteLossError(UserFacingError, RuntimeError):
    """Too many non-finite losses in a row: training stopped before any non-finite weight was saved. The message says
    what to change (a :class:`~imgcls.config.UserFacingError`: the CLI prints it in one line)."""


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
    #: batches of the epoch done when ``TrainOptions.should_stop`` ended it early (None: it ran to its end)
    stopped_at: int | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class OptimState:
    """The optimizer side of training: the optimizer, its lr schedule, loss scaler, weight EMA and the step clock.

    Attributes:
        optimizer: its groups carry ``initial_lr``; ``lr_at(step)`` gives the multiplier applied before each step.
        lr_at: step -> lr multiplier (a pure function of the step; None: keep the lr).
        scaler: a GradScaler for fp16 on CUDA.
        ema: weight EMA updated after every optimizer step.
        step: optimizer steps taken so far (the schedule's clock); :func:`train_one_epoch` advances it.
    """

    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float] | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEma | None = None
    step: int = 0


@dataclass
class TrainOptions:
    """How batches become optimizer steps.

    Attributes:
        device: where to compute.
        amp, amp_dtype: autocast settings (see :func:`autocast_context`).
        accum_steps: optimizer step every ``accum_steps`` batches; each loss is divided by the group's size so the
            update equals the one from a single batch of ``accum_steps`` x the size.
        clip_grad_norm: clip the global gradient norm to this value.
        channels_last: feed NHWC-strided images.
        max_nonfinite_steps: non-finite guard: a step whose loss or gradient norm is non-finite is skipped (no update,
            no EMA update), and :class:`NonFiniteLossError` is raised after this many in a row. The guard reads one
            scalar per optimizer step (a host sync on CUDA); 0 switches it off, leaving only the epoch-end check of
            the weights (:func:`assert_finite_state`).
        log_interval: optimizer steps between ``on_log(step, loss)`` calls (each one reads the loss from the device).
        batch_transform: batch-level op on the device, e.g. CutMix/MixUp: (images, labels) -> (images, soft targets).
        teacher: a frozen model whose logits the loss uses (distillation): ``loss_fn(logits, targets, teacher_logits)``.
        on_log: progress callback ``(step, loss)``.
        after_train_mode: called after ``model.train()`` (keeps frozen BatchNorm layers in eval mode).
        num_batches: the loader's length if it has none (for the accumulation tail).
        start_batch: batches of this epoch already done (a mid-epoch resume: the loader starts there too, see
            :func:`imgcls.data.loaders.set_epoch`); must end an accumulation group.
        resume_sums: the epoch's running sums at ``start_batch`` (:meth:`EpochSums.state_dict`), so the epoch's
            loss, accuracy and time are those of the whole epoch.
        on_step: called after each optimizer step as ``on_step(batches_done, snapshot)`` (progress, mid-epoch
            checkpoints); ``snapshot()`` gives the running sums to save in a mid-epoch checkpoint.
        multilabel: the targets are multi-hot [B, K] (mixed ones soft): the epoch's accuracy is the label accuracy
            (:meth:`EpochSums.add`) instead of the argmax's.
        should_stop: asked after each optimizer step (after ``on_step``); True ends the epoch there, at a step
            boundary (a time budget). The returned stats say where (``EpochStats.stopped_at``).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False
    amp_dtype: str = "auto"
    accum_steps: int = 1
    clip_grad_norm: float | None = None
    channels_last: bool = False
    max_nonfinite_steps: int = 5
    log_interval: int = 50
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    teacher: nn.Module | None = None
    on_log: Callable[[int, float], None] | None = None
    after_train_mode: Callable[[nn.Module], None] | None = None
    num_batches: int | None = None
    start_batch: int = 0
    resume_sums: dict[str, Any] | None = None
    on_step: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None
    multilabel: bool = False
    should_stop: Callable[[], bool] | None = None


@dataclass
class EpochSums:
    """Running sums of one epoch, kept on the device and read once at its end (or saved mid-epoch)."""

    loss_sum: torch.Tensor  # sum of the finite per-batch losses x batch size
    loss_count: torch.Tensor  # samples whose loss was finite
    correct: torch.Tensor
    group_finite: torch.Tensor  # every loss of the current accumulation group finite
    seen: int = 0
    skipped: int = 0
    nonfinite_in_row: int = 0
    seconds: float = 0.0  # of the epoch's part before a mid-epoch resume

    @classmethod
    def zeros(cls, device: torch.device) -> EpochSums:
        z = functools.partial(torch.zeros, (), device=device)
        return cls(z(), z(), z(), torch.ones((), dtype=torch.bool, device=device))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> EpochSums:
        tensors = {k: state[k].to(device) for k in ("loss_sum", "loss_count", "correct", "group_finite")}
        ints = {k: int(state[k]) for k in ("seen", "skipped", "nonfinite_in_row")}
        return cls(**tensors, **ints, seconds=float(state["seconds"]))

    def state_dict(self, seconds: float) -> dict[str, Any]:
        """The sums as saved in a mid-epoch checkpoint; ``seconds``: the epoch's training time so far."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        tensors = {k: v.detach().clone().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
        return {**state, **tensors, "seconds": seconds}

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch. ``labels``: class indices [B] (accuracy: argmax right), or multi-hot [B, K] (multi-label: the
        share of labels whose sigmoid decision at 0.5, ``logit > 0``, is right, i.e. 1 - Hamming loss)."""
        n = labels.shape[0]
        self.seen += n
        finite = torch.isfinite(loss)
        self.group_finite &= finite
        self.loss_sum += torch.where(finite, loss, 0.0) * n  # a NaN batch must not turn the epoch's mean into NaN
        self.loss_count += finite * n
        if labels.ndim == 2:
            self.correct += ((logits.detach() > 0) == (labels > 0.5)).float().mean(1).sum()
        else:
            self.correct += (logits.detach().argmax(1) == labels).sum()


def _forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    opts: TrainOptions,
    scaler: torch.amp.GradScaler | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward under autocast, loss (with the teacher's logits when distilling), scaled backward.
    Returns (detached fp32 loss, logits)."""
    with autocast_context(opts.device, opts.amp, opts.amp_dtype):
        logits = model(images)
        if opts.teacher is not None:
            with torch.no_grad():
                teacher_logits = opts.teacher(images)
            loss = loss_fn(logits, targets, teacher_logits)
        else:
            loss = loss_fn(logits, targets)
    scaled = loss / scale
    if scaler is not None:
        scaler.scale(scaled).backward()
    else:
        scaled.backward()
    return loss.detach().float(), logits


def _optimizer_step(
    model: nn.Module, params: list[torch.Tensor], opt: OptimState, opts: TrainOptions, sums: EpochSums
) -> bool:
    """Set the lr for this step, clip, guard against non-finite values, step, update the EMA. Returns whether the
    update was applied (False: skipped by the non-finite guard)."""
    optimizer = opt.optimizer
    if opt.lr_at is not None:
        mult = opt.lr_at(opt.step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * mult
    if opt.scaler is not None:
        opt.scaler.unscale_(optimizer)
    grad_norm = None
    if opts.clip_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, opts.clip_grad_norm)
    # Non-finite guard: one scalar read per optimizer step. The gradient norm is checked as well as the loss: under
    # DDP a NaN on one rank reaches every rank through the all-reduced gradients, so all ranks skip together. A
    # GradScaler (fp16) already skips inf/nan steps and lowers its scale, so with fp16 we let it decide.
    if opt.scaler is None and opts.max_nonfinite_steps > 0:
        if grad_norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=opts.device)
        if not bool(sums.group_finite & torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            sums.group_finite.fill_(True)
            sums.skipped += 1
            sums.nonfinite_in_row += 1
            if sums.nonfinite_in_row >= opts.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{sums.nonfinite_in_row} non-finite losses or gradients in a row at step {opt.step}: lower "
                    "training.optimizer.lr, enable training.clip_grad_norm, or check the data; no non-finite "
                    "weights were saved"
                )
            opt.step += 1  # the schedule's clock keeps running so that the lr curve stays a function of the step
            return False
    sums.nonfinite_in_row = 0
    if opt.scaler is not None:
        opt.scaler.step(optimizer)
        opt.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if opt.ema is not None:
        opt.ema.update(model)
    opt.step += 1
    return True


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    opt: OptimState,
    loss_fn: Callable[..., torch.Tensor],
    opts: TrainOptions | None = None,
) -> EpochStats:
    """Train ``model`` (possibly DDP-wrapped or compiled) for one pass over ``loader``.

    Args:
        model: the model.
        loader: yields (images, targets); images may already be on the device (device loader).
        opt: optimizer, schedule, scaler, EMA and step clock; ``opt.step`` is advanced.
        loss_fn: ``loss_fn(logits, targets)`` or, with a teacher, ``loss_fn(logits, targets, teacher_logits)``.
        opts: how batches become steps (:class:`TrainOptions`; default: plain fp32 steps on the CPU).

    Returns:
        Loss and accuracy averaged over the epoch's samples, image count, wall time and steps taken.
    """
    opts = opts or TrainOptions()
    device, accum = opts.device, opts.accum_steps
    model.train()
    if opts.after_train_mode is not None:
        opts.after_train_mode(model)
    total = opts.num_batches if opts.num_batches is not None else len(loader)  # type: ignore[arg-type]
    sums = EpochSums.from_state_dict(opts.resume_sums, device) if opts.resume_sums else EpochSums.zeros(device)
    params = [p for p in model.parameters() if p.requires_grad]
    start_step = opt.step
    opt.optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()

    def snapshot() -> dict[str, Any]:
        return sums.state_dict(seconds=sums.seconds + time.perf_counter() - t0)

    stopped_at = None
    for i, (images, targets) in enumerate(loader, start=opts.start_batch):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if opts.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = targets
        if opts.batch_transform is not None:
            images, targets = opts.batch_transform(images, targets)
        group_size = min(accum, total - (i // accum) * accum)  # the epoch's last group may be shorter
        is_step = (i + 1) % accum == 0 or (i + 1) == total
        # DDP: all-reduce gradients only on the micro-batch that ends an accumulation group
        sync = contextlib.nullcontext() if is_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss, logits = _forward_backward(model, images, targets, loss_fn, opts, opt.scaler, group_size)
        sums.add(loss, logits, labels if labels.ndim == 1 or opts.multilabel else labels.argmax(1))
        if not is_step:
            continue
        if _optimizer_step(model, params, opt, opts, sums):
            if opts.on_log is not None and opts.log_interval > 0 and opt.step % opts.log_interval == 0:
                opts.on_log(opt.step, float(loss))
        if opts.on_step is not None:
            opts.on_step(i + 1, snapshot)
        if opts.should_stop is not None and i + 1 < total and opts.should_stop():
            stopped_at = i + 1
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = sums.seconds + time.perf_counter() - t0
    count = float(sums.loss_count)
    return EpochStats(
        loss=float(sums.loss_sum) / count if count > 0 else float("nan"),
        acc=float(sums.correct) / max(sums.seen, 1),
        images=sums.seen,
        seconds=seconds,
        steps=opt.step - start_step,
        skipped_steps=sums.skipped,
        stopped_at=stopped_at,
    )


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
    multilabel: bool = False,
    thresholds: torch.Tensor | list[float] | None = None,
) -> EvalResult:
    """Evaluate a model, an ensemble (a list of models: probabilities averaged) or TTA views on a loader.

    The one evaluation path for validation, test, EMA, TTA, ensembles and export parity checks. With ``distributed``
    the sums are all-reduced so every rank gets the metrics of the full split.

    With ``multilabel`` the targets are multi-hot [B, K] and every logit is an independent sigmoid: probabilities are
    averaged over models and views the same way, ``loss`` is their binary cross-entropy (mean over labels and
    samples), ``acc`` the subset accuracy at ``thresholds`` (one, or one per label; default 0.5), ``topk`` is empty,
    ``confusion`` counts [K, K] images with true label i and predicted label j, and ``extra`` holds every metric of
    :func:`imgcls.engine.multilabel.multilabel_metrics` (mAP, F1, Hamming loss, ...).

    Returns:
        loss (NLL of the averaged probabilities), accuracy, top-k accuracies, confusion matrix, sample count.
    """
    models = model if isinstance(model, list) else [model]
    for m in models:
        if isinstance(m, nn.Module):
            m.eval()
    if multilabel:
        return _evaluate_multilabel(
            models,
            loader,
            device=device,
            num_classes=num_classes,
            amp=amp,
            amp_dtype=amp_dtype,
            tta=tta,
            view_fn=view_fn,
            channels_last=channels_last,
            return_outputs=return_outputs,
            distributed=distributed,
            thresholds=thresholds,
        )
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
        views = view_fn(images, tta) if tta > 1 else [images]
        with autocast_context(device, amp, amp_dtype):
            probs = _mean_probs(models, views, lambda z: F.softmax(z, dim=1))
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


def _mean_probs(
    models: list, views: list[torch.Tensor], activation: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The probabilities (``activation`` of the fp32 logits: softmax, or sigmoid per label) averaged over every model
    and TTA view: the one ensemble/TTA rule of both evaluations."""
    probs = sum(activation(m(v).float()) for m in models for v in views)
    return probs / (len(models) * len(views))


def _evaluate_multilabel(
    models: list,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    num_classes: int,
    amp: bool,
    amp_dtype: str,
    tta: int,
    view_fn: Callable[[torch.Tensor, int], list[torch.Tensor]],
    channels_last: bool,
    return_outputs: bool,
    distributed: bool,
    thresholds: torch.Tensor | list[float] | None,
) -> EvalResult:
    """:func:`evaluate` for multi-hot targets. mAP needs every score of the split, so the probabilities are kept
    (N x K floats; gathered from every rank under DDP)."""
    bce_sum = torch.zeros((), dtype=torch.float64, device=device)
    all_probs, all_targets = [], []
    t0 = time.perf_counter()
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True).float()
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        views = view_fn(images, tta) if tta > 1 else [images]
        with autocast_context(device, amp, amp_dtype):
            probs = _mean_probs(models, views, torch.sigmoid)
        clipped = probs.clamp(1e-7, 1 - 1e-7)  # the BCE of averaged probabilities, finite for saturated ones
        bce_sum += F.binary_cross_entropy(clipped, targets, reduction="sum").double() / num_classes
        all_probs.append(probs.cpu())
        all_targets.append(targets.cpu())
    probs = torch.cat(all_probs) if all_probs else torch.zeros(0, num_classes)
    targets = torch.cat(all_targets) if all_targets else torch.zeros(0, num_classes)
    if distributed:
        dist.all_reduce(bce_sum)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (probs, targets))
        probs, targets = torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
    n = len(probs)
    metrics = multilabel_metrics(probs, targets, thresholds) if n else {"subset_accuracy": 0.0}
    thr = torch.as_tensor(metrics.get("thresholds", [DEFAULT_THRESHOLD] * num_classes), dtype=torch.float32)
    pred = (probs >= thr[None, :]).long()
    return EvalResult(
        loss=float(bce_sum) / max(n, 1),
        acc=metrics["subset_accuracy"],
        topk={},
        confusion=(targets > 0.5).long().T @ pred,
        num_samples=n,
        seconds=time.perf_counter() - t0,
        log_probs=probs.clamp_min(1e-12).log() if return_outputs else None,
        targets=targets if return_outputs else None,
        extra=metrics,
    )
