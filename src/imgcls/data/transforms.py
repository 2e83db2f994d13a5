"""Per-sample transforms (torchvision.transforms.v2) built from the ``augmentation.train`` config.

Every pipeline takes a uint8 image tensor [C, H, W] and returns a normalised float32 tensor [C', S, S]. The train
pipeline applies the configured augmentations on uint8 (cheap and what RandAugment & co. expect), then converts and
normalises; the eval pipeline only resizes, fixes channels and normalises. All transforms are picklable (DataLoader
workers need that).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from imgcls.config import TrainAugConfig


class FixChannels(torch.nn.Module):
    """Make a [C, H, W] image have ``channels`` channels: 1 -> 3 by repetition, 3 -> 1 by luma."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[-3]
        if c == self.channels:
            return img
        if c == 1 and self.channels == 3:
            return img.expand(*img.shape[:-3], 3, *img.shape[-2:]).clone()
        if c == 3 and self.channels == 1:
            return v2.functional.rgb_to_grayscale(img)
        raise ValueError(f"cannot convert {c}-channel images to {self.channels} channels")


class Cutout(torch.nn.Module):
    """Zero ``count`` squares of side ``size`` pixels at uniformly random centres (DeVries & Taylor, 2017).

    Squares may be clipped at the border, as in the paper. Works on uint8 or float images [..., C, H, W].
    """

    def __init__(self, size: int, count: int = 1) -> None:
        super().__init__()
        self.size, self.count = size, count

    @staticmethod
    def get_params(height: int, width: int, count: int) -> list[tuple[int, int]]:
        """Random (centre_y, centre_x) for each square."""
        ys = torch.randint(0, height, (count,)).tolist()
        xs = torch.randint(0, width, (count,)).tolist()
        return list(zip(ys, xs, strict=True))

    def apply(self, img: torch.Tensor, centres: list[tuple[int, int]]) -> torch.Tensor:
        out = img.clone()
        h, w = img.shape[-2:]
        half = self.size // 2
        for cy, cx in centres:
            y0, y1 = max(0, cy - half), min(h, cy - half + self.size)
            x0, x1 = max(0, cx - half), min(w, cx - half + self.size)
            out[..., y0:y1, x0:x1] = 0
        return out

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        return self.apply(img, self.get_params(h, w, self.count))


def _interp(name: str) -> InterpolationMode:
    return InterpolationMode(name)


def build_train_transform(
    aug: TrainAugConfig,
    *,
    image_size: int,
    resize: bool,
    in_chans: int,
    mean: list[float],
    std: list[float],
    interpolation: str = "bilinear",
) -> v2.Compose:
    """uint8 [C, H, W] -> augmented, normalised float32 [in_chans, S, S].

    Args:
        aug: the ``augmentation.train`` config.
        image_size: output side S in pixels.
        resize: whether inputs must be resized to S first (False when they already are S x S).
        in_chans: output channels (1 or 3).
        mean, std: normalisation statistics in [0, 1] units.
        interpolation: resize interpolation (bilinear, bicubic, nearest).
    """
    ops: list[Any] = [FixChannels(in_chans)]
    if resize:
        ops.append(v2.Resize((image_size, image_size), interpolation=_interp(interpolation), antialias=True))
    if aug.enabled:
        if aug.random_crop:
            ops.append(v2.RandomCrop(image_size, padding=aug.crop_padding, padding_mode="reflect"))
        if aug.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(aug.hflip))
        if aug.rotation > 0:
            ops.append(v2.RandomRotation(aug.rotation))
        if aug.color_jitter > 0 and in_chans == 3:
            s = aug.color_jitter
            ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
        elif aug.color_jitter > 0:
            ops.append(v2.ColorJitter(brightness=aug.color_jitter, contrast=aug.color_jitter))
        if aug.randaugment:
            ops.append(v2.RandAugment(num_ops=aug.randaugment_num_ops, magnitude=aug.randaugment_magnitude))
        if aug.autoaugment:
            ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
        if aug.trivialaugment:
            ops.append(v2.TrivialAugmentWide())
        if aug.cutout > 0:
            ops.append(Cutout(aug.cutout, aug.cutout_count))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if aug.enabled and aug.random_erasing > 0:
        ops.append(v2.RandomErasing(p=aug.random_erasing, scale=tuple(aug.random_erasing_scale), value=0))
    return v2.Compose(ops)


def build_eval_transform(
    *,
    image_size: int,
    resize: bool,
    in_chans: int,
    mean: list[float],
    std: list[float],
    interpolation: str = "bilinear",
) -> v2.Compose:
    """uint8 [C, H, W] -> normalised float32 [in_chans, S, S] (no randomness). Arguments as the train builder's."""
    ops: list[Any] = [FixChannels(in_chans)]
    if resize:
        ops.append(v2.Resize((image_size, image_size), interpolation=_interp(interpolation), antialias=True))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)
