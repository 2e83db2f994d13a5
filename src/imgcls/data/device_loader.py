"""The fast path (``data.loader=device``): the whole split as one uint8 tensor on the training device, augmentation
as batch tensor ops (in the spirit of airbench, github.com/KellerJordan/cifar10-airbench).

Resizing and channel reduction happen once, up front. Per batch, an index_select of pixel rows and a gather of columns
do the sample selection, the random translate (the torch path's ``RandomCrop(padding, padding_mode="reflect")``;
reflect or zero padding, as index arithmetic rather than a padded copy) and the horizontal flip (reversed column
indices) together; Cutout is a broadcast mask; normalisation is one fused multiply-add. No per-sample Python, no
worker processes, and no image copies from the host per step (the epoch's sample order goes to the device once; with
``data.sampler=balanced`` each batch's indices are copied, a few hundred bytes).

The semantics match the torch path (:func:`imgcls.data.transforms.build_train_transform`): crop offsets uniform over
``[-pad, pad]`` in each axis, flip with probability ``hflip``, Cutout squares of side ``cutout`` centred uniformly
(clipped at the border) and filled with 0 before normalisation. Augmentations registered with ``device=False`` in
:data:`imgcls.data.transforms.AUGMENTATIONS` (rotation, colour jitter, RandAugment, AutoAugment, TrivialAugment, random
erasing) have no batch implementation here and raise :class:`ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchvision.transforms import InterpolationMode, v2

from imgcls.config import Config, ConfigError, TrainAugConfig
from imgcls.data.datasets import Splits, SplitView
from imgcls.data.loaders import BatchTransform, Loaders, PreprocessInfo, stable_seed
from imgcls.data.samplers import BalancedBatchSampler
from imgcls.data.transforms import AUGMENTATIONS, FixChannels, augmentations_for


def check_device_augmentations(aug: TrainAugConfig, *, image_size: int = 32, in_chans: int = 3) -> None:
    """Raise :class:`ConfigError` naming every augmentation that is on but registered with ``device=False``.

    ``image_size`` and ``in_chans`` only feed the registered functions that decide whether an augmentation is on;
    the nominal defaults serve callers that check a config before the data is known.
    """
    on = [name for name, _ in augmentations_for(aug, image_size=image_size, in_chans=in_chans)]
    bad = [name for name in on if not AUGMENTATIONS.meta(name)["device"]]
    if bad:
        keys = ", ".join(f"augmentation.train.{name}={getattr(aug, name)}" for name in bad)
        batch_ops = [name for name in AUGMENTATIONS.ordered() if AUGMENTATIONS.meta(name)["device"]]
        raise ConfigError(
            f"data.loader=device cannot apply {keys}: it does {', '.join(batch_ops)} as batch ops (plus CutMix/MixUp). "
            "Use data.loader=torch for these augmentations, or switch them off."
        )


# --------------------------------------------------------------------------------------------------------------------
# Batch augmentation
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class BatchAugParams:
    """Random parameters for one batch (tensors on the batch's device).

    Attributes:
        top, left: crop offsets [B] in padded coordinates, in ``[0, 2 * pad]`` (``offset - pad`` is the translation).
        flip: [B] bool, horizontal flip.
        centres: [B, count, 2] Cutout square centres (y, x) in pixels, or None without Cutout.
    """

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    centres: torch.Tensor | None = None


class BatchAugment:
    """Random translate (crop with padding), horizontal flip and Cutout on uint8 batches [B, C, S, S].

    Args:
        image_size: S, the side of the (square) images.
        crop_padding: maximum translation in pixels (0: no crop).
        padding_mode: "reflect" (as the torch path's RandomCrop) or "zero".
        hflip: flip probability.
        cutout: Cutout square side in pixels (0: off).
        cutout_count: squares per image.
    """

    def __init__(
        self,
        *,
        image_size: int,
        crop_padding: int = 0,
        padding_mode: Literal["reflect", "zero"] = "reflect",
        hflip: float = 0.0,
        cutout: int = 0,
        cutout_count: int = 1,
    ) -> None:
        if padding_mode not in ("reflect", "zero"):
            raise ValueError(f"padding_mode must be reflect or zero, got {padding_mode!r}")
        if padding_mode == "reflect" and crop_padding >= image_size:
            raise ValueError(f"reflect padding {crop_padding} must be smaller than the image side {image_size}")
        self.image_size, self.crop_padding, self.padding_mode = image_size, crop_padding, padding_mode
        self.hflip, self.cutout, self.cutout_count = hflip, cutout, cutout_count

    @classmethod
    def from_config(cls, aug: TrainAugConfig, image_size: int) -> BatchAugment | None:
        """The device equivalent of the torch path's crop/flip/cutout settings (None when nothing is on)."""
        check_device_augmentations(aug, image_size=image_size)
        if not aug.enabled:
            return None
        out = cls(
            image_size=image_size,
            crop_padding=aug.crop_padding if aug.random_crop else 0,
            hflip=aug.hflip,
            cutout=aug.cutout,
            cutout_count=aug.cutout_count,
        )
        return out if out.active else None

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip > 0 or self.cutout > 0

    def get_params(
        self, batch_size: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> BatchAugParams:
        """Draw one batch's parameters on ``device`` (``generator`` must live there too)."""
        b, p, s = batch_size, self.crop_padding, self.image_size
        kw: dict[str, Any] = dict(device=device, generator=generator)
        top = torch.randint(0, 2 * p + 1, (b,), **kw)
        left = torch.randint(0, 2 * p + 1, (b,), **kw)
        flip = torch.rand(b, **kw) < self.hflip
        centres = torch.randint(0, s, (b, self.cutout_count, 2), **kw) if self.cutout > 0 else None
        return BatchAugParams(top, left, flip, centres)

    def _source_index(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Map padded-frame positions minus pad (may be < 0 or >= S) to source pixels; zero mode also gives a mask."""
        s = self.image_size
        if self.padding_mode == "reflect":  # torch's reflect: -1 -> 1, S -> S - 2 (edge pixel not repeated)
            pos = pos.abs()
            return torch.where(pos > s - 1, 2 * (s - 1) - pos, pos), None
        valid = (pos >= 0) & (pos < s)
        return pos.clamp(0, s - 1), valid

    def apply(self, images: torch.Tensor, params: BatchAugParams, index: torch.Tensor | None = None) -> torch.Tensor:
        """Augment with fixed parameters.

        Args:
            images: uint8 (or float) [N, C, S, S]; with ``index`` the whole dataset, else the batch itself.
            params: from :meth:`get_params` (batch size B).
            index: [B] rows of ``images`` forming the batch (gathered together with the crop: one copy, not two).

        Returns:
            [B, C, S, S], same dtype as ``images``.
        """
        if images.ndim != 4 or images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected images [N, C, {self.image_size}, {self.image_size}], got {tuple(images.shape)}")
        b = params.flip.shape[0]
        dev = images.device
        if index is None:
            index = torch.arange(b, device=dev)
        n, c, s, p = images.shape[0], images.shape[1], self.image_size, self.crop_padding
        if p == 0 and self.hflip == 0:
            out, row_ok, col_ok = images.index_select(0, index), None, None
        else:
            images = images.contiguous()  # a no-op for DeviceLoader's tensors; the row view below needs it
            ar = torch.arange(s, device=dev)
            # torch path order: crop then flip, so output column j reads crop column S-1-j when flipped
            rows = params.top[:, None] + ar - p
            cols = params.left[:, None] + torch.where(params.flip[:, None], s - 1 - ar, ar) - p
            rows, row_ok = self._source_index(rows)
            cols, col_ok = self._source_index(cols)
            # Rows: view the data as N*C*S pixel rows and pick whole rows with one index_select (contiguous copies of
            # S bytes, the cheap part); columns: one gather along the last dim. ~4x faster on CPU than a single
            # 4-index advanced-indexing gather, which computes an offset per element.
            row_ids = (
                (index * (c * s))[:, None, None] + (torch.arange(c, device=dev) * s)[None, :, None] + rows[:, None]
            )
            out = images.view(n * c * s, s).index_select(0, row_ids.reshape(-1)).view(b, c, s, s)
            out = out.gather(3, cols[:, None, None, :].expand(b, c, s, s))
        if row_ok is not None and col_ok is not None:
            out = out.masked_fill(~(row_ok[:, None, :, None] & col_ok[:, None, None, :]), 0)
        if params.centres is not None:
            out = out.masked_fill(self.cutout_mask(params.centres)[:, None], 0)
        return out

    def cutout_mask(self, centres: torch.Tensor) -> torch.Tensor:
        """[B, count, 2] centres -> [B, S, S] bool, True inside any square (as the per-sample ``Cutout``)."""
        s, half = self.image_size, self.cutout // 2
        ar = torch.arange(s, device=centres.device)
        y0 = (centres[..., 0] - half)[..., None]  # [B, count, 1]
        x0 = (centres[..., 1] - half)[..., None]
        in_y = (ar >= y0) & (ar < y0 + self.cutout)  # [B, count, S]
        in_x = (ar >= x0) & (ar < x0 + self.cutout)
        return (in_y[..., :, None] & in_x[..., None, :]).any(1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.get_params(images.shape[0], device=images.device, generator=generator))

    def __repr__(self) -> str:
        return (
            f"BatchAugment(image_size={self.image_size}, crop_padding={self.crop_padding}, "
            f"padding_mode={self.padding_mode!r}, hflip={self.hflip}, cutout={self.cutout}, "
            f"cutout_count={self.cutout_count})"
        )


# --------------------------------------------------------------------------------------------------------------------
# Data on the device
# --------------------------------------------------------------------------------------------------------------------


def prepare_images(
    view: SplitView,
    *,
    image_size: int,
    resize: bool,
    in_chans: int,
    interpolation: str = "bilinear",
    device: torch.device | str = "cpu",
    chunk: int = 4096,
) -> torch.Tensor:
    """A split's images as one uint8 tensor [N, C, S, S] on ``device``, resized and channel-reduced once.

    The ops are the torch path's (FixChannels, then v2 Resize with antialias), applied to chunks of images, so the
    pixels equal what the per-sample pipeline would produce. 1 -> 3 channel expansion is left to the batch
    normalisation (a free broadcast) so that grayscale data does not take three times the memory.
    """
    if not view.in_memory:
        raise ConfigError(
            "data.loader=device needs an in-memory dataset (one uint8 tensor), but this split is decoded from image "
            "files per sample. Use data.loader=torch, or give data.root as a .tar.gz archive of same-size images "
            "(decoded into memory once)."
        )
    images = view.images()
    reduce = FixChannels(1) if images.shape[1] == 3 and in_chans == 1 else None
    needs_resize = resize and tuple(images.shape[-2:]) != (image_size, image_size)
    if reduce is None and not needs_resize:
        return images.to(device).contiguous()
    resize_op = v2.Resize((image_size, image_size), interpolation=InterpolationMode(interpolation), antialias=True)
    parts = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(device)
        if reduce is not None:
            x = reduce(x)
        if needs_resize:
            x = resize_op(x)
        parts.append(x)
    if not parts:
        c = 1 if reduce is not None else images.shape[1]
        return torch.empty(0, c, image_size, image_size, dtype=torch.uint8, device=device)
    return torch.cat(parts).contiguous()


class DeviceLoader:
    """Batches of (normalised float32 images [B, C, S, S], labels) from a device-resident uint8 tensor.

    Args:
        images: uint8 [N, C0, S, S] on the device (C0 = in_chans, or 1 when expanding grayscale to 3 channels).
        labels: int64 class indices [N], or multi-hot float32 [N, K] (multi-label).
        batch_size: images per batch (per replica).
        mean, std: normalisation statistics in [0, 1] units, one per output channel.
        in_chans: output channels (C0 or 3 from C0 = 1).
        shuffle: reshuffle every epoch from ``(seed, epoch)``.
        drop_last: drop the last incomplete batch.
        seed: base seed of the shuffle and the augmentation draws.
        augment: batch augmentation (None: none, e.g. for evaluation).
        num_replicas, rank: DDP sharding.
        even_shards: True (training): every replica gets ``N // num_replicas`` samples of the shuffled order, as
            DistributedSampler(drop_last=True), so ranks step in lockstep. False (evaluation): rank r takes samples
            r, r + R, ... so the all-reduced sums count every sample exactly once.
        batch_sampler: yields lists of indices per batch (e.g. :class:`BalancedBatchSampler`); replaces shuffling,
            batching and sharding, and gets ``set_epoch`` forwarded.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        in_chans: int | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        augment: BatchAugment | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        even_shards: bool = True,
        batch_sampler: Any = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"DeviceLoader needs uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        in_chans = in_chans or images.shape[1]
        if in_chans != images.shape[1] and not (images.shape[1] == 1 and in_chans == 3):
            raise ValueError(f"cannot turn {images.shape[1]}-channel images into {in_chans} channels on the fly")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"need {in_chans} mean/std values, got {len(mean)}/{len(std)}")
        # class indices stay int64; multi-hot rows [N, K] (multi-label) stay float32
        self.images, self.labels = images, labels.to(images.device, torch.long if labels.ndim == 1 else torch.float32)
        self.device = images.device
        self.batch_size, self.in_chans = batch_size, in_chans
        self.shuffle, self.drop_last, self.seed, self.augment = shuffle, drop_last, seed, augment
        self.num_replicas, self.rank, self.even_shards = num_replicas, rank, even_shards
        self.batch_sampler = batch_sampler
        self.epoch, self.start_batch = 0, 0
        std_t = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose shuffle and augmentation draws the next iteration uses, and the batch it starts at
        (> 0: a mid-epoch resume; ``len()`` stays the whole epoch's)."""
        self.epoch, self.start_batch = epoch, start_batch
        if self.batch_sampler is not None and hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def _shard_size(self) -> int:
        n = len(self.images)
        if self.even_shards:
            return n // self.num_replicas if self.num_replicas > 1 else n
        return len(range(self.rank, n, self.num_replicas))

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> torch.Tensor:
        """This replica's sample indices for the epoch, on the CPU (identical on all ranks before sharding)."""
        n = len(self.images)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(n)
        if self.num_replicas == 1:
            return order
        if self.even_shards:
            return order[self.rank : self._shard_size() * self.num_replicas : self.num_replicas]
        return order[self.rank :: self.num_replicas]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C0, S, S] -> float32 [B, in_chans, S, S] normalised (grayscale broadcast to 3 channels)."""
        return torch.addcmul(self.shift, images.float(), self.scale)

    def _batches(self) -> Iterator[torch.Tensor]:
        if self.batch_sampler is not None:
            for batch in self.batch_sampler:
                yield torch.as_tensor(batch, dtype=torch.long).to(self.device, non_blocking=True)
            return
        order = self._order().to(self.device)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = None
        if self.augment is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(stable_seed(self.seed, self.epoch, self.rank, 1))
        start, self.start_batch = self.start_batch, 0  # only the first iteration after set_epoch starts late
        for b, idx in enumerate(self._batches()):
            if self.augment is not None:
                # drawn for skipped batches too: the generator then stands where an uninterrupted epoch had it
                params = self.augment.get_params(len(idx), device=self.device, generator=gen)
            if b < start:
                continue
            if self.augment is not None:
                x = self.augment.apply(self.images, params, index=idx)
            else:
                x = self.images.index_select(0, idx)
            yield self.normalize(x), self.labels.index_select(0, idx)


# --------------------------------------------------------------------------------------------------------------------
# Config -> loaders
# --------------------------------------------------------------------------------------------------------------------


def build_device_loaders(
    cfg: Config,
    splits: Splits,
    preprocess: PreprocessInfo,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    eval_transform: Callable[[torch.Tensor], torch.Tensor],
    mix: BatchTransform | None = None,
) -> Loaders:
    """The ``data.loader=device`` counterpart of :func:`imgcls.data.build.build_loaders` (same :class:`Loaders`)."""
    check_device_augmentations(cfg.augmentation.train, image_size=preprocess.image_size, in_chans=preprocess.in_chans)
    views = [("train", splits.train), ("val", splits.val), ("test", splits.test)]
    for name, view in views:
        if view is not None and len(view) and not view.in_memory:
            raise ConfigError(
                f"data.loader=device needs an in-memory dataset, but the {name} split of data.name={cfg.data.name} is "
                "decoded from image files per sample. Use data.loader=torch, or point data.root at a .tar.gz archive "
                "of same-size images (decoded into memory once)."
            )
    prep = dict(
        image_size=preprocess.image_size,
        resize=preprocess.resize,
        in_chans=preprocess.in_chans,
        interpolation=preprocess.interpolation,
        device=device,
    )
    norm = dict(mean=preprocess.mean, std=preprocess.std, in_chans=preprocess.in_chans)
    train_images = prepare_images(splits.train, **prep)
    train_labels = splits.train.targets
    augment = BatchAugment.from_config(cfg.augmentation.train, preprocess.image_size)
    batch_sampler = None
    if cfg.data.sampler == "balanced":
        batch_sampler = BalancedBatchSampler(
            train_labels.numpy(), cfg.data.batch_size, seed=cfg.run.seed, num_replicas=world_size, rank=rank
        )
    drop_last = len(splits.train) // world_size > cfg.data.batch_size  # as the torch path
    train = DeviceLoader(
        train_images,
        train_labels,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        drop_last=drop_last,
        seed=cfg.run.seed,
        augment=augment,
        num_replicas=world_size,
        rank=rank,
        batch_sampler=batch_sampler,
        **norm,
    )
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    evals: dict[str, DeviceLoader | None] = {"val": None, "test": None}
    for name, view in views[1:]:
        if view is not None and len(view):
            evals[name] = DeviceLoader(
                prepare_images(view, **prep),
                view.targets,
                batch_size=eval_bs,
                num_replicas=world_size,
                rank=rank,
                even_shards=False,
                **norm,
            )
    return Loaders(
        train=train,
        val=evals["val"],
        test=evals["test"],
        eval_transform=eval_transform,
        mix=mix,
        mix_off_last_epochs=cfg.augmentation.mix.off_last_epochs,
    )
