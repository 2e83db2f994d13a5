"""Config -> splits, preprocessing and loaders: the one place that decides how batches are made for training and
evaluation.

Before any loader is built, image files of file-backed splits (ImageFolder) are checked once
(:func:`drop_bad_files`) by the decode policy of :mod:`imgcls.data.images`: bad files are dropped from the splits
and listed with their reasons in ``Loaders.bad_files`` (and so in the run summary), together with those an archive
skipped while loading; more than ``data.max_bad_fraction`` of them stops the run. A
pre-scan, rather than skipping inside ``__getitem__``, keeps the epoch length and the sample order deterministic and
needs no way to report from DataLoader worker processes back to the main one.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from imgcls.config import Config, ConfigError
from imgcls.data.batch import build_mixer
from imgcls.data.datasets import FileSource, Splits, SplitView, load_dataset, make_splits
from imgcls.data.device_loader import build_device_loaders
from imgcls.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadFile,
    check_bad_files,
    image_problem,
)
from imgcls.data.images import (
    TooManyBadFilesError as TooManyBadFilesError,  # re-exported: where callers of build_loaders catch it
)
from imgcls.data.loaders import (
    BatchTransform,
    Loaders,
    PreprocessInfo,
    ResumableBatchSampler,
    TransformDataset,
    epoch_sampler,
    make_loader,
)
from imgcls.data.samplers import BalancedBatchSampler
from imgcls.data.transforms import AUGMENTATIONS, augmentations_for, build_eval_transform, build_train_transform

log = logging.getLogger(__name__)


def build_splits(cfg: Config) -> Splits:
    """Load the configured dataset and derive its deterministic splits (``data.split_seed``, else ``run.seed``).

    Raises:
        ConfigError: ``data.subset`` / ``data.val_fraction`` / ``data.test_fraction`` leave a split smaller than the
            class count (which only the loaded data knows).
    """
    d = cfg.data
    raw = load_dataset(
        d.name,
        root=d.root,
        download=d.download,
        in_chans=d.in_chans,
        max_image_pixels=d.max_image_pixels,
        # what a manifest reads (other entry points take **_ and ignore them)
        path_column=d.path_column,
        label_column=d.label_column,
        split_column=d.split_column,
        label_delimiter=d.label_delimiter,
        classes=d.classes,
        multilabel=d.multilabel,
    )
    multi = raw.train.targets.ndim == 2
    if d.multilabel is True and not multi:
        raise ConfigError(
            f"data.multilabel=true, but data.name={d.name} has one label per image; use data.name=manifest (a label "
            "column with several labels) or a multi-label dataset such as digit_pairs"
        )
    if multi and d.sampler == "balanced":
        raise ConfigError(
            "data.sampler=balanced draws class-balanced batches of single-label data; for multi-label data use "
            "training.loss.class_weights=balanced (positive-class weights) instead"
        )
    try:
        return make_splits(
            raw,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            seed=cfg.run.seed if d.split_seed is None else d.split_seed,
            subset=d.subset,
            imbalance=d.imbalance,
            mean=d.mean,
            std=d.std,
            folds=d.folds,
            fold=d.fold,
        )
    except ValueError as e:  # scikit-learn refuses a split with fewer samples than classes, or an empty one
        if "size" not in str(e) and "n_samples" not in str(e):
            raise
        raise ConfigError(
            f"data.subset={d.subset}, data.val_fraction={d.val_fraction:g} and data.test_fraction={d.test_fraction:g} "
            f"do not fit {d.name}'s {len(raw.classes)} classes: {e}"
        ) from e


#: the largest input side that the data alone chooses (image files of different sizes, no data.image_size)
MAX_DATA_IMAGE_SIZE = 224


def data_image_size(splits: Splits) -> int | None:
    """The input side the data suggests: its own size (in-memory images of one size), else the median shorter side of
    a sample of its files, at most :data:`MAX_DATA_IMAGE_SIZE`; None when neither is known."""
    native = splits.train.source.image_size
    if native is not None:
        return int(native[0])
    typical = splits.train.source.typical_size() if isinstance(splits.train.source, FileSource) else None
    return min(typical, MAX_DATA_IMAGE_SIZE) if typical else None


def choose_loader(cfg: Config, splits: Splits, preprocess: PreprocessInfo) -> tuple[str, str]:
    """The batch path for ``data.loader``: ("torch" | "device", why). ``auto`` takes the device loader when every
    split is one in-memory tensor and every augmentation that is on has a batch form, else the DataLoader, and says
    why in the second item ("" when there is nothing to say)."""
    if cfg.data.loader != "auto":
        return cfg.data.loader, ""
    views = (splits.train, splits.val, splits.test)
    if any(v is not None and len(v) and not v.in_memory for v in views):
        return "torch", f"data.loader=auto: the DataLoader, as data.name={cfg.data.name} is read from image files"
    on = augmentations_for(cfg.augmentation.train, image_size=preprocess.image_size, in_chans=preprocess.in_chans)
    per_sample = [name for name, _ in on if not AUGMENTATIONS.meta(name)["device"]]
    if per_sample:
        keys = ", ".join(f"augmentation.train.{name}" for name in per_sample)
        return "torch", f"data.loader=auto: the DataLoader, as {keys} has no batch form on the device"
    return "device", ""


def resolve_preprocess(cfg: Config, splits: Splits, model: Any = None) -> PreprocessInfo:
    """Input size, channels and normalisation: explicit config first, then pretrained weights, then the data
    (:func:`data_image_size`; 224 px when it says nothing).

    Args:
        cfg: the config (``data.image_size``, ``data.in_chans``, ``data.mean``/``std``, ``model.pretrained``).
        splits: the data (native size, channels, train statistics).
        model: the built model, whose ``data_cfg`` (timm's input size, mean, std, interpolation) counts when
            pretrained weights are loaded; None to decide from the config and the data alone.
    """
    data_cfg: dict[str, Any] = getattr(model, "data_cfg", {}) or {}
    from_weights = bool(cfg.model.pretrained)
    native = splits.train.source.image_size
    if cfg.data.image_size is not None:
        size = cfg.data.image_size
    elif from_weights and data_cfg.get("input_size"):
        size = int(data_cfg["input_size"][-1])
    else:
        size = data_image_size(splits) or 224
    mean, std = splits.mean, splits.std
    if cfg.data.mean is None and from_weights and data_cfg.get("mean") is not None:
        mean, std = list(data_cfg["mean"]), list(data_cfg["std"])
    in_chans = cfg.data.in_chans or splits.in_chans
    if len(mean) != in_chans:  # e.g. grayscale data fed to an RGB model: repeat the statistics
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return PreprocessInfo(
        image_size=size,
        in_chans=in_chans,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        interpolation=str(data_cfg.get("interpolation", "bilinear")) if from_weights else "bilinear",
        resize=native is None or tuple(native) != (size, size),
    )


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation sharding for DDP without padding: rank r takes indices r, r+W, r+2W, ... so that the all-reduced
    sums count every sample exactly once (DistributedSampler would pad with duplicates)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(
    view: SplitView, transform: Callable, *, batch_size: int, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> Any:
    """A deterministic loader over a split (sharded without padding when ``world_size`` > 1, for DDP)."""
    sampler = ShardSampler(len(view), rank, world_size) if world_size > 1 else None
    return make_loader(
        TransformDataset(view, transform), batch_size=batch_size, sampler=sampler, num_workers=num_workers
    )


def build_mix(cfg: Config, num_classes: int) -> BatchTransform | None:
    """CutMix / MixUp / switching between them, from ``augmentation.mix`` (None when both alphas are 0)."""
    mix = cfg.augmentation.mix
    if mix.cutmix_alpha <= 0 and mix.mixup_alpha <= 0:
        return None
    return build_mixer(mix, num_classes)


def find_bad_files(
    paths: Sequence[str],
    *,
    in_chans: int = 3,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    num_threads: int | None = None,
) -> dict[str, str]:
    """``{path: reason}`` for the files in ``paths`` that the one decode policy rejects (:func:`image_problem`;
    threads: Pillow releases the GIL)."""
    threads = num_threads or min(8, os.cpu_count() or 1)
    check = functools.partial(image_problem, in_chans=in_chans, max_pixels=max_pixels)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(check, paths, chunksize=64))
    return {p: r for p, r in zip(paths, reasons, strict=True) if r is not None}


def drop_bad_files(splits: Splits, *, max_bad_fraction: float, num_threads: int | None = None) -> list[BadFile]:
    """Check every image file the splits use; drop bad ones from the splits (in place) and return all bad files.

    File-backed splits (a folder) are checked here; in-memory splits decoded from files (an archive) bring the bad
    files they skipped while loading (:attr:`Splits.read`). Both count against the same cap
    (:func:`check_bad_files`), and both name files relative to the dataset root. The views of ``splits`` are replaced
    by views without the bad files, so everything that uses ``splits`` afterwards (loaders, class weights, test
    evaluation) sees the same cleaned data.

    Raises:
        TooManyBadFilesError: more than ``max_bad_fraction`` of the image files are bad.
    """
    views = {name: getattr(splits, name) for name in ("train", "val", "test")}
    by_source: dict[int, tuple[FileSource, set[int]]] = {}
    for view in views.values():
        if view is not None and isinstance(view.source, FileSource):
            by_source.setdefault(id(view.source), (view.source, set()))[1].update(int(i) for i in view.indices)
    bad = list(splits.read.bad) if splits.read is not None else []
    total = splits.read.read if splits.read is not None else 0
    where = [splits.read.where] if splits.read is not None else []
    dropped: set[str] = set()
    if by_source:
        log.info("checking %d image files", sum(len(used) for _, used in by_source.values()))
    for source, used in by_source.values():
        paths = [source.paths[i] for i in sorted(used)]
        total += len(paths)
        found = find_bad_files(paths, in_chans=source.in_chans, max_pixels=source.max_pixels, num_threads=num_threads)
        source.bad_files = sorted((BadFile(source.name_of(p), r) for p, r in found.items()), key=lambda b: b.file)
        bad += source.bad_files
        dropped.update(found)
        where.append(source.root or "the image files")
    bad.sort(key=lambda b: b.file)
    check_bad_files(bad, total=total, max_bad_fraction=max_bad_fraction, where=", ".join(dict.fromkeys(where)))
    if dropped:
        for name, view in views.items():
            if view is not None and isinstance(view.source, FileSource):
                keep = np.array([view.source.paths[int(i)] not in dropped for i in view.indices], dtype=bool)
                setattr(splits, name, SplitView(view.source, view.indices[keep]))
    return bad


def _train_loader(
    cfg: Config, splits: Splits, transform: Callable, device: torch.device, rank: int, world_size: int
) -> Any:
    """The DataLoader path's train loader: per-epoch shuffling from the seed (or balanced batches), DDP-sharded."""
    train_ds = TransformDataset(splits.train, transform)
    drop_last = len(train_ds) // world_size > cfg.data.batch_size  # avoid a 1-sample BatchNorm batch
    pin = device.type == "cuda"
    if cfg.data.sampler == "balanced":
        batch_sampler = BalancedBatchSampler(
            splits.train.targets.numpy(),
            cfg.data.batch_size,
            seed=cfg.run.seed,
            num_replicas=world_size,
            rank=rank,
        )
        batches = ResumableBatchSampler(batch_sampler, seed=cfg.run.seed, rank=rank)
    else:
        sampler = epoch_sampler(
            len(train_ds), shuffle=True, seed=cfg.run.seed, num_replicas=world_size, rank=rank, drop_last=world_size > 1
        )
        batches = ResumableBatchSampler(
            sampler, batch_size=cfg.data.batch_size, drop_last=drop_last, seed=cfg.run.seed, rank=rank
        )
    return make_loader(
        train_ds,
        batch_size=cfg.data.batch_size,
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        pin_memory=pin,
    )


def eval_transform_of(
    preprocess: PreprocessInfo, *, resize: bool | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The eval pipeline (uint8 image -> model input) that ``preprocess`` describes; ``resize`` overrides its flag
    (True for images from anywhere, e.g. at predict time)."""
    kwargs = preprocess.to_dict()
    if resize is not None:
        kwargs["resize"] = resize
    return build_eval_transform(**kwargs)


def build_loaders(
    cfg: Config, splits: Splits, preprocess: PreprocessInfo, *, device: torch.device, rank: int = 0, world_size: int = 1
) -> Loaders:
    """Train loader (shuffled per epoch from the seed), val/test loaders, and the batch mixing transform.

    ``rank`` / ``world_size``: this process's shard under DDP (the train sampler and the eval loaders split the data).
    File-backed splits are checked first (:func:`drop_bad_files`; ``splits`` is cleaned in place) and the skipped
    files land in ``Loaders.bad_files`` as ``{"file": name relative to data.root, "reason": ...}``.

    Raises:
        TooManyBadFilesError: more than ``data.max_bad_fraction`` of the image files cannot be decoded.
        ConfigError: ``data.loader=device`` with a file-backed dataset or an augmentation it cannot apply.
    """
    bad_files = [b.to_dict() for b in drop_bad_files(splits, max_bad_fraction=cfg.data.max_bad_fraction)]
    common = preprocess.to_dict()  # size, channels, statistics, interpolation, resize: both pipelines take them
    eval_tf = eval_transform_of(preprocess)
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    kind, why = choose_loader(cfg, splits, preprocess)
    if kind == "device":
        loaders = build_device_loaders(
            cfg,
            splits,
            preprocess,
            device=device,
            rank=rank,
            world_size=world_size,
            eval_transform=eval_tf,
            mix=build_mix(cfg, splits.num_classes),
        )
        loaders.bad_files, loaders.kind = bad_files, "device"
        return loaders
    train = _train_loader(
        cfg, splits, build_train_transform(cfg.augmentation.train, **common), device, rank, world_size
    )
    val = test = None
    if splits.val is not None and len(splits.val):
        val = build_eval_loader(
            splits.val, eval_tf, batch_size=eval_bs, num_workers=cfg.data.num_workers, rank=rank, world_size=world_size
        )
    if splits.test is not None and len(splits.test):
        test = build_eval_loader(
            splits.test, eval_tf, batch_size=eval_bs, num_workers=cfg.data.num_workers, rank=rank, world_size=world_size
        )
    return Loaders(
        train=train,
        val=val,
        test=test,
        eval_transform=eval_tf,
        mix=build_mix(cfg, splits.num_classes),
        mix_off_last_epochs=cfg.augmentation.mix.off_last_epochs,
        bad_files=bad_files,
        kind="torch",
        note=why,
    )
