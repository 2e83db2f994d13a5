"""Batch-level mixing on the device: CutMix, MixUp and switching between them.

Every mixer maps ``(images [B, C, H, W], labels) -> (images, soft targets [B, K] float32)``; ``labels`` may be class
indices [B] or soft targets [B, K] already (e.g. from an earlier mixer). Each image is mixed with its neighbour in the
batch (``roll(1)``, as torchvision v2 does): the loader shuffles, so the neighbour is a random partner, and rolling
needs no extra random numbers or gather.

As in torchvision v2, drawing the random parameters (:meth:`get_params`, on the CPU from torch's global RNG, one
draw per batch, so no device sync) is separate from applying them (:meth:`apply`, pure tensor ops on the batch's
device): a test or the preview can fix lambda and the box. All mixers pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from imgcls.config import MixConfig

MixKind = Literal["none", "cutmix", "mixup"]


@dataclass(frozen=True)
class MixParams:
    """One batch's mixing decision.

    Attributes:
        kind: "none" (batch left as is), "cutmix" or "mixup".
        lam: weight of each image's own label in its target (1.0 for "none"). For CutMix it is the fraction of
            pixels that kept their own image, after clipping the box to the image.
        box: CutMix's pasted region ``(y0, y1, x0, x1)`` in pixels, half-open; None otherwise.
    """

    kind: MixKind
    lam: float
    box: tuple[int, int, int, int] | None = None


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices [B] -> one-hot float32 [B, K]; soft targets [B, K] pass through as float32."""
    if labels.ndim == 1:
        return F.one_hot(labels.long(), num_classes).float()
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels.float()
    raise ValueError(f"labels must be class indices [B] or soft targets [B, {num_classes}], got {tuple(labels.shape)}")


def _check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"mixing needs a batch of images [B, C, H, W], got shape {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")


def _mix_targets(labels: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    y = soft_targets(labels, num_classes)
    return y * lam + y.roll(1, 0) * (1.0 - lam)


def _sample_beta(alpha: float) -> float:
    # torch's global RNG (seeded by the runner) keeps runs reproducible; the draw is a CPU scalar: no device sync
    return float(torch.distributions.Beta(alpha, alpha).sample())


class CutMix:
    """CutMix (Yun et al., 2019): paste a box from the partner image; targets weighted by the area each keeps.

    lambda ~ Beta(alpha, alpha) sets the box area ``(1 - lambda) * H * W`` and its centre is uniform over the image;
    the box is clipped at the border, and lambda is then corrected to the fraction of pixels actually kept, so the
    targets match the pixels.

    Args:
        alpha: Beta distribution parameter (> 0).
        prob: probability that a batch is mixed at all.
        num_classes: K, for the soft targets.
    """

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, *, num_classes: int) -> None:
        if alpha <= 0:
            raise ValueError(f"CutMix alpha must be > 0, got {alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"CutMix prob must be in [0, 1], got {prob}")
        self.alpha, self.prob, self.num_classes = alpha, prob, num_classes

    @staticmethod
    def box_for(lam: float, height: int, width: int, cy: float, cx: float) -> tuple[tuple[int, int, int, int], float]:
        """The clipped box for a target keep-fraction ``lam`` centred at (cy, cx) in [0, 1) units, and the corrected
        lambda (fraction of the image outside the clipped box)."""
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(round(height * cut)), int(round(width * cut))
        yc, xc = int(cy * height), int(cx * width)
        y0, y1 = max(0, yc - ch // 2), min(height, yc - ch // 2 + ch)
        x0, x1 = max(0, xc - cw // 2), min(width, xc - cw // 2 + cw)
        kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        return (y0, y1, x0, x1), kept

    def get_params(self, height: int, width: int) -> MixParams:
        """Draw whether to mix, lambda and the box for an H x W batch."""
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return MixParams("none", 1.0)
        lam = _sample_beta(self.alpha)
        cy, cx = torch.rand(2).tolist()
        box, kept = self.box_for(lam, height, width, cy, cx)
        return MixParams("cutmix", kept, box)

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix with fixed parameters. ``params.lam`` is used as given (it should be the kept fraction of ``box``)."""
        _check_images(images, labels)
        if params.kind == "none":
            return images, soft_targets(labels, self.num_classes)
        if params.kind != "cutmix" or params.box is None:
            raise ValueError(f"CutMix cannot apply {params}")
        y0, y1, x0, x1 = params.box
        out = images.clone()
        out[..., y0:y1, x0:x1] = images[..., y0:y1, x0:x1].roll(1, 0)  # roll only the box, not the whole batch
        return out, _mix_targets(labels, self.num_classes, params.lam)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(images, labels, self.get_params(images.shape[-2], images.shape[-1]))

    def __repr__(self) -> str:
        return f"CutMix(alpha={self.alpha}, prob={self.prob}, num_classes={self.num_classes})"


class MixUp:
    """MixUp (Zhang et al., 2018): ``lam * x + (1 - lam) * partner``, targets likewise; lambda ~ Beta(alpha, alpha).

    Needs floating-point images (mix after normalisation: a convex combination commutes with the affine normalise).

    Args:
        alpha: Beta distribution parameter (> 0).
        prob: probability that a batch is mixed at all.
        num_classes: K, for the soft targets.
    """

    def __init__(self, alpha: float = 0.2, prob: float = 1.0, *, num_classes: int) -> None:
        if alpha <= 0:
            raise ValueError(f"MixUp alpha must be > 0, got {alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"MixUp prob must be in [0, 1], got {prob}")
        self.alpha, self.prob, self.num_classes = alpha, prob, num_classes

    def get_params(self, height: int = 0, width: int = 0) -> MixParams:
        """Draw whether to mix and lambda (the image size is not needed; accepted for a uniform interface)."""
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return MixParams("none", 1.0)
        return MixParams("mixup", _sample_beta(self.alpha))

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix with fixed parameters."""
        _check_images(images, labels)
        if params.kind == "none":
            return images, soft_targets(labels, self.num_classes)
        if params.kind != "mixup":
            raise ValueError(f"MixUp cannot apply {params}")
        if not images.is_floating_point():
            raise TypeError(f"MixUp needs floating-point images (mix after normalising), got {images.dtype}")
        lam = params.lam
        out = torch.lerp(images.roll(1, 0), images, lam)  # lam * x + (1 - lam) * partner in one fused op
        return out, _mix_targets(labels, self.num_classes, lam)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(images, labels, self.get_params())

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha}, prob={self.prob}, num_classes={self.num_classes})"


class MixSwitch:
    """Per batch: with probability ``prob`` mix, by CutMix with probability ``switch_prob``, else by MixUp (timm's
    switching). The two mixers' own ``prob`` is ignored here: ``prob`` decides for both.

    Args:
        cutmix: the CutMix to use.
        mixup: the MixUp to use.
        switch_prob: probability of CutMix rather than MixUp for a mixed batch.
        prob: probability that a batch is mixed at all.
    """

    def __init__(self, cutmix: CutMix, mixup: MixUp, switch_prob: float = 0.5, prob: float = 1.0) -> None:
        if cutmix.num_classes != mixup.num_classes:
            raise ValueError(f"num_classes differ: CutMix {cutmix.num_classes}, MixUp {mixup.num_classes}")
        for name, p in (("switch_prob", switch_prob), ("prob", prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"MixSwitch {name} must be in [0, 1], got {p}")
        self.cutmix, self.mixup, self.switch_prob, self.prob = cutmix, mixup, switch_prob, prob
        self.num_classes = cutmix.num_classes

    def get_params(self, height: int, width: int) -> MixParams:
        mix_draw, switch_draw = torch.rand(2).tolist()
        if mix_draw >= self.prob:
            return MixParams("none", 1.0)
        if switch_draw < self.switch_prob:
            lam = _sample_beta(self.cutmix.alpha)
            cy, cx = torch.rand(2).tolist()
            box, kept = CutMix.box_for(lam, height, width, cy, cx)
            return MixParams("cutmix", kept, box)
        return MixParams("mixup", _sample_beta(self.mixup.alpha))

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.cutmix if params.kind == "cutmix" else self.mixup).apply(images, labels, params)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(images, labels, self.get_params(images.shape[-2], images.shape[-1]))

    def __repr__(self) -> str:
        return f"MixSwitch({self.cutmix!r}, {self.mixup!r}, switch_prob={self.switch_prob}, prob={self.prob})"


Mixer = CutMix | MixUp | MixSwitch


def build_mixer(mix_cfg: MixConfig, num_classes: int) -> Mixer | None:
    """The mixer ``augmentation.mix`` asks for: CutMix, MixUp, a switch between both, or None (both alphas 0)."""
    use_cutmix, use_mixup = mix_cfg.cutmix_alpha > 0, mix_cfg.mixup_alpha > 0
    if use_cutmix and use_mixup:
        return MixSwitch(
            CutMix(mix_cfg.cutmix_alpha, num_classes=num_classes),
            MixUp(mix_cfg.mixup_alpha, num_classes=num_classes),
            switch_prob=mix_cfg.switch_prob,
            prob=mix_cfg.prob,
        )
    if use_cutmix:
        return CutMix(mix_cfg.cutmix_alpha, mix_cfg.prob, num_classes=num_classes)
    if use_mixup:
        return MixUp(mix_cfg.mixup_alpha, mix_cfg.prob, num_classes=num_classes)
    return None
