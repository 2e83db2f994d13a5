"""Per-sample transforms (torchvision.transforms.v2) built from the ``augmentation.train`` config, and the
augmentation registry.

Every pipeline takes a uint8 image tensor [C, H, W] and returns a normalised float32 tensor [C', S, S]. The train
pipeline applies the configured augmentations on uint8 (cheap and what RandAugment & co. expect), then converts and
normalises, then applies the few that work on normalised floats (random erasing); the eval pipeline only resizes, fixes
channels and normalises. All transforms are picklable (DataLoader workers need that).

Each augmentation is one entry of :data:`AUGMENTATIONS`, registered with :func:`register_augmentation`: a function
``(aug, *, image_size, in_chans) -> transform or None`` (None: off) plus metadata saying which loaders support it
(``torch``: this per-sample pipeline; ``device``: the batch ops of :mod:`imgcls.data.device_loader`), its ``stage``
and an ``example`` set of ``augmentation.train`` values that switches it on (the tests run every entry with it). Its
knobs are typed fields of :class:`~imgcls.config.TrainAugConfig`, the first named like the entry. Adding an
augmentation is: those fields, one registered function here, and (only when ``device=True``) its batch form in
:class:`~imgcls.data.device_loader.BatchAugment`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import torch
from torchvision.transforms import InterpolationMode, v2

from imgcls.config import ConfigError, TrainAugConfig
from imgcls.registry import Registry

#: ``(aug, *, image_size, in_chans) -> transform | None``
AugmentationFn = Callable[..., Any]
#: name -> augmentation, applied in registration order within each stage (the order is part of the numbers)
AUGMENTATIONS: Registry[AugmentationFn] = Registry("augmentation")
#: where in the train pipeline an augmentation runs: on uint8 pixels before ToDtype/Normalize, or on normalised floats
Stage = Literal["uint8", "float"]
STAGES: tuple[Stage, ...] = ("uint8", "float")


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


# --------------------------------------------------------------------------------------------------------------------
# The augmentation registry
# --------------------------------------------------------------------------------------------------------------------


def register_augmentation(
    name: str, *, torch: bool, device: bool, example: Mapping[str, Any], stage: Stage = "uint8"
) -> Callable[[AugmentationFn], AugmentationFn]:
    """Decorator registering an augmentation in :data:`AUGMENTATIONS` (checked at import).

    Args:
        name: the entry's name, also the ``augmentation.train`` field that switches it on (named in error messages).
        torch: whether the per-sample pipeline (``data.loader=torch``) can apply it; the function's transform is used.
        device: whether the device loader's batch ops (``data.loader=device``) can apply it (in
            :class:`~imgcls.data.device_loader.BatchAugment`; otherwise that loader refuses it).
        example: ``augmentation.train`` field -> value that switches it on (the registry-driven tests use it).
        stage: ``"uint8"`` (before ToDtype/Normalize) or ``"float"`` (after normalisation).
    """
    fields = {f.name for f in dataclasses.fields(TrainAugConfig)}
    if name not in fields:
        raise ValueError(f"augmentation '{name}' needs a TrainAugConfig field of the same name (its switch)")
    if unknown := sorted(set(example) - fields):
        raise ValueError(f"augmentation '{name}': example keys {unknown} are not TrainAugConfig fields")
    if stage not in STAGES:
        raise ValueError(f"augmentation '{name}': stage must be one of {STAGES}, got {stage!r}")
    return AUGMENTATIONS.register(
        name, torch=torch, device=device, stage=stage, example=MappingProxyType(dict(example))
    )


def augmentations_for(
    aug: TrainAugConfig, *, stage: Stage | None = None, image_size: int, in_chans: int
) -> list[tuple[str, Any]]:
    """``(name, transform)`` of every augmentation ``aug`` switches on (none if ``aug.enabled`` is false), in order.

    Args:
        aug: the ``augmentation.train`` config.
        stage: only this stage's augmentations (None: all, uint8 stage first).
        image_size, in_chans: output side in pixels and channels, as for :func:`build_train_transform`.
    """
    if not aug.enabled:
        return []
    out = []
    for st in STAGES if stage is None else (stage,):
        for name in AUGMENTATIONS.ordered():
            if AUGMENTATIONS.meta(name)["stage"] == st:
                op = AUGMENTATIONS.get(name)(aug, image_size=image_size, in_chans=in_chans)
                if op is not None:
                    out.append((name, op))
    return out


# Registration order is application order (uint8 stage: crop, flip, rotation, jitter, the auto-augment policies,
# cutout; then normalisation; then random erasing): a fixed seed gives the same images as before the registry.


@register_augmentation("random_crop", torch=True, device=True, example={"random_crop": True, "crop_padding": 2})
def random_crop(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """Random translate by up to ``crop_padding`` pixels (crop of the reflect-padded image)."""
    if not aug.random_crop:
        return None
    return v2.RandomCrop(image_size, padding=aug.crop_padding, padding_mode="reflect")


@register_augmentation("hflip", torch=True, device=True, example={"hflip": 1.0})
def hflip(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """Horizontal flip with probability ``hflip``."""
    return v2.RandomHorizontalFlip(aug.hflip) if aug.hflip > 0 else None


@register_augmentation("rotation", torch=True, device=False, example={"rotation": 30.0})
def rotation(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """Rotation by an angle uniform in ``[-rotation, rotation]`` degrees."""
    return v2.RandomRotation(aug.rotation) if aug.rotation > 0 else None


@register_augmentation("color_jitter", torch=True, device=False, example={"color_jitter": 0.5})
def color_jitter(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """Brightness, contrast and (colour images only) saturation jitter of strength ``color_jitter``."""
    if aug.color_jitter <= 0:
        return None
    s = aug.color_jitter
    if in_chans == 3:
        return v2.ColorJitter(brightness=s, contrast=s, saturation=s)
    return v2.ColorJitter(brightness=s, contrast=s)


@register_augmentation(
    "randaugment",
    torch=True,
    device=False,
    example={"randaugment": True, "randaugment_num_ops": 3, "randaugment_magnitude": 15},
)
def randaugment(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """RandAugment (Cubuk et al., 2020) with ``randaugment_num_ops`` ops of ``randaugment_magnitude``."""
    if not aug.randaugment:
        return None
    return v2.RandAugment(num_ops=aug.randaugment_num_ops, magnitude=aug.randaugment_magnitude)


@register_augmentation("autoaugment", torch=True, device=False, example={"autoaugment": True})
def autoaugment(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """AutoAugment's CIFAR-10 policy (Cubuk et al., 2019)."""
    return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if aug.autoaugment else None


@register_augmentation("trivialaugment", torch=True, device=False, example={"trivialaugment": True})
def trivialaugment(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """TrivialAugment Wide (Müller & Hutter, 2021)."""
    return v2.TrivialAugmentWide() if aug.trivialaugment else None


@register_augmentation("cutout", torch=True, device=True, example={"cutout": 4, "cutout_count": 2})
def cutout(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """``cutout_count`` zeroed squares of side ``cutout`` pixels (:class:`Cutout`)."""
    return Cutout(aug.cutout, aug.cutout_count) if aug.cutout > 0 else None


@register_augmentation(
    "random_erasing",
    torch=True,
    device=False,
    stage="float",
    example={"random_erasing": 1.0, "random_erasing_scale": [0.1, 0.3]},
)
def random_erasing(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> Any:
    """Random erasing (Zhong et al., 2020) with probability ``random_erasing``: a box filled with 0 after
    normalisation (the mean colour), of ``random_erasing_scale`` of the area."""
    if aug.random_erasing <= 0:
        return None
    return v2.RandomErasing(p=aug.random_erasing, scale=tuple(aug.random_erasing_scale), value=0)


# --------------------------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------------------------


def _torch_ops(aug: TrainAugConfig, stage: Stage, *, image_size: int, in_chans: int) -> list[Any]:
    ops = []
    for name, op in augmentations_for(aug, stage=stage, image_size=image_size, in_chans=in_chans):
        if not AUGMENTATIONS.meta(name)["torch"]:
            raise ConfigError(
                f"data.loader=torch cannot apply augmentation.train.{name}={getattr(aug, name)}: it has only a batch "
                "form. Use data.loader=device for it, or switch it off."
            )
        ops.append(op)
    return ops


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

    The augmentations are the :data:`AUGMENTATIONS` entries ``aug`` switches on, in registration order: the uint8
    stage, then ToDtype and Normalize, then the float stage.

    Args:
        aug: the ``augmentation.train`` config.
        image_size: output side S in pixels.
        resize: whether inputs must be resized to S first (False when they already are S x S).
        in_chans: output channels (1 or 3).
        mean, std: normalisation statistics in [0, 1] units.
        interpolation: resize interpolation (bilinear, bicubic, nearest).

    Raises:
        ConfigError: an augmentation that is on has no per-sample form (``torch=False``).
    """
    geometry = dict(image_size=image_size, in_chans=in_chans)
    ops: list[Any] = [FixChannels(in_chans)]
    if resize:
        ops.append(v2.Resize((image_size, image_size), interpolation=_interp(interpolation), antialias=True))
    ops += _torch_ops(aug, "uint8", **geometry)
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    ops += _torch_ops(aug, "float", **geometry)
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
