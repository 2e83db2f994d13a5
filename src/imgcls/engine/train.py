"""``train(cfg)``: training as four explicit stages, each a plain function over plain objects.

1. :func:`setup`: every object the run needs, built from the config (data, model, loss, optimizer, EMA, ...);
   :func:`restore` loads a checkpoint into them when resuming.
2. :func:`run_epoch`: one epoch: gradual unfreezing, :func:`~imgcls.engine.loop.train_one_epoch`, the DDP reduction
   of its metrics, validation (and EMA validation) through the one :func:`~imgcls.engine.loop.evaluate`.
3. :func:`end_epoch`: per-epoch bookkeeping: best score and early stopping, metrics.csv, the tracker, checkpoints.
4. :func:`finish`: the test evaluation of the best checkpoint and ``summary.json``.

Reports and other post-run work are not part of the engine: pass ``on_finish`` hooks (the CLI writes the HTML
report that way).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import Config, ConfigError, checkpoint_interval, save_config, to_dict
from imgcls.data.build import build_loaders, build_splits, resolve_preprocess
from imgcls.data.datasets import Splits
from imgcls.data.fingerprint import data_fingerprint
from imgcls.data.loaders import Loaders, PreprocessInfo, set_epoch
from imgcls.engine.build import (
    build_model_for,
    check_config,
    class_weights_for,
    data_init_sample,
    load_model,
    model_size_hint,
    seed_everything,
)
from imgcls.engine.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from imgcls.engine.distributed import (
    DistInfo,
    all_reduce_means,
    barrier,
    broadcast_object,
    cleanup_distributed,
    device_type_for,
    gather_objects,
    init_distributed,
    select_device,
    sync_buffers,
)
from imgcls.engine.ema import ModelEma
from imgcls.engine.loop import (
    EvalResult,
    OptimState,
    TrainOptions,
    assert_finite_state,
    evaluate,
    needs_grad_scaler,
    train_one_epoch,
)
from imgcls.engine.losses import DistillationLoss, build_loss, loss_for_data
from imgcls.engine.multilabel import tune_thresholds
from imgcls.engine.optim import build_optimizer
from imgcls.engine.progress import TrainProgress
from imgcls.engine.provenance import git_state, software_versions
from imgcls.engine.runs import MetricsLog, RunLock, StepLog, check_run_paths, new_run_dir, record_resume, writing
from imgcls.engine.schedules import PlateauState, lr_multiplier, warmup_warning
from imgcls.engine.threads import apply_threads
from imgcls.engine.tracking import Tracker, create_tracker
from imgcls.models.transfer import apply_freezing, freeze_bn_eval, unfreeze_next_group


@dataclass
class RunResult:
    run_dir: Path
    best_val_acc: float | None
    test: EvalResult | None
    epochs_run: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSetup:
    """Everything a run is made of, built from the config by :func:`setup` (fixed for the whole run)."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    splits: Splits
    preprocess: PreprocessInfo
    model: nn.Module  # the plain model (checkpoints, evaluation)
    train_model: nn.Module  # what the loop calls: the model, compiled and/or DDP-wrapped as configured
    loaders: Loaders
    loss_fn: Callable[..., torch.Tensor]
    teacher: nn.Module | None
    opt: OptimState  # optimizer, schedule, scaler, EMA and the step clock
    plateau: PlateauState
    steps_per_epoch: int
    notes: list[str] = field(default_factory=list)  # what the data decided (multi-label, the loss), said at the start
    data_fingerprint: dict[str, Any] = field(default_factory=dict)  # of the splits as trained (bad files dropped)

    @property
    def ema(self) -> ModelEma | None:
        return self.opt.ema

    @property
    def multilabel(self) -> bool:
        return self.splits.multilabel


@dataclass
class TrainState:
    """What changes from epoch to epoch and is saved in checkpoints (the step clock lives in ``TrainSetup.opt``)."""

    epoch: int = 0  # epochs finished
    best_score: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    unfrozen: int = 0  # gradual-unfreezing groups released so far
    stopped_early: bool = False
    batch: int = 0  # batches of epoch ``epoch`` already done (> 0: resuming from a mid-epoch checkpoint)
    epoch_sums: dict[str, Any] | None = None  # that partial epoch's running sums (:class:`EpochSums` state)
    elapsed_before: float = 0.0  # wall seconds of the earlier sessions of a resumed run
    train_seconds: float = 0.0  # seconds of training steps in the finished epochs, across resumes (the time budget)
    budget_stop: dict[str, Any] | None = None  # where training.max_minutes stopped the run (None: it did not)
    started: float = field(default_factory=time.perf_counter)  # this session's start (perf_counter)

    def elapsed(self) -> float:
        """Wall seconds of the whole run so far, across resumes."""
        return self.elapsed_before + time.perf_counter() - self.started


@dataclass
class RunFolder:
    """Where the run writes (rank 0 only; other ranks know the path and write nothing)."""

    path: Path
    metrics: MetricsLog | None
    tracker: Tracker | None
    lock: RunLock | None = None  # held while training; released when train() returns or raises
    steps: StepLog | None = None  # steps.csv (run.log_interval > 0)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: setup
# --------------------------------------------------------------------------------------------------------------------


def build_data_and_model(
    cfg: Config, device: torch.device, dist: DistInfo
) -> tuple[Splits, PreprocessInfo, nn.Module, Loaders]:
    """Splits, preprocessing, the model (frozen as configured, on ``device``, data-initialised) and the loaders."""
    splits = build_splits(cfg)
    in_chans = cfg.data.in_chans or splits.in_chans
    model = build_model_for(cfg, splits.num_classes, in_chans, model_size_hint(cfg, splits))
    preprocess = resolve_preprocess(cfg, splits, model)
    apply_freezing(model, freeze_backbone=cfg.model.freeze_backbone, freeze_layers=cfg.model.freeze_layers)
    model.to(device)
    if cfg.training.channels_last:
        model.to(memory_format=torch.channels_last)
    loaders = build_loaders(cfg, splits, preprocess, device=device, rank=dist.rank, world_size=dist.world_size)
    if hasattr(model, "init_from_data") and not cfg.model.pretrained:
        # data-dependent init before the optimizer sees the parameters (it may freeze some); on resume the
        # checkpoint's weights then replace the values, and the frozen set matches the one the run started with
        model.init_from_data(data_init_sample(splits, loaders.eval_transform).to(device))
    return splits, preprocess, model, loaders


def _loss(cfg: Config, splits: Splits, device: torch.device) -> tuple[Callable[..., torch.Tensor], nn.Module | None]:
    class_weights = class_weights_for(splits).to(device) if cfg.training.loss.class_weights == "balanced" else None
    loss_fn: Callable[..., torch.Tensor] = build_loss(cfg.training.loss, class_weights).to(device)
    distill = cfg.training.distill
    if not distill.teacher:
        return loss_fn, None
    teacher = load_model(distill.teacher, device=device)[0].eval()
    return DistillationLoss(loss_fn, temperature=distill.temperature, alpha=distill.alpha), teacher


def _wrap(cfg: Config, model: nn.Module, device: torch.device, dist: DistInfo) -> nn.Module:
    train_model = torch.compile(model) if cfg.training.compile else model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return train_model


def resolve_for_data(cfg: Config, splits: Splits) -> tuple[Config, list[str]]:
    """The config as the data makes it (a copy when anything changes) and what to say about it: ``data.multilabel``
    resolved (inferred from a manifest), and on multi-label data a multi-label loss (``cross_entropy`` becomes
    ``bce``). Saved in the run folder and every checkpoint, so a reloaded model knows it is multi-label.

    Raises:
        ConfigError: a single-label-only setting on multi-label data (another softmax loss, distillation,
            ``val_map`` monitored on single-label data).
    """
    multi = splits.multilabel
    if not multi:
        if cfg.training.early_stopping.monitor == "val_map":
            raise ConfigError("training.early_stopping.monitor=val_map needs multi-label data; use val_acc or val_loss")
        return cfg, []
    notes = [splits.info["multilabel"]] if "multilabel" in splits.info else []
    loss, note = loss_for_data(cfg.training.loss.name, multilabel=True)
    if cfg.training.distill.teacher:
        raise ConfigError("training.distill works with single-label (softmax) models; the data is multi-label")
    cfg = copy.deepcopy(cfg)
    cfg.data.multilabel = True
    if note:
        notes.append(note)
        cfg.training.loss.name = loss
    notes.append(f"multi-label: {splits.num_classes} sigmoid outputs, loss {loss}, thresholds tuned on val")
    return cfg, notes


def setup(cfg: Config, dist: DistInfo) -> TrainSetup:
    """Build every object of a run from ``cfg`` (already checked): data, model, loss, optimizer, schedule, EMA."""
    device = select_device(cfg.run.device, dist)
    # the same seed on every rank: identical initial weights (DDP broadcasts them anyway, but the EMA copy is made
    # before DDP wraps the model); per-rank seeds for augmentation are set just before training starts
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    splits, preprocess, model, loaders = build_data_and_model(cfg, device, dist)
    cfg, notes = resolve_for_data(cfg, splits)
    steps_per_epoch = max(1, -(-len(loaders.train) // cfg.training.accum_steps))
    total_steps = steps_per_epoch * cfg.training.epochs
    loss_fn, teacher = _loss(cfg, splits, device)
    tr = cfg.training
    plateau = PlateauState(
        gamma=tr.scheduler.gamma,
        patience=tr.scheduler.patience,
        mode="min" if tr.early_stopping.monitor == "val_loss" else "max",
    )

    def lr_at(step: int) -> float:
        return lr_multiplier(
            step, total_steps=total_steps, steps_per_epoch=steps_per_epoch, cfg=tr.scheduler, plateau_mult=plateau.mult
        )

    opt = OptimState(
        optimizer=build_optimizer(model, tr.optimizer),
        lr_at=lr_at,
        scaler=torch.amp.GradScaler("cuda") if needs_grad_scaler(device, tr.amp, tr.amp_dtype) else None,
        ema=ModelEma(model, tr.ema.decay, tr.ema.warmup) if tr.ema.enabled else None,
    )
    return TrainSetup(
        cfg=cfg,
        dist=dist,
        device=device,
        splits=splits,
        preprocess=preprocess,
        model=model,
        train_model=_wrap(cfg, model, device, dist),
        loaders=loaders,
        loss_fn=loss_fn,
        teacher=teacher,
        opt=opt,
        plateau=plateau,
        steps_per_epoch=steps_per_epoch,
        notes=notes,
        data_fingerprint=data_fingerprint(splits),
    )


def _unfreeze_one(s: TrainSetup) -> bool:
    o = s.cfg.training.optimizer
    released = unfreeze_next_group(
        s.model,
        s.opt.optimizer,
        lr=o.lr,
        weight_decay=o.weight_decay,
        backbone_lr_mult=o.backbone_lr_mult,
        bias_lr_mult=o.bias_lr_mult,
    )
    for group in s.opt.optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return released


def restore(s: TrainSetup, ckpt: dict[str, Any] | None) -> TrainState:
    """The state to start from: fresh, or loaded from a checkpoint into ``s`` (weights, optimizer, EMA, RNG ...)."""
    cfg = s.cfg
    if ckpt is None:
        if s.dist.enabled:
            seed_everything(cfg.run.seed + s.dist.rank, cfg.run.deterministic)  # per-rank augmentation draws
        return TrainState()
    # per-rank RNG and partial-epoch sums (format 2); older checkpoints hold rank 0's RNG only
    ranks = ckpt.get("ranks") or [{"rng": ckpt["rng"], "epoch_sums": None}]
    mine = ranks[s.dist.rank] if len(ranks) == s.dist.world_size else ranks[0]
    state = TrainState(
        epoch=int(ckpt["epoch"]),
        best_score=ckpt["best"]["score"],
        best_epoch=ckpt["best"]["epoch"],
        bad_epochs=ckpt["best"]["bad_epochs"],
        batch=int(ckpt.get("batch", 0)),
        epoch_sums=mine["epoch_sums"],
        elapsed_before=float(ckpt.get("elapsed_s", 0.0)),  # absent in checkpoints written before it was recorded
        train_seconds=float(ckpt.get("train_s", 0.0)),
    )
    # re-apply the gradual unfreezing that had happened before the checkpoint (at the start of the interrupted
    # epoch too, for a mid-epoch one), so the optimizer's groups match
    for e in cfg.training.unfreeze_epochs:
        if e < state.epoch or (e == state.epoch and state.batch > 0):
            _unfreeze_one(s)  # gives the new groups their initial_lr, as build_optimizer gave the first ones
            state.unfrozen += 1
    s.model.load_state_dict(ckpt["model"])
    s.opt.optimizer.load_state_dict(ckpt["optimizer"])
    if s.opt.scaler is not None and ckpt.get("scaler"):
        s.opt.scaler.load_state_dict(ckpt["scaler"])
    if s.ema is not None and ckpt.get("ema"):
        s.ema.load_state_dict(ckpt["ema"])
    if ckpt.get("schedule"):
        s.plateau.load_state_dict(ckpt["schedule"]["plateau"])
    s.opt.step = int(ckpt["step"])
    set_rng_state(mine["rng"])
    if len(ranks) != s.dist.world_size:  # an elastic job restarted with another number of processes
        _rescale_resume(s, state, saved_world=len(ranks))
    return state


def _rescale_resume(s: TrainSetup, state: TrainState, *, saved_world: int) -> None:
    """Resume a checkpoint written by ``saved_world`` ranks with another number (``torchrun --nnodes=MIN:MAX``).

    The epoch's shuffled order is the same for any world size, and ``batch`` per-rank batches of ``saved_world`` ranks
    consumed its first ``batch * saved_world * batch_size`` positions: the new ranks start at that position (rounded
    down to a whole accumulation group of the new world, so a few samples may be seen twice), with the new global
    batch from there on. The per-rank RNG and partial-epoch sums cannot be split across another world size: each rank
    is seeded from (run.seed, rank, step) and the epoch's train loss/accuracy count the samples after the resume only.
    Not bit-identical to any uninterrupted run: that guarantee needs the same world size.
    """
    accum = s.cfg.training.accum_steps
    if state.batch:
        state.batch = state.batch * saved_world // s.dist.world_size // accum * accum
        state.epoch_sums = None
    seed_everything(s.cfg.run.seed + 1000 * s.dist.rank + s.opt.step, s.cfg.run.deterministic)
    _say(
        s.dist,
        f"note: the checkpoint was written by {saved_world} processes, this run has {s.dist.world_size}: global batch "
        f"{s.cfg.data.batch_size * s.dist.world_size} from here on"
        + (f", continuing epoch {state.epoch + 1} at batch {state.batch}" if state.batch else "")
        + " (an exact resume needs the same number of processes)",
    )


def open_run_folder(s: TrainSetup, resume_path: Path | None, start_epoch: int) -> RunFolder:
    """Create the run folder and save the config, or, resuming, keep the run's original ``config.yaml`` and record
    what this session changed (:func:`imgcls.engine.runs.record_resume`); lock it, open metrics.csv and the tracker."""
    cfg, dist = s.cfg, s.dist
    path: Path | None = None
    lock = None
    if dist.is_main:
        path = resume_path.parent.parent if resume_path is not None else new_run_dir(cfg)
        lock = RunLock(path).acquire()
        stale = remove_stale_temp_files(path / "checkpoints")  # half-written by a killed process; we hold the lock
        if stale:
            _say(dist, f"removed {len(stale)} temp file(s) left by an interrupted checkpoint write")
        if resume_path is None or not (path / "config.yaml").is_file():
            save_config(cfg, path / "config.yaml")
        else:
            record_resume(path, cfg, from_epoch=start_epoch)
    path = Path(str(broadcast_object(str(path), dist)))
    _check_shared(path, dist)
    if not dist.is_main:
        return RunFolder(path=path, metrics=None, tracker=None)
    metrics = MetricsLog(path / "metrics.csv", keep=start_epoch if resume_path is not None else None)
    steps = None
    if cfg.run.log_interval > 0:
        steps = StepLog(path / "steps.csv", keep=s.opt.step if resume_path is not None else None)
    tracker = create_tracker(cfg.run.tracker, path, to_dict(cfg)) if cfg.run.tracker != "none" else None
    return RunFolder(path=path, metrics=metrics, tracker=tracker, lock=lock, steps=steps)


def _check_shared(path: Path, dist: DistInfo) -> None:
    """Every rank sees the run folder rank 0 made (a collective under DDP): ranks on other nodes read its checkpoints
    (resuming, and best.pt for the test evaluation), so on several machines ``run.dir`` must be a shared file system.

    Raises:
        ConfigError: on every rank together (none is left waiting in a collective), naming the ranks that cannot.
    """
    if not dist.enabled:
        return
    seen = gather_objects((path.is_dir(), socket.gethostname()), dist)
    blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(seen) if not ok]  # type: ignore[misc]
    if blind:
        raise ConfigError(
            f"bad value for 'run.dir': the run folder {path} that rank 0 made is not there for {', '.join(blind)}; "
            "with several machines set run.dir= to an absolute path on a file system every node mounts"
        )


# --------------------------------------------------------------------------------------------------------------------
# Stage 2: one epoch
# --------------------------------------------------------------------------------------------------------------------


def _say(dist: DistInfo, msg: str) -> None:
    if dist.is_main:
        print(msg, flush=True)


def _validate(s: TrainSetup, row: dict[str, Any]) -> float | None:
    """Validation (and EMA validation) metrics into ``row``; returns the monitored score (None: no val split)."""
    if s.loaders.val is None:
        return None
    tr = s.cfg.training
    kw = dict(
        device=s.device,
        num_classes=s.splits.num_classes,
        amp=tr.amp,
        amp_dtype=tr.amp_dtype,
        channels_last=tr.channels_last,
        distributed=s.dist.enabled,
        multilabel=s.multilabel,
    )
    val = scored = evaluate(s.model, s.loaders.val, **kw)
    row.update(val_loss=val.loss, val_acc=val.acc, val_top5=val.topk.get(5, ""))
    if s.multilabel:
        row["val_map"] = val.extra["map_macro"]
    if s.ema is not None:
        ema_val = evaluate(s.ema.module, s.loaders.val, **kw)
        row.update(ema_val_loss=ema_val.loss, ema_val_acc=ema_val.acc)
        if s.multilabel:
            row["ema_val_map"] = ema_val.extra["map_macro"]
        if tr.ema.use_for_best:
            scored = ema_val
    return _monitored(tr.early_stopping.monitor, scored)


def _monitored(monitor: str, result: EvalResult) -> float:
    """The number ``training.early_stopping.monitor`` names, of one validation."""
    if monitor == "val_map":
        return float(result.extra.get("map_macro") or 0.0)
    return result.acc if monitor == "val_acc" else result.loss


def run_epoch(
    s: TrainSetup, state: TrainState, progress: TrainProgress, run: RunFolder | None = None
) -> tuple[dict[str, Any], float | None]:
    """Train epoch ``state.epoch`` (from batch ``state.batch``: a mid-epoch resume) and validate. Returns (metrics
    row, monitored validation score or None). ``run``: where steps.csv and mid-epoch checkpoints go."""
    cfg, epoch = s.cfg, state.epoch
    tr = cfg.training
    if state.batch == 0 and epoch in tr.unfreeze_epochs and state.unfrozen < len(tr.unfreeze_epochs):
        if _unfreeze_one(s):
            _say(s.dist, f"epoch {epoch + 1}: unfroze one more layer group")
        state.unfrozen += 1
    set_epoch(s.loaders.train, epoch, start_batch=state.batch)
    progress.start_epoch(epoch, done_steps=state.batch // tr.accum_steps)
    steps = run.steps if run is not None else None
    checkpointer = _mid_epoch_checkpointer(s, state, run) if run is not None else None

    def on_step(batches_done: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        progress.step(-(-batches_done // tr.accum_steps))
        if checkpointer is not None and batches_done < len(s.loaders.train):  # the epoch's end writes its own
            checkpointer(batches_done, snapshot)

    def on_log(step: int, loss: float) -> None:
        progress.loss(loss)
        if steps is not None:
            steps.append({"step": step, "epoch": epoch + 1, "loss": loss, "lr": s.opt.optimizer.param_groups[0]["lr"]})

    opts = TrainOptions(
        device=s.device,
        amp=tr.amp,
        amp_dtype=tr.amp_dtype,
        accum_steps=tr.accum_steps,
        clip_grad_norm=tr.clip_grad_norm,
        channels_last=tr.channels_last,
        max_nonfinite_steps=tr.max_nonfinite_steps,
        log_interval=cfg.run.log_interval,
        batch_transform=s.loaders.batch_transform_for(epoch, tr.epochs),
        teacher=s.teacher,
        on_log=on_log,
        after_train_mode=freeze_bn_eval,
        start_batch=state.batch,
        resume_sums=state.epoch_sums,
        on_step=on_step,
        multilabel=s.multilabel,
        should_stop=_budget_check(s, state),
    )
    stats = train_one_epoch(s.train_model, s.loaders.train, s.opt, s.loss_fn, opts)
    state.batch, state.epoch_sums = 0, None
    state.train_seconds += stats.seconds  # the whole epoch's (a mid-epoch resume's sums carry the earlier part)
    _note_budget_stop(s, state, stats.stopped_at)
    if hasattr(s.opt.optimizer, "sync_lookahead"):
        s.opt.optimizer.sync_lookahead()  # evaluate and save the slow (lookahead) weights, as timm does
    if s.dist.enabled:
        sync_buffers(s.model)  # BatchNorm statistics differ per rank after the last step: take rank 0's
        # each rank measured its own shard: log the loss/accuracy (and throughput) of the whole epoch
        means, images = all_reduce_means({"loss": stats.loss, "acc": stats.acc}, stats.images)
        stats = dataclasses.replace(stats, loss=means["loss"], acc=means["acc"], images=images)
    assert_finite_state(s.model)  # on every rank (the models are equal), so they all stop together
    if s.ema is not None:
        assert_finite_state(s.ema.module, "EMA model")
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": stats.loss,
        "train_acc": stats.acc,
        "lr": s.opt.optimizer.param_groups[0]["lr"],
        "seconds": stats.seconds,
        "images_per_s": stats.images_per_s,
    }
    return row, _validate(s, row)


def _budget_check(s: TrainSetup, state: TrainState) -> Callable[[], bool] | None:
    """``should_stop`` for :func:`train_one_epoch` under ``training.max_minutes`` (None without a budget): True once
    the finished epochs' training seconds plus this epoch's so far reach the budget. Under DDP rank 0's clock decides
    (one small broadcast per step), so every rank stops at the same step."""
    minutes = s.cfg.training.max_minutes
    if minutes is None:
        return None
    before = state.train_seconds + float((state.epoch_sums or {}).get("seconds", 0.0))
    t0 = time.perf_counter()

    def should_stop() -> bool:
        due = before + time.perf_counter() - t0 >= minutes * 60
        return bool(broadcast_object(due, s.dist)) if s.dist.enabled else due

    return should_stop


def _note_budget_stop(s: TrainSetup, state: TrainState, stopped_at: int | None) -> None:
    """Record in ``state.budget_stop`` that the time budget ends the run after this epoch (cut at batch
    ``stopped_at``, or at its end when the budget ran out with its last step)."""
    minutes = s.cfg.training.max_minutes
    if (
        minutes is None
        or stopped_at is None
        and (
            state.train_seconds < minutes * 60 or state.epoch + 1 >= s.cfg.training.epochs  # the last epoch ends anyway
        )
    ):
        return
    batches = len(s.loaders.train)
    done = stopped_at if stopped_at is not None else batches
    state.budget_stop = {
        "max_minutes": minutes,
        "train_seconds": state.train_seconds,
        "epoch": state.epoch + 1,
        "batches": done,
        "batches_per_epoch": batches,
        "epochs_reached": state.epoch + done / batches,
    }


# --------------------------------------------------------------------------------------------------------------------
# Stage 3: per-epoch bookkeeping
# --------------------------------------------------------------------------------------------------------------------


def rank_states(s: TrainSetup, snapshot: Callable[[], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each rank's RNG states (and running epoch sums, mid-epoch), gathered on every rank: a collective, so every
    rank calls it. Saved so that every rank of a resumed run draws what it would have drawn."""
    return gather_objects({"rng": rng_state(), "epoch_sums": snapshot() if snapshot else None}, s.dist)  # type: ignore[return-value]


def _mid_epoch_checkpointer(
    s: TrainSetup, state: TrainState, run: RunFolder
) -> Callable[[int, Callable[[], dict[str, Any]]], None] | None:
    """``on_step`` for :func:`train_one_epoch` that writes a resumable last.pt inside the epoch every
    ``run.checkpoint_every`` steps or seconds (None: not configured)."""
    interval = checkpoint_interval(s.cfg.run.checkpoint_every)
    if interval is None:
        return None
    kind, every = interval
    last = time.perf_counter()

    def on_step(batches_done: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        nonlocal last
        if kind == "steps":
            due = s.opt.step % int(every) == 0
        else:  # rank 0's clock decides, so that all ranks take part in the gather below
            due = bool(broadcast_object(time.perf_counter() - last >= every, s.dist))
        if not due:
            return
        ranks = rank_states(s, snapshot)
        if s.dist.is_main:
            ckpt = {**checkpoint_state(s, state, {}, ranks), "batch": batches_done}
            _save(ckpt, run.path / "checkpoints" / "last.pt")
        last = time.perf_counter()

    return on_step


def checkpoint_state(
    s: TrainSetup, state: TrainState, metrics: dict[str, Any], ranks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The self-describing checkpoint of the run after ``state.epoch`` epochs (``ranks``: :func:`rank_states`,
    gathered by the caller under DDP)."""
    ranks = ranks if ranks is not None else rank_states(s)
    return {
        "format": FORMAT_VERSION,
        "model": s.model.state_dict(),
        "optimizer": s.opt.optimizer.state_dict(),
        "scaler": s.opt.scaler.state_dict() if s.opt.scaler is not None else None,
        "ema": s.ema.state_dict() if s.ema is not None else None,
        "schedule": {"plateau": s.plateau.state_dict()},
        "epoch": state.epoch,
        "step": s.opt.step,
        "rng": ranks[0]["rng"],
        "ranks": ranks,
        "config": to_dict(s.cfg),
        "classes": s.splits.classes,
        "multilabel": s.multilabel,
        "preprocess": s.preprocess.to_dict(),
        "metrics": metrics,
        "best": {"score": state.best_score, "epoch": state.best_epoch, "bad_epochs": state.bad_epochs},
        "elapsed_s": state.elapsed(),
        "versions": software_versions(),
        "git": git_state(),
        "data_fingerprint": s.data_fingerprint,
        "train_s": state.train_seconds,
    }


def _update_best(s: TrainSetup, state: TrainState, score: float | None) -> bool:
    """Advance the best score / early-stopping counters with this epoch's score; returns whether it improved."""
    es = s.cfg.training.early_stopping
    if score is None:
        improved = True  # no validation split: the latest weights are the best we know
    else:
        if s.cfg.training.scheduler.name == "plateau":
            s.plateau.update(score)
        maximise = es.monitor != "val_loss"
        improved = state.best_score is None or (
            score > state.best_score + es.min_delta if maximise else score < state.best_score - es.min_delta
        )
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
    else:
        state.bad_epochs += 1
    return improved


def _save(ckpt: dict[str, Any], path: Path) -> None:
    with writing(path):  # torch.save's errors (a full disk) name no file
        save_checkpoint(ckpt, path)


def _save_checkpoints(
    s: TrainSetup, state: TrainState, row: dict[str, Any], run: RunFolder, improved: bool, ranks: list[dict[str, Any]]
) -> None:
    ckpt = checkpoint_state(s, state, row, ranks)
    if improved:
        best = dict(ckpt)
        if s.ema is not None and s.cfg.training.ema.use_for_best:
            best["model"] = s.ema.module.state_dict()  # ship the averaged weights that scored best
            best["weights"] = "ema"
        _save(best, run.path / "checkpoints" / "best.pt")
    _save(ckpt, run.path / "checkpoints" / "last.pt")


def end_epoch(
    s: TrainSetup,
    state: TrainState,
    row: dict[str, Any],
    score: float | None,
    run: RunFolder,
    hooks: dict[str, Callable[..., Any]],
) -> bool:
    """Best score and early stopping, metrics.csv, tracker, checkpoints, the ``on_epoch_end`` hook. Returns whether
    training should stop now."""
    state.epoch += 1
    improved = _update_best(s, state, score)
    _say(s.dist, _epoch_line(row, s.cfg.training.epochs))
    ranks = rank_states(s)  # on every rank (a collective under DDP)
    if s.dist.is_main:
        assert run.metrics is not None
        run.metrics.append(row)
        if run.tracker is not None:
            run.tracker.log(row, step=state.epoch)
        _save_checkpoints(s, state, row, run, improved, ranks)
    barrier(s.dist)
    if "on_epoch_end" in hooks:
        hooks["on_epoch_end"](state.epoch - 1, row)
    es = s.cfg.training.early_stopping
    if es.patience is not None and state.bad_epochs >= es.patience:
        _say(
            s.dist,
            f"early stopping: no improvement of {es.monitor} for {es.patience} epochs (best at epoch "
            f"{state.best_epoch})",
        )
        state.stopped_early = True
    if state.budget_stop is not None and not state.stopped_early:
        b = state.budget_stop
        cut = "" if b["batches"] == b["batches_per_epoch"] else f" (batch {b['batches']} of {b['batches_per_epoch']})"
        _say(
            s.dist,
            f"time budget: stopped after {b['train_seconds'] / 60:.1f} of training.max_minutes={b['max_minutes']:g} "
            f"minutes of training, in epoch {b['epoch']}/{s.cfg.training.epochs}{cut}: {b['epochs_reached']:.2f} "
            "epochs reached",
        )
        return True
    return state.stopped_early


def _epoch_line(row: dict[str, Any], total: int) -> str:
    parts = [f"epoch {row['epoch']}/{total}", f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"]
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    if "val_map" in row:
        parts.append(f"val mAP {row['val_map']:.4f}")
    if "ema_val_acc" in row:
        parts.append(f"ema val acc {row['ema_val_acc']:.4f}")
    parts.append(f"lr {row['lr']:.3g}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s")
    return " | ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Stage 4: finish
# --------------------------------------------------------------------------------------------------------------------


def _test(s: TrainSetup, run: RunFolder) -> EvalResult | None:
    """The best checkpoint on the test split (loaded into ``s.model``), or None without a test split."""
    if not s.cfg.run.eval_test or s.loaders.test is None:
        return None
    tr = s.cfg.training
    best = load_checkpoint(run.path / "checkpoints" / "best.pt", map_location=s.device)
    s.model.load_state_dict(best["model"])
    thresholds = _tune_thresholds(s, run, best) if s.multilabel and s.cfg.run.tune_thresholds else None
    result = evaluate(
        s.model,
        s.loaders.test,
        device=s.device,
        num_classes=s.splits.num_classes,
        amp=tr.amp,
        amp_dtype=tr.amp_dtype,
        distributed=s.dist.enabled,
        tta=s.cfg.run.test_tta,
        channels_last=tr.channels_last,
        # kept for the report (the one evaluation at the end, shared by summary.json and report.html); under DDP
        # each rank holds only its shard, and the report evaluates again on rank 0
        return_outputs=not s.dist.enabled,
        multilabel=s.multilabel,
        thresholds=thresholds,
    )
    tta = f", TTA {s.cfg.run.test_tta} views" if s.cfg.run.test_tta > 1 else ""
    if s.multilabel:
        m = result.extra
        _say(
            s.dist,
            f"test mAP: {m['map_macro']:.4f} (micro {m['map_micro']:.4f}; at the tuned thresholds F1 macro "
            f"{m['f1_macro']:.4f}, subset accuracy {m['subset_accuracy']:.4f}, Hamming loss {m['hamming_loss']:.4f}"
            f"{tta}) from the best checkpoint (epoch {best['epoch']})",
        )
        return result
    _say(
        s.dist,
        f"test accuracy: {result.acc:.4f} (top-5 {result.topk.get(5, float('nan')):.4f}, loss "
        f"{result.loss:.4f}{tta}) from the best checkpoint (epoch {best['epoch']})",
    )
    return result


def _tune_thresholds(s: TrainSetup, run: RunFolder, best: dict[str, Any]) -> list[float] | None:
    """Per-label thresholds maximising F1 on the val split for the best weights (loaded in ``s.model``), written into
    best.pt (``thresholds``) for predict, serve and eval; None (0.5 for every label) without a val split."""
    if s.loaders.val is None:
        return None
    tr = s.cfg.training
    val = evaluate(
        s.model,
        s.loaders.val,
        device=s.device,
        num_classes=s.splits.num_classes,
        amp=tr.amp,
        amp_dtype=tr.amp_dtype,
        distributed=s.dist.enabled,
        channels_last=tr.channels_last,
        return_outputs=True,
        multilabel=True,
    )
    assert val.log_probs is not None and val.targets is not None
    thresholds = tune_thresholds(val.log_probs.exp(), val.targets)
    if s.dist.is_main:
        best["thresholds"] = thresholds
        _save({k: v for k, v in best.items() if k != "path"}, run.path / "checkpoints" / "best.pt")
    return thresholds


def finish(s: TrainSetup, state: TrainState, run: RunFolder) -> RunResult:
    """Test the best checkpoint, write ``summary.json``, close the tracker."""
    cfg = s.cfg
    test = _test(s, run)
    seconds = state.elapsed()  # across resumes
    summary = {
        "run_dir": str(run.path),
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "budget_stop": state.budget_stop,  # training.max_minutes ended the run: where (None: it did not)
        "train_seconds": state.train_seconds,
        "best_epoch": state.best_epoch,
        "best_val_" + cfg.training.early_stopping.monitor.removeprefix("val_"): state.best_score,
        "test_acc": test.acc if test else None,
        "test_top5": test.topk.get(5) if test else None,
        "test_loss": test.loss if test else None,
        "test_tta": cfg.run.test_tta if test else None,  # views averaged in those test numbers (1: no TTA)
        "params": sum(p.numel() for p in s.model.parameters()),
        "trainable_params": sum(p.numel() for p in s.model.parameters() if p.requires_grad),
        "seconds": seconds,
        "classes": s.splits.classes,
        "preprocess": s.preprocess.to_dict(),
        "bad_files": s.loaders.bad_files,
        "data_fingerprint": s.data_fingerprint.get("sha256"),
        "device": str(s.device),
        "world_size": s.dist.world_size,
    }
    if s.multilabel:
        summary["multilabel"] = True
        if test is not None:
            m = test.extra
            summary.update(
                {
                    f"test_{k}": m[k]
                    for k in ("map_macro", "map_micro", "f1_macro", "f1_micro", "subset_accuracy", "hamming_loss")
                }
            )
            summary["test_ap"] = dict(zip(s.splits.classes, m["ap"], strict=True))
            summary["thresholds"] = m["thresholds"]
    if s.dist.is_main:
        (run.path / "summary.json").write_text(json.dumps(summary, indent=2))
        if run.tracker is not None:
            run.tracker.close()
        _say(s.dist, f"done in {seconds:.1f}s; run folder: {run.path}")
    monitor_max = cfg.training.early_stopping.monitor != "val_loss"
    return RunResult(
        run_dir=run.path,
        best_val_acc=state.best_score if monitor_max else None,
        test=test,
        epochs_run=state.epoch,
        seconds=seconds,
        summary=summary,
    )


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------

#: a post-run step: ``(result, setup)`` after summary.json is written (rank 0 only), e.g. the HTML report
FinishHook = Callable[[RunResult, TrainSetup], None]


def train(
    cfg: Config,
    *,
    resume_path: Path | None = None,
    hooks: dict[str, Callable[..., Any]] | None = None,
    on_finish: tuple[FinishHook, ...] = (),
) -> RunResult:
    """Train a model as configured; returns where the run folder is and the final metrics.

    Args:
        cfg: the resolved config (checked here, before any work).
        resume_path: a checkpoint to resume from (see :func:`imgcls.engine.runs.resume_config`); defaults to
            ``cfg.run.resume``.
        hooks: optional callbacks: ``on_epoch_end(epoch, row)`` (e.g. Optuna pruning; raise to stop).
        on_finish: post-run steps, called on rank 0 with (result, setup) once the run is done.
    """
    check_config(cfg)
    check_run_paths(cfg)
    t_start = time.perf_counter()
    threads = apply_threads(cfg.run.threads)
    dist = init_distributed(device_type_for(cfg.run.device))
    run: RunFolder | None = None
    try:
        if resume_path is None and cfg.run.resume:
            resume_path = Path(cfg.run.resume)
        ckpt = load_checkpoint(resume_path) if resume_path is not None else None
        s = setup(cfg, dist)
        state = restore(s, ckpt)
        state.started = t_start  # this session's seconds include loading the data and building the model
        run = open_run_folder(s, resume_path, state.epoch)
        _announce(s, run, resume_path, ckpt, threads)
        _epoch_loop(s, state, run, hooks or {})
        result = finish(s, state, run)
        if dist.is_main:
            for hook in on_finish:
                hook(result, s)
        return result
    finally:
        if run is not None:
            run.close()
        cleanup_distributed()


def _announce(
    s: TrainSetup, run: RunFolder, resume_path: Path | None, ckpt: dict[str, Any] | None, threads: tuple[int, str]
) -> None:
    cfg, p, n = s.cfg, s.preprocess, sum(q.numel() for q in s.model.parameters())
    _say(s.dist, f"run folder: {run.path}")
    _say(
        s.dist,
        f"data: {cfg.data.name} train={len(s.splits.train)} val={len(s.splits.val or [])} "
        f"test={len(s.splits.test or [])} classes={s.splits.num_classes} input={p.in_chans}x{p.image_size}x"
        f"{p.image_size} | model: {cfg.model.name} ({n / 1e6:.2f}M params) | device: {s.device}"
        + (f" ({threads[0]} thread{'s' if threads[0] > 1 else ''}: {threads[1]})" if s.device.type == "cpu" else ""),
    )
    if s.loaders.note:
        _say(s.dist, s.loaders.note)
    for note in s.notes:
        _say(s.dist, note)
    warning = warmup_warning(cfg.training.scheduler, epochs=cfg.training.epochs)
    if warning:
        _say(s.dist, f"warning: {warning}")
    if ckpt is not None:
        within = f", batch {ckpt['batch']} of epoch {ckpt['epoch'] + 1}" if ckpt.get("batch") else ""
        _say(s.dist, f"resumed from {resume_path} at epoch {ckpt['epoch']} (step {ckpt['step']}{within})")


def _epoch_loop(s: TrainSetup, state: TrainState, run: RunFolder, hooks: dict[str, Callable[..., Any]]) -> None:
    tr = s.cfg.training
    progress = TrainProgress(
        s.cfg.run.progress and s.dist.is_main,
        total_epochs=tr.epochs,
        steps_per_epoch=s.steps_per_epoch,
        images_per_step=s.cfg.data.batch_size * tr.accum_steps * s.dist.world_size,
        interval=s.cfg.run.progress_interval,
    )
    try:
        while state.epoch < s.cfg.training.epochs:
            row, score = run_epoch(s, state, progress, run)
            if end_epoch(s, state, row, score, run, hooks):
                break
    except BaseException:
        if run.tracker is not None:
            run.tracker.close()  # flush what was logged before the failure (a crash or a pruned Optuna trial)
        raise
    finally:
        progress.stop()
