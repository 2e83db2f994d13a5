"""Config -> loaders: the one place that decides how batches are made for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imgcls.config import Config
from imgcls.data.datasets import SplitView, Splits
from imgcls.data.loaders import PreprocessInfo, TransformDataset, epoch_sampler, make_loader
from imgcls.data.transforms import build_eval_transform, build_train_transform
from imgcls.engine.distributed import DistInfo

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Loaders:
    """Train/val/test loaders plus the batch-level transform (CutMix/MixUp) schedule."""

    train: Any
    val: Any | None
    test: Any | None
    eval_transform: Callable[[torch.Tensor], torch.Tensor]
    mix: BatchTransform | None = None
    mix_off_last_epochs: int = 0
    bad_files: list[str] = field(default_factory=list)

    def batch_transform_for(self, epoch: int, total_epochs: int) -> BatchTransform | None:
        """The batch transform for ``epoch`` (0-based): mixing is switched off for the last N epochs."""
        if self.mix is None or epoch >= total_epochs - self.mix_off_last_epochs:
            return None
        return self.mix


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation sharding for DDP without padding: rank r takes indices r, r+W, r+2W, ... so that the all-reduced
    sums count every sample exactly once (DistributedSampler would pad with duplicates)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(view: SplitView, transform: Callable, *, batch_size: int, num_workers: int = 0,
                      dist_info: DistInfo | None = None) -> Any:  # fmt: skip
    """A deterministic loader over a split (sharded without padding under DDP)."""
    sampler = None
    if dist_info is not None and dist_info.enabled:
        sampler = ShardSampler(len(view), dist_info.rank, dist_info.world_size)
    return make_loader(TransformDataset(view, transform), batch_size=batch_size, sampler=sampler,
                       num_workers=num_workers)  # fmt: skip


def build_mix(cfg: Config, num_classes: int) -> BatchTransform | None:
    """CutMix / MixUp / switching between them, from ``augmentation.mix`` (None when both alphas are 0)."""
    mix = cfg.augmentation.mix
    if mix.cutmix_alpha <= 0 and mix.mixup_alpha <= 0:
        return None
    from imgcls.data.batch import build_mixer

    return build_mixer(mix, num_classes)


def build_loaders(cfg: Config, splits: Splits, preprocess: PreprocessInfo, *, device: torch.device,
                  dist_info: DistInfo | None = None) -> Loaders:  # fmt: skip
    """Train loader (shuffled per epoch from the seed), val/test loaders, and the batch mixing transform."""
    dist_info = dist_info or DistInfo()
    common = dict(image_size=preprocess.image_size, resize=preprocess.resize, in_chans=preprocess.in_chans,
                  mean=preprocess.mean, std=preprocess.std, interpolation=preprocess.interpolation)  # fmt: skip
    eval_tf = build_eval_transform(**common)
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    if cfg.data.loader == "device":
        from imgcls.data.device_loader import build_device_loaders

        return build_device_loaders(cfg, splits, preprocess, device=device, dist_info=dist_info,
                                    eval_transform=eval_tf, mix=build_mix(cfg, splits.num_classes))  # fmt: skip
    train_tf = build_train_transform(cfg.augmentation.train, **common)
    train_ds = TransformDataset(splits.train, train_tf)
    drop_last = len(train_ds) // dist_info.world_size > cfg.data.batch_size  # avoid a 1-sample BatchNorm batch
    pin = device.type == "cuda"
    if cfg.data.sampler == "balanced":
        from imgcls.data.samplers import BalancedBatchSampler

        batch_sampler = BalancedBatchSampler(
            splits.train.targets.numpy(), cfg.data.batch_size, seed=cfg.run.seed,
            num_replicas=dist_info.world_size, rank=dist_info.rank,
        )  # fmt: skip
        train = make_loader(train_ds, batch_size=cfg.data.batch_size, batch_sampler=batch_sampler,
                            num_workers=cfg.data.num_workers, pin_memory=pin)  # fmt: skip
    else:
        sampler = epoch_sampler(len(train_ds), shuffle=True, seed=cfg.run.seed, num_replicas=dist_info.world_size,
                                rank=dist_info.rank, drop_last=dist_info.enabled)  # fmt: skip
        train = make_loader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                            drop_last=drop_last, pin_memory=pin)  # fmt: skip
    val = test = None
    if splits.val is not None and len(splits.val):
        val = build_eval_loader(splits.val, eval_tf, batch_size=eval_bs, num_workers=cfg.data.num_workers,
                                dist_info=dist_info)  # fmt: skip
    if splits.test is not None and len(splits.test):
        test = build_eval_loader(splits.test, eval_tf, batch_size=eval_bs, num_workers=cfg.data.num_workers,
                                 dist_info=dist_info)  # fmt: skip
    return Loaders(train=train, val=val, test=test, eval_transform=eval_tf, mix=build_mix(cfg, splits.num_classes),
                   mix_off_last_epochs=cfg.augmentation.mix.off_last_epochs)  # fmt: skip


