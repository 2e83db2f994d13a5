"""A small fast CIFAR network in the style of the record trainers (Keller Jordan's airbench, after Page's
"How to train your ResNet"): a 2x2 conv stem, three conv groups (conv -> max-pool -> BN -> act -> conv -> BN -> act)
that each halve the resolution, global max-pooling and a bias-free linear head scaled down by ``head_scale``.

No residual connections and few, wide layers: on small images this does more accuracy per FLOP than a ResNet, which
is what the ``speedrun``/``cpu_speedrun`` presets need. airbench94 uses widths (64, 256, 256).

Two of airbench's initialisations are the defaults, because they are what makes a few epochs enough:

- ``whiten``: the stem is a fixed 2x2 patch-whitening conv. :meth:`AirbenchNet.init_from_data` sets its filters to
  the eigenvectors of the covariance of 2x2 patches of training images, scaled by 1/sqrt(eigenvalue) (each filter
  twice, with both signs, so the following activation loses nothing), and freezes them; only its bias trains.
  :func:`imgcls.engine.train.train` calls it on training images before the optimizer is built. Until then the stem
  is an ordinary trainable conv, so the model also works when built and trained by hand.
- ``dirac``: the first ``in_channels`` filters of every 3x3 conv start as identities, so the untrained network passes
  its input through and early gradients are informative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import get_activation
from imgcls.models.registry import register_model


def dirac_init_(conv: nn.Conv2d) -> None:
    """airbench's partial identity init: filter i < in_channels is the identity on input channel i."""
    w = conv.weight.data
    nn.init.dirac_(w[: min(w.shape[0], w.shape[1])])


def batch_norm(channels: int, momentum: float, scale: bool) -> nn.BatchNorm2d:
    """BatchNorm whose scale may be fixed at 1 (airbench trains only the shift, with a raised lr)."""
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    bn.weight.requires_grad_(scale)
    return bn


class ConvGroup(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        activation: str,
        dirac: bool = False,
        bn_momentum: float = 0.1,
        bn_scale: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = batch_norm(out_ch, bn_momentum, bn_scale)
        self.act1 = get_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding="same", bias=False)
        self.bn2 = batch_norm(out_ch, bn_momentum, bn_scale)
        self.act2 = get_activation(activation)
        if dirac:
            dirac_init_(self.conv1)
            dirac_init_(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))  # pool before BN: BN/act work on 4x fewer values
        return self.act2(self.bn2(self.conv2(x)))


class AirbenchNet(ImageClassifier):
    """Stem + three :class:`ConvGroup` + max-pool + linear.

    Args:
        num_classes: output classes.
        in_chans: input channels.
        widths: channels of the stem and of the three groups (with ``whiten`` the stem has ``8 * in_chans``
            channels: 2 signs x the ``4 * in_chans`` dimensions of a 2x2 patch, 24 for RGB as in airbench).
        activation: activation name (GELU in airbench).
        head_scale: multiplier on the logits (airbench's 1/9 keeps early logits small, like a temperature).
        dropout_rate: dropout before the head.
        whiten: patch-whitening stem (see the module docstring and :meth:`init_from_data`).
        dirac: identity-initialise the first filters of each 3x3 conv.
        bn_momentum: BatchNorm running-statistics momentum (torch convention; airbench uses 0.4).
        bn_scale: train the BatchNorm scales (airbench fixes them at 1).
    """

    cam_layer = "groups.2"

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int, int] = (24, 64, 256, 256),
        activation: str = "gelu",
        head_scale: float = 1 / 9,
        dropout_rate: float = 0.0,
        whiten: bool = True,
        dirac: bool = True,
        bn_momentum: float = 0.1,
        bn_scale: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, widths[-1]
        self.whiten = whiten
        if whiten:
            # no BN after the whitening conv: its output is already decorrelated and unit-variance by construction
            stem_width = 2 * in_chans * 2 * 2
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 2, bias=True), get_activation(activation))
        else:
            stem_width = widths[0]
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, 2, bias=False), nn.BatchNorm2d(stem_width), get_activation(activation)
            )
        group_widths = (stem_width, *widths[1:])
        self.groups = nn.Sequential(
            *(
                ConvGroup(a, b, activation, dirac, bn_momentum, bn_scale)
                for a, b in zip(group_widths[:-1], group_widths[1:], strict=True)
            )
        )
        self.head_scale = head_scale
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening stem from normalised training images [N, C, H, W] and freeze its filters.

        The filters are the eigenvectors ``v`` of the covariance of all 2x2 patches, scaled by ``1 / sqrt(lambda +
        eps)``, so each output channel has unit variance and the channels are uncorrelated; each filter appears with
        both signs (``eps`` as in airbench). The bias stays trainable. A no-op without ``whiten``.
        """
        if not self.whiten:
            return
        conv: nn.Conv2d = self.stem[0]
        c, k = conv.in_channels, conv.kernel_size[0]
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"init_from_data needs images [N, {c}, H, W], got {tuple(images.shape)}")
        x = images.to(conv.weight.device, torch.float32)
        patches = x.unfold(2, k, 1).unfold(3, k, 1)  # [N, C, H-1, W-1, k, k]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + eps).sqrt()[:, None]).flip(0)  # largest first
        filters = filters.reshape(-1, c, k, k).float()
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.zero_()
        conv.weight.requires_grad_(False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(self.stem(x))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        # Global max pooling through max_pool's indices, not ``amax``: amax's backward finds the maxima again by
        # equality, and under torch.compile + bf16 autocast on CPU (torch 2.14) the recomputed GELU output no longer
        # equals the stored bf16 max, which gave 0/0 = NaN gradients everywhere below the head.
        return F.adaptive_max_pool2d(features, 1).flatten(1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(features)
        if pre_logits:
            return pooled
        return self.head(self.head_drop(pooled)) * self.head_scale

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes, bias=False).to(device) if num_classes else nn.Identity()

    def stage_groups(self) -> list[nn.Module]:
        return [self.stem, *self.groups]


@register_model
def airbench(
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    widths: tuple[int, int, int, int] = (24, 64, 256, 256),
    activation: str = "gelu",
    head_scale: float = 1 / 9,
    dropout_rate: float = 0.0,
    whiten: bool = True,
    dirac: bool = True,
    bn_momentum: float = 0.1,
    bn_scale: bool = True,
) -> AirbenchNet:
    """airbench94's network (whitening stem, widths 64-256-256, about 2M parameters). Options: see
    :class:`AirbenchNet`; any input size works (global pooling), so ``image_size`` is not needed."""
    del image_size
    return AirbenchNet(
        num_classes=num_classes,
        in_chans=in_chans,
        widths=widths,
        activation=activation,
        head_scale=head_scale,
        dropout_rate=dropout_rate,
        whiten=whiten,
        dirac=dirac,
        bn_momentum=bn_momentum,
        bn_scale=bn_scale,
    )


@register_model
def airbench_small(
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    activation: str = "gelu",
    head_scale: float = 1 / 9,
    dropout_rate: float = 0.0,
    whiten: bool = True,
    dirac: bool = True,
    bn_momentum: float = 0.1,
    bn_scale: bool = True,
) -> AirbenchNet:
    """Half-width airbench (whitening stem, widths 32-128-128) for CPU speedruns: about a quarter of the FLOPs.
    Options as for :func:`airbench`."""
    del image_size
    return AirbenchNet(
        num_classes=num_classes,
        in_chans=in_chans,
        widths=(24, 32, 128, 128),
        activation=activation,
        head_scale=head_scale,
        dropout_rate=dropout_rate,
        whiten=whiten,
        dirac=dirac,
        bn_momentum=bn_momentum,
        bn_scale=bn_scale,
    )
