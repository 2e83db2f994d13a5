"""Class imbalance: inverse-frequency class weights and a class-balanced batch sampler.

Two standard answers to a long-tailed train split (``data.imbalance``): weight the loss by inverse class frequency
(``training.loss.class_weights=balanced`` -> :func:`get_class_weights`), or re-sample so every batch holds about the
same number of images of each class (``data.sampler=balanced`` -> :class:`BalancedBatchSampler`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def _labels_of(dataset_or_labels: Any) -> tuple[np.ndarray, int | None]:
    """Labels [N] as int64 numpy, plus the class count when the object knows it (a :class:`Splits`)."""
    obj = dataset_or_labels
    num_classes = None
    if hasattr(obj, "train") and hasattr(obj, "num_classes"):  # Splits: weights come from the train split
        num_classes = int(obj.num_classes)
        obj = obj.train
    if hasattr(obj, "view") and hasattr(obj.view, "targets"):  # TransformDataset
        obj = obj.view
    if hasattr(obj, "targets"):  # SplitView, sources, torchvision datasets
        obj = obj.targets
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().astype(np.int64).ravel(), num_classes
    return np.asarray(obj, dtype=np.int64).ravel(), num_classes


def get_class_weights(dataset_or_labels: Any, num_classes: int | None = None) -> torch.Tensor:
    """Inverse-frequency class weights, normalised so the weights of the classes present average 1.

    ``w_c = (1 / n_c) / mean_k(1 / n_k)`` over the classes k that occur. A class absent from the labels gets weight 0:
    it has no samples to up-weight, and a huge weight would only amplify the label-smoothing mass put on it.

    Args:
        dataset_or_labels: labels (tensor, array or sequence of ints), or anything with ``.targets`` (a SplitView, a
            TransformDataset's view, a torchvision dataset), or a :class:`~imgcls.data.datasets.Splits` (its train
            split; its ``num_classes`` is used when ``num_classes`` is not given).
        num_classes: K; default: the object's class count, else ``max(label) + 1``.

    Returns:
        float32 weights [K].
    """
    labels, known = _labels_of(dataset_or_labels)
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    k = num_classes or known or (int(labels.max()) + 1 if labels.size else 0)
    if labels.size and labels.max() >= k:
        raise ValueError(f"label {labels.max()} out of range for num_classes={k}")
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    present = counts > 0
    weights = np.zeros(k, dtype=np.float64)
    if present.any():
        inv = 1.0 / counts[present]
        weights[present] = inv / inv.mean()
    return torch.from_numpy(weights).float()


def positive_weights(multi_hot: torch.Tensor) -> torch.Tensor:
    """Positive-class weights of multi-label targets [N, K] (BCE's ``pos_weight``): ``negatives / positives`` of each
    label, so that a label's positives weigh as much in the loss as its negatives. A label without positives gets 1
    (nothing to up-weight)."""
    y = multi_hot.detach().cpu().double()
    pos = y.sum(0)
    neg = y.shape[0] - pos
    return torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos)).float()


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of indices holding about the same number of samples of every class.

    Each batch gets ``batch_size // K`` samples of each of the K classes present plus one extra sample of
    ``batch_size % K`` classes drawn without replacement (when ``batch_size < K``: ``batch_size`` distinct classes).
    Within a class, samples come from a fresh random permutation of its members, re-drawn whenever it runs out, so
    rare classes are over-sampled and common ones under-sampled while every member of a class is seen about equally
    often. An epoch has ``len(labels) // (batch_size * num_replicas)`` batches per replica (at least 1), as a plain
    shuffled epoch would.

    The order depends only on ``(seed, epoch)``: call :meth:`set_epoch` before each epoch (the DistributedSampler
    contract). Under DDP every replica draws the same global sequence and keeps batches ``rank, rank + R, ...``, so
    replicas never share a batch and all have the same length.

    Args:
        labels: class index per sample [N].
        batch_size: samples per batch (per replica).
        seed: base seed.
        num_replicas: DDP world size.
        rank: this process's rank.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        labels_np, _ = _labels_of(labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for num_replicas={num_replicas}")
        if labels_np.size == 0:
            raise ValueError("BalancedBatchSampler needs at least one label")
        self.labels = labels_np
        self.batch_size, self.seed, self.num_replicas, self.rank = batch_size, seed, num_replicas, rank
        self.epoch = 0
        self.classes, counts = np.unique(labels_np, return_counts=True)
        # members of each class, in index order (the per-epoch permutation happens in _global_batches)
        self.members = np.split(np.argsort(labels_np, kind="stable"), np.cumsum(counts)[:-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.labels) // (self.batch_size * self.num_replicas))

    def _global_batches(self) -> np.ndarray:
        """All replicas' batches of this epoch as an index array [len * num_replicas, batch_size]."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_batches = len(self) * self.num_replicas
        k, b = len(self.classes), self.batch_size
        base, extra = divmod(b, k)
        # slot_class[i, j]: which class (0..k-1 into self.classes) fills slot j of batch i
        fixed = np.repeat(np.arange(k), base)
        extras = np.argsort(rng.random((n_batches, k)), axis=1)[:, :extra]  # `extra` distinct classes per batch
        slot_class = np.concatenate([np.broadcast_to(fixed, (n_batches, fixed.size)), extras], axis=1)
        # shuffle slots inside each batch so classes are not laid out in blocks
        slot_class = np.take_along_axis(slot_class, np.argsort(rng.random(slot_class.shape), axis=1), axis=1)
        flat = slot_class.ravel()
        # slots grouped by class (one sort, not one scan per class), filled from each class's shuffled stream
        slots = np.argsort(flat, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=k))])
        out = np.empty(flat.size, dtype=np.int64)
        for c, members in enumerate(self.members):
            where = slots[bounds[c] : bounds[c + 1]]
            if where.size == 0:
                continue
            rounds = -(-where.size // members.size)
            stream = np.concatenate([rng.permutation(members) for _ in range(rounds)])
            out[where] = stream[: where.size]
        return out.reshape(n_batches, b)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()[self.rank :: self.num_replicas]
        for row in batches:
            yield row.tolist()
