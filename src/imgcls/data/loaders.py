"""Turn splits into batches: the standard DataLoader path (``data.loader=torch``).

Shuffling uses a sampler with ``set_epoch`` (the DistributedSampler contract, also in a single process) so that the
order of epoch ``e`` depends only on (seed, e): a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from imgcls.data.datasets import SplitView

#: a batch-level op on the device: (images, labels) -> (images, soft targets), e.g. CutMix/MixUp
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TransformDataset(Dataset):
    """A split with a per-sample transform: ``(transform(uint8 image), label)``."""

    def __init__(self, view: SplitView, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.view, self.transform = view, transform

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.view.get(i)
        return self.transform(img), label


@dataclass
class PreprocessInfo:
    """Everything needed to turn a raw image into model input; stored in checkpoints and exports."""

    image_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    #: whether source images must be resized to image_size (False when the dataset is natively that size)
    resize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Loaders:
    """Train/val/test loaders plus the batch-level transform (CutMix/MixUp) schedule."""

    train: Any
    val: Any | None
    test: Any | None
    eval_transform: Callable[[torch.Tensor], torch.Tensor]
    mix: BatchTransform | None = None
    mix_off_last_epochs: int = 0
    #: image files skipped, as ``{"file": name relative to data.root, "reason": one line}`` (the run summary's list)
    bad_files: list[dict[str, str]] = field(default_factory=list)

    def batch_transform_for(self, epoch: int, total_epochs: int) -> BatchTransform | None:
        """The batch transform for ``epoch`` (0-based): mixing is switched off for the last N epochs."""
        if self.mix is None or epoch >= total_epochs - self.mix_off_last_epochs:
            return None
        return self.mix


def epoch_sampler(
    n: int, *, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0, drop_last: bool = False
) -> DistributedSampler:
    """A sampler whose order depends only on (seed, epoch); with ``num_replicas`` > 1 it shards for DDP."""
    dataset_len: Any = range(n)  # DistributedSampler only needs len()
    return DistributedSampler(
        dataset_len, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    batch_sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader with the project's defaults (persistent workers when there are workers)."""
    if batch_sampler is not None:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a loader's sampler (or a device loader) which epoch starts, for per-epoch deterministic shuffling."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def iterate_images(view: SplitView, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> Iterator:
    """Plain in-process batches of (images, labels) for small evaluation jobs (no workers)."""
    ds = TransformDataset(view, transform)
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
