"""``train(cfg)``: wire config -> data -> model -> engine -> run folder. No Trainer class: a straight-line function
whose pieces (``build_data``, ``build_model_for``, ``train_one_epoch``, ``evaluate``, checkpoints) are usable alone.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import (
    Config,
    ConfigError,
    build_config,
    from_dict,
    parse_override,
    save_config,
    set_value,
    to_dict,
    validate_config,
)
from imgcls.data.datasets import Splits, SplitView, load_dataset, make_splits
from imgcls.data.loaders import PreprocessInfo, set_epoch
from imgcls.engine.checkpoint import FORMAT_VERSION, atomic_save, load_checkpoint, rng_state, set_rng_state
from imgcls.engine.distributed import (
    DistInfo,
    all_reduce_means,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    select_device,
    sync_buffers,
)
from imgcls.engine.ema import ModelEma
from imgcls.engine.loop import EvalResult, assert_finite_state, evaluate, needs_grad_scaler, train_one_epoch
from imgcls.engine.losses import build_loss
from imgcls.engine.optim import build_optimizer
from imgcls.engine.schedules import PlateauState, lr_multiplier
from imgcls.models import create_model

log = logging.getLogger("imgcls")

METRIC_FIELDS = [
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "ema_val_loss", "ema_val_acc", "lr",
    "seconds", "images_per_s",
]  # fmt: skip


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


def build_splits(cfg: Config) -> Splits:
    """Load the configured dataset and derive its deterministic splits."""
    raw = load_dataset(cfg.data.name, root=cfg.data.root, download=cfg.data.download, in_chans=cfg.data.in_chans)
    return make_splits(
        raw, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
        seed=cfg.run.seed if cfg.data.split_seed is None else cfg.data.split_seed,
        subset=cfg.data.subset, imbalance=cfg.data.imbalance, mean=cfg.data.mean, std=cfg.data.std,
    )  # fmt: skip


def model_kwargs(cfg: Config, entry: Callable[..., Any] | None, image_size: int | None) -> dict[str, Any]:
    """Config -> keyword arguments for a model entry point, keeping only those it accepts (None = its default)."""
    wanted: dict[str, Any] = {
        "activation": cfg.model.activation, "dropout_rate": cfg.model.dropout_rate,
        "drop_path_rate": cfg.model.drop_path_rate, "stem": cfg.model.stem, "image_size": image_size,
        **cfg.model.kwargs,
    }  # fmt: skip
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if entry is None:  # timm models take what timm takes
        return wanted
    params = inspect.signature(entry).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    unsupported = [k for k in wanted if k not in params and k != "image_size"]
    if unsupported:
        raise ConfigError(
            f"model '{cfg.model.name}' does not take {', '.join(unsupported)}; it takes: "
            f"{', '.join(p for p in params if p not in ('num_classes', 'in_chans'))}"
        )
    return {k: v for k, v in wanted.items() if k in params}


def build_model_for(cfg: Config, num_classes: int, in_chans: int, image_size: int | None) -> nn.Module:
    """Create the configured model and load pretrained weights if asked."""
    from imgcls.models import MODELS

    entry = None if cfg.model.name.startswith("timm:") else MODELS.get(cfg.model.name)
    kwargs = model_kwargs(cfg, entry, image_size)
    pretrained = cfg.model.pretrained
    builtin_pretrained = (
        pretrained is True and entry is not None and "pretrained" in inspect.signature(entry).parameters
    )
    if pretrained is True and (entry is None or builtin_pretrained):
        kwargs["pretrained"] = True  # the entry point (timm / efficientnet_lite) loads its own published weights
    model = create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained and "pretrained" not in kwargs:
        from imgcls.models.pretrained import load_pretrained

        load_pretrained(model, pretrained)
    return model


def resolve_preprocess(cfg: Config, splits: Splits, model: nn.Module) -> PreprocessInfo:
    """Input size, channels and normalisation: explicit config first, then pretrained weights, then the data."""
    data_cfg: dict[str, Any] = getattr(model, "data_cfg", {}) or {}
    from_weights = bool(cfg.model.pretrained)
    native = splits.train.source.image_size
    if cfg.data.image_size is not None:
        size = cfg.data.image_size
    elif from_weights and data_cfg.get("input_size"):
        size = int(data_cfg["input_size"][-1])
    elif native is not None:
        size = int(native[0])
    else:
        size = 224
    mean, std = splits.mean, splits.std
    if cfg.data.mean is None and from_weights and data_cfg.get("mean") is not None:
        mean, std = list(data_cfg["mean"]), list(data_cfg["std"])
    in_chans = cfg.data.in_chans or splits.in_chans
    if len(mean) != in_chans:  # e.g. grayscale data fed to an RGB model: repeat the statistics
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return PreprocessInfo(
        image_size=size, in_chans=in_chans, mean=[float(m) for m in mean], std=[float(s) for s in std],
        interpolation=str(data_cfg.get("interpolation", "bilinear")) if from_weights else "bilinear",
        resize=native is None or tuple(native) != (size, size),
    )  # fmt: skip


def data_init_sample(splits: Splits, eval_transform: Callable[[torch.Tensor], torch.Tensor], *, max_images: int = 5000,
                     max_files: int = 1000) -> torch.Tensor:  # fmt: skip
    """The first training images, preprocessed as for evaluation (no augmentation): float [N, C, S, S].

    Used by data-dependent initialisation (``model.init_from_data``, e.g. airbench's whitening stem). Taken from the
    split itself rather than the train loader, so it is the same on every DDP rank and consumes no random numbers.
    File datasets are decoded per image, so fewer of them are used.
    """
    view = splits.train
    if view.in_memory:  # gather only the first rows, not a copy of the whole split; v2 ops work on a batch
        return eval_transform(SplitView(view.source, view.indices[:max_images]).images())
    return torch.stack([eval_transform(view.get(i)[0]) for i in range(min(max_files, len(view)))])


def class_weights_for(splits: Splits) -> torch.Tensor:
    """Inverse-frequency class weights of the train split, normalised to mean 1 ("balanced")."""
    from imgcls.data.samplers import get_class_weights

    return get_class_weights(splits.train.targets, splits.num_classes)


# --------------------------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------------------------


def new_run_dir(cfg: Config) -> Path:
    name = cfg.run.name or cfg.preset or cfg.model.name.replace(":", "_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.run.dir) / f"{name}-{stamp}"
    i = 1
    while path.exists():
        path = Path(cfg.run.dir) / f"{name}-{stamp}-{i}"
        i += 1
    (path / "checkpoints").mkdir(parents=True)
    return path


def find_resume_checkpoint(resume: str, cfg: Config) -> Path | None:
    """``auto``: last.pt of the newest unfinished run with this name; a run folder: its last.pt; or a file."""
    if resume == "auto":
        name = cfg.run.name or cfg.preset or cfg.model.name.replace(":", "_")
        candidates = sorted(
            (p for p in Path(cfg.run.dir).glob(f"{name}-*") if (p / "checkpoints" / "last.pt").is_file()),
            key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime,
        )
        unfinished = [p for p in candidates if not (p / "summary.json").is_file()]
        return unfinished[-1] / "checkpoints" / "last.pt" if unfinished else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    return path


def resume_config(cli_cfg: Config, overrides: Sequence[str]) -> tuple[Config, Path | None]:
    """For ``run.resume``: the checkpoint's saved config with this command line's explicit overrides re-applied.

    So ``imgcls train run.resume=auto`` alone continues the run as it was configured, and adding
    ``training.epochs=30`` extends it.
    """
    if not cli_cfg.run.resume:
        return cli_cfg, None
    path = find_resume_checkpoint(cli_cfg.run.resume, cli_cfg)
    if path is None:
        log.info("run.resume=auto: no unfinished run to resume; starting a new one")
        cli_cfg.run.resume = None
        return cli_cfg, None
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    cfg.run.resume = str(path)
    return cfg, path


class MetricsLog:
    """metrics.csv (one row per epoch, appended so a resumed run continues the same file)."""

    def __init__(self, path: Path, keep_epochs: int | None = None) -> None:
        self.path = path
        if keep_epochs is not None and path.is_file():
            # a resume after a crash: drop rows of epochs after the checkpoint (they will be redone)
            rows = [r for r in self.read() if int(r["epoch"]) <= keep_epochs]
            self._write_all(rows)

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in METRIC_FIELDS})


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    run_dir: Path
    best_val_acc: float | None
    test: EvalResult | None
    epochs_run: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


class _Progress:
    """A rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.bar = None
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("train", total=1, info="")

    def start_epoch(self, epoch: int, total_epochs: int, steps: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.task, total=steps, description=f"epoch {epoch + 1}/{total_epochs}", info="")

    def log(self, step_in_epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step_in_epoch, info=f"loss {loss:.4f}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _say(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, flush=True)


def train(cfg: Config, *, resume_path: Path | None = None, hooks: dict[str, Callable[..., Any]] | None = None
          ) -> RunResult:  # fmt: skip
    """Train a model as configured; returns where the run folder is and the final metrics.

    Args:
        cfg: the resolved config (validated here, before any work).
        resume_path: a checkpoint to resume from (see :func:`resume_config`); defaults to ``cfg.run.resume``.
        hooks: optional callbacks: ``on_epoch_end(epoch, row)`` (e.g. Optuna pruning; raise to stop).
    """
    validate_config(cfg)
    hooks = hooks or {}
    t_start = time.perf_counter()
    device_type = (
        "cuda"
        if cfg.run.device.startswith("cuda") or (cfg.run.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )  # noqa: E501
    dist_info = init_distributed(device_type)
    try:
        return _train(cfg, dist_info, resume_path, hooks, t_start)
    finally:
        cleanup_distributed()


def _train(cfg: Config, dist_info: DistInfo, resume_path: Path | None, hooks: dict[str, Callable[..., Any]],
           t_start: float) -> RunResult:  # fmt: skip
    from imgcls.data.build import build_loaders  # the loader factory (torch / device paths)
    from imgcls.models.transfer import apply_freezing, freeze_bn_eval, unfreeze_next_group

    device = select_device(cfg.run.device, dist_info)
    # the same seed on every rank: identical initial weights (DDP broadcasts them anyway, but the EMA copy is made
    # before DDP wraps the model); per-rank seeds for augmentation are set just before training starts
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    if resume_path is None and cfg.run.resume:
        resume_path = Path(cfg.run.resume)
    ckpt = load_checkpoint(resume_path) if resume_path is not None else None

    # ---- data & model ---------------------------------------------------------------------------------------------
    splits = build_splits(cfg)
    in_chans = cfg.data.in_chans or splits.in_chans
    native = splits.train.source.image_size
    # the input size the model is built for: explicit, else the data's own; file datasets default to 224 px unless
    # pretrained weights bring their own size (resolve_preprocess then reads it from the model)
    size_hint = cfg.data.image_size or (native[0] if native else (None if cfg.model.pretrained else 224))
    model = build_model_for(cfg, splits.num_classes, in_chans, size_hint)
    preprocess = resolve_preprocess(cfg, splits, model)
    apply_freezing(model, freeze_backbone=cfg.model.freeze_backbone, freeze_layers=cfg.model.freeze_layers)
    model.to(device)
    if cfg.training.channels_last:
        model.to(memory_format=torch.channels_last)
    loaders = build_loaders(cfg, splits, preprocess, device=device, dist_info=dist_info)
    steps_per_epoch = max(1, -(-len(loaders.train) // cfg.training.accum_steps))
    if hasattr(model, "init_from_data") and not cfg.model.pretrained:
        # data-dependent init before the optimizer sees the parameters (it may freeze some); on resume the
        # checkpoint's weights then replace the values, and the frozen set matches the one the run started with
        model.init_from_data(data_init_sample(splits, loaders.eval_transform).to(device))
    total_steps = steps_per_epoch * cfg.training.epochs

    class_weights = class_weights_for(splits).to(device) if cfg.training.loss.class_weights == "balanced" else None
    loss_fn: Callable[..., torch.Tensor] = build_loss(cfg.training.loss, class_weights).to(device)
    teacher = None
    if cfg.training.distill.teacher:
        from imgcls.engine.losses import DistillationLoss
        from imgcls.evaluate.infer import load_model

        teacher = load_model(cfg.training.distill.teacher, device=device)[0].eval()
        loss_fn = DistillationLoss(
            loss_fn, temperature=cfg.training.distill.temperature, alpha=cfg.training.distill.alpha
        )

    optimizer = build_optimizer(model, cfg.training.optimizer)
    scaler = (
        torch.amp.GradScaler("cuda") if needs_grad_scaler(device, cfg.training.amp, cfg.training.amp_dtype) else None
    )
    ema = ModelEma(model, cfg.training.ema.decay, cfg.training.ema.warmup) if cfg.training.ema.enabled else None
    plateau = PlateauState(
        gamma=cfg.training.scheduler.gamma, patience=cfg.training.scheduler.patience,
        mode="max" if cfg.training.early_stopping.monitor == "val_acc" else "min",
    )  # fmt: skip

    start_epoch, step, best_score, best_epoch, bad_epochs = 0, 0, None, -1, 0
    unfrozen = 0
    if ckpt is not None:
        # re-apply the gradual unfreezing that had happened before the checkpoint, so the optimizer's groups match
        for e in cfg.training.unfreeze_epochs:
            if e < ckpt["epoch"]:
                unfreeze_next_group(model, optimizer, lr=cfg.training.optimizer.lr,
                                    weight_decay=cfg.training.optimizer.weight_decay,
                                    backbone_lr_mult=cfg.training.optimizer.backbone_lr_mult,
                                    bias_lr_mult=cfg.training.optimizer.bias_lr_mult)  # fmt: skip
                unfrozen += 1
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        if ckpt.get("schedule"):
            plateau.load_state_dict(ckpt["schedule"]["plateau"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        best_score, best_epoch, bad_epochs = ckpt["best"]["score"], ckpt["best"]["epoch"], ckpt["best"]["bad_epochs"]
        set_rng_state(ckpt["rng"])
    if dist_info.enabled and ckpt is None:
        seed_everything(cfg.run.seed + dist_info.rank, cfg.run.deterministic)  # per-rank augmentation draws

    train_model: nn.Module = model
    if cfg.training.compile:
        train_model = torch.compile(model)
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # ---- run folder (rank 0 writes; other ranks only learn the path) -----------------------------------------------
    run_dir: Path | None = None
    if dist_info.is_main:
        run_dir = resume_path.parent.parent if resume_path is not None else new_run_dir(cfg)
        save_config(cfg, run_dir / "config.yaml")
    run_dir = Path(str(broadcast_object(str(run_dir), dist_info)))
    metrics_log = (
        MetricsLog(run_dir / "metrics.csv", keep_epochs=start_epoch if ckpt is not None else None)
        if dist_info.is_main else None
    )  # fmt: skip
    tracker = None
    if dist_info.is_main and cfg.run.tracker != "none":
        from imgcls.engine.tracking import create_tracker

        tracker = create_tracker(cfg.run.tracker, run_dir, to_dict(cfg))
    _say(dist_info, f"run folder: {run_dir}")
    _say(dist_info, f"data: {cfg.data.name} train={len(splits.train)} val={len(splits.val or [])} "
                    f"test={len(splits.test or [])} classes={splits.num_classes} input={preprocess.in_chans}x"
                    f"{preprocess.image_size}x{preprocess.image_size} | model: {cfg.model.name} "
                    f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) | device: {device}")  # fmt: skip
    if ckpt is not None:
        _say(dist_info, f"resumed from {resume_path} at epoch {start_epoch} (step {step})")

    def checkpoint_state(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": ema.state_dict() if ema is not None else None, "schedule": {"plateau": plateau.state_dict()},
            "epoch": epoch, "step": step, "rng": rng_state(), "config": to_dict(cfg), "classes": splits.classes,
            "preprocess": preprocess.to_dict(), "metrics": metrics,
            "best": {"score": best_score, "epoch": best_epoch, "bad_epochs": bad_epochs},
        }  # fmt: skip

    sched = cfg.training.scheduler

    def lr_at(s: int) -> float:
        return lr_multiplier(s, total_steps=total_steps, steps_per_epoch=steps_per_epoch, cfg=sched,
                             plateau_mult=plateau.mult)  # fmt: skip

    progress = _Progress(cfg.run.progress and dist_info.is_main)
    monitor_max = cfg.training.early_stopping.monitor == "val_acc"
    stopped_early = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.training.epochs):
            if epoch in cfg.training.unfreeze_epochs and unfrozen < len(cfg.training.unfreeze_epochs):
                opt_cfg = cfg.training.optimizer
                if unfreeze_next_group(model, optimizer, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay,
                                       backbone_lr_mult=opt_cfg.backbone_lr_mult,
                                       bias_lr_mult=opt_cfg.bias_lr_mult):  # fmt: skip
                    for group in optimizer.param_groups:
                        group.setdefault("initial_lr", group["lr"])
                    _say(dist_info, f"epoch {epoch + 1}: unfroze one more layer group")
                unfrozen += 1
            set_epoch(loaders.train, epoch)
            batch_transform = loaders.batch_transform_for(epoch, cfg.training.epochs)
            progress.start_epoch(epoch, cfg.training.epochs, steps_per_epoch)
            epoch_start_step = step
            stats = train_one_epoch(
                train_model, loaders.train, optimizer, loss_fn, device=device, start_step=step, lr_at=lr_at,
                amp=cfg.training.amp, amp_dtype=cfg.training.amp_dtype, scaler=scaler,
                accum_steps=cfg.training.accum_steps, clip_grad_norm=cfg.training.clip_grad_norm,
                batch_transform=batch_transform, ema=ema, teacher=teacher, channels_last=cfg.training.channels_last,
                max_nonfinite_steps=cfg.training.max_nonfinite_steps, log_interval=cfg.run.log_interval,
                on_log=lambda s, loss, s0=epoch_start_step: progress.log(s - s0, loss),
                after_train_mode=freeze_bn_eval,
            )  # fmt: skip
            step += stats.steps
            if hasattr(optimizer, "sync_lookahead"):
                optimizer.sync_lookahead()  # evaluate and save the slow (lookahead) weights, as timm does
            if dist_info.enabled:
                sync_buffers(model)  # BatchNorm statistics differ per rank after the last step: take rank 0's
                # each rank measured its own shard: log the loss/accuracy (and throughput) of the whole epoch
                means, images = all_reduce_means({"loss": stats.loss, "acc": stats.acc}, stats.images)
                stats = dataclasses.replace(stats, loss=means["loss"], acc=means["acc"], images=images)
            assert_finite_state(model)  # on every rank (the models are equal), so they all stop together
            if ema is not None:
                assert_finite_state(ema.module, "EMA model")
            row: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.acc,
                "lr": optimizer.param_groups[0]["lr"], "seconds": stats.seconds, "images_per_s": stats.images_per_s,
            }  # fmt: skip
            eval_kw = dict(device=device, num_classes=splits.num_classes, amp=cfg.training.amp,
                           amp_dtype=cfg.training.amp_dtype, channels_last=cfg.training.channels_last,
                           distributed=dist_info.enabled)  # fmt: skip
            score_source = None
            if loaders.val is not None:
                val = evaluate(model, loaders.val, **eval_kw)
                row.update(val_loss=val.loss, val_acc=val.acc, val_top5=val.topk.get(5, ""))
                score_source = val
                if ema is not None:
                    ema_val = evaluate(ema.module, loaders.val, **eval_kw)
                    row.update(ema_val_loss=ema_val.loss, ema_val_acc=ema_val.acc)
                    if cfg.training.ema.use_for_best:
                        score_source = ema_val
            if score_source is not None:
                score = score_source.acc if monitor_max else score_source.loss
                if sched.name == "plateau":
                    plateau.update(score)
                min_delta = cfg.training.early_stopping.min_delta
                improved = best_score is None or (
                    score > best_score + min_delta if monitor_max else score < best_score - min_delta
                )
            else:
                score, improved = None, True  # no validation split: the latest weights are the best we know
            if improved:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
            else:
                bad_epochs += 1
            _say(dist_info, _epoch_line(row, cfg.training.epochs))
            if dist_info.is_main:
                metrics_log.append(row)
                if tracker is not None:
                    tracker.log(row, step=epoch + 1)
                state = checkpoint_state(epoch + 1, row)
                if improved:
                    best_state = dict(state)
                    if ema is not None and cfg.training.ema.use_for_best:
                        best_state["model"] = ema.module.state_dict()  # ship the averaged weights that scored best
                        best_state["weights"] = "ema"
                    atomic_save(best_state, run_dir / "checkpoints" / "best.pt")
                atomic_save(state, run_dir / "checkpoints" / "last.pt")
            barrier(dist_info)
            if "on_epoch_end" in hooks:
                hooks["on_epoch_end"](epoch, row)
            patience = cfg.training.early_stopping.patience
            if patience is not None and bad_epochs >= patience:
                _say(dist_info, f"early stopping: no improvement of {cfg.training.early_stopping.monitor} for "
                                f"{patience} epochs (best at epoch {best_epoch})")  # fmt: skip
                stopped_early = True
                break
    except BaseException:
        if tracker is not None:
            tracker.close()  # flush what was logged before the failure (a crash or a pruned Optuna trial)
        raise
    finally:
        progress.stop()

    # ---- test on the best checkpoint ------------------------------------------------------------------------------
    test_result = None
    if cfg.run.eval_test and loaders.test is not None:
        best = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)
        model.load_state_dict(best["model"])
        test_result = evaluate(model, loaders.test, device=device, num_classes=splits.num_classes, amp=cfg.training.amp,
                               amp_dtype=cfg.training.amp_dtype, distributed=dist_info.enabled,
                               tta=cfg.run.test_tta, channels_last=cfg.training.channels_last)  # fmt: skip
        _say(dist_info, f"test accuracy: {test_result.acc:.4f} (top-5 {test_result.topk.get(5, float('nan')):.4f}, "
                        f"loss {test_result.loss:.4f}) from the best checkpoint (epoch {best['epoch']})")  # fmt: skip
    seconds = time.perf_counter() - t_start
    summary = {
        "run_dir": str(run_dir), "model": cfg.model.name, "dataset": cfg.data.name, "epochs_run": epoch + 1,
        "stopped_early": stopped_early, "best_epoch": best_epoch,
        "best_val_" + cfg.training.early_stopping.monitor.removeprefix("val_"): best_score,
        "test_acc": test_result.acc if test_result else None,
        "test_top5": test_result.topk.get(5) if test_result else None,
        "test_loss": test_result.loss if test_result else None,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds": seconds, "classes": splits.classes, "preprocess": preprocess.to_dict(),
        "bad_files": loaders.bad_files, "device": str(device), "world_size": dist_info.world_size,
    }  # fmt: skip
    if dist_info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if tracker is not None:
            tracker.close()
        _say(dist_info, f"done in {seconds:.1f}s; run folder: {run_dir}")
        if cfg.run.report and (splits.test is not None or splits.val is not None):
            from imgcls.evaluate.report import write_run_report

            write_run_report(run_dir, model=model, splits=splits, eval_transform=loaders.eval_transform, device=device,
                             tta=cfg.run.test_tta)
    return RunResult(run_dir=run_dir, best_val_acc=best_score if monitor_max else None, test=test_result,
                     epochs_run=epoch + 1, seconds=seconds, summary=summary)  # fmt: skip


def _epoch_line(row: dict[str, Any], total: int) -> str:
    parts = [f"epoch {row['epoch']}/{total}", f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"]
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    if "ema_val_acc" in row:
        parts.append(f"ema val acc {row['ema_val_acc']:.4f}")
    parts.append(f"lr {row['lr']:.3g}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s")
    return " | ".join(parts)


def train_from_cli(preset: str | None, overrides: Sequence[str]) -> RunResult:
    """Config from a preset and overrides (resume-aware), then :func:`train`."""
    cfg = build_config(preset, overrides)
    cfg, resume_path = resume_config(cfg, overrides)
    return train(cfg, resume_path=resume_path)
