"""Turn splits into batches: the standard DataLoader path (``data.loader=torch``).

Shuffling uses a sampler with ``set_epoch`` (the DistributedSampler contract, also in a single process) so that the
order of epoch ``e`` depends only on (seed, e), and the train loader's :class:`ResumableBatchSampler` seeds each
batch's augmentation from (seed, epoch, rank, batch number): a run resumed at any batch, even mid-epoch,
sees exactly the samples and augmentations an uninterrupted one would, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from imgcls.data.datasets import SplitView

#: a batch-level op on the device: (images, labels) -> (images, soft targets), e.g. CutMix/MixUp
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. seed, epoch, rank, stream), stable across processes and Python versions."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class TransformDataset(Dataset):
    """A split with a per-sample transform: ``(transform(uint8 image), label)``.

    Keys may be indices or ``(index, seed)`` pairs (what :class:`ResumableBatchSampler` yields, one seed per batch):
    a batch's random draws then come from its seed alone, whichever worker runs it, and the caller's RNG is left as
    it was (with ``num_workers=0`` this runs in the training process, whose RNG also drives dropout and mixing)."""

    def __init__(self, view: SplitView, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.view, self.transform = view, transform

    def __len__(self) -> int:
        return len(self.view)

    def _item(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.view.get(i)
        return self.transform(img), label

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[tuple[torch.Tensor, int]]:
        """A whole batch (the DataLoader calls this once per batch when it exists)."""
        if not keys or isinstance(keys[0], int):
            return [self._item(int(k)) for k in keys]
        outer = torch.get_rng_state()
        # the CPU generator only: torch.manual_seed also seeds every accelerator (~200 us, measured; this: ~3 us)
        torch.default_generator.manual_seed(keys[0][1])
        try:
            return [self._item(i) for i, _ in keys]
        finally:
            torch.set_rng_state(outer)


class ResumableBatchSampler(Sampler):
    """Batches of ``(index, batch seed)`` for the train loader, able to start the next epoch at any batch.

    Args:
        inner: a per-epoch sampler of indices (batched here by ``batch_size`` / ``drop_last``) or, with
            ``batch_size=None``, a batch sampler of index lists (e.g.
            :class:`~imgcls.data.samplers.BalancedBatchSampler`); ``set_epoch`` is forwarded to it.
        seed, rank: with the epoch and the batch number, they make each batch's augmentation seed.
    """

    def __init__(
        self, inner: Iterable, *, batch_size: int | None = None, drop_last: bool = False, seed: int = 0, rank: int = 0
    ) -> None:
        self.inner, self.batch_size, self.drop_last = inner, batch_size, drop_last
        self.seed, self.rank = seed, rank
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch the next iteration draws, starting at batch ``start_batch`` (a mid-epoch resume)."""
        self.epoch, self.start_batch = epoch, start_batch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches in a whole epoch (also when starting mid-epoch: the loop counts from ``start_batch``)."""
        if self.batch_size is None:
            return len(self.inner)  # type: ignore[arg-type]
        n = len(self.inner)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _index_batches(self) -> Iterator[list[int]]:
        if self.batch_size is None:
            yield from (list(b) for b in self.inner)
            return
        batch: list[int] = []
        for i in self.inner:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start, self.start_batch = self.start_batch, 0  # only the first iteration after set_epoch starts late
        for b, batch in enumerate(self._index_batches()):
            if b >= start:
                seed = stable_seed(self.seed, self.epoch, self.rank, b)
                yield [(i, seed) for i in batch]


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
    #: the batch path: "torch" (DataLoader) or "device" (:mod:`imgcls.data.device_loader`)
    kind: str = "torch"
    #: one line on how ``data.loader=auto`` chose the path ("" when there is nothing to say)
    note: str = ""

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
            # the workers' base seed comes from this generator, not the global RNG: starting an epoch's iterator
            # then leaves the training RNG (dropout, mixing) alone, so a mid-epoch resume draws what the original did
            generator=torch.Generator().manual_seed(0),
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


def set_epoch(loader: Any, epoch: int, start_batch: int = 0) -> None:
    """Tell a loader's sampler (or a device loader) which epoch starts, for per-epoch deterministic shuffling, and
    at which batch (``start_batch`` > 0: a mid-epoch resume; the train loaders support it)."""
    for obj in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            if start_batch:
                obj.set_epoch(epoch, start_batch)
            else:
                obj.set_epoch(epoch)
            return


def iterate_images(view: SplitView, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> Iterator:
    """Plain in-process batches of (images, labels) for small evaluation jobs (no workers)."""
    ds = TransformDataset(view, transform)
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
