"""A small fast CIFAR network in the style of the record trainers (Keller Jordan's airbench, after Page's
"How to train your ResNet"): a 2x2 conv stem, three conv groups (conv -> max-pool -> BN -> act -> conv -> BN -> act)
that each halve the resolution, global max-pooling and a bias-free linear head scaled down by ``head_scale``.

No residual connections and few, wide layers: on small images this does more accuracy per FLOP than a ResNet, which
is what the ``speedrun``/``cpu_speedrun`` presets need. airbench94 uses widths (64, 256, 256).
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import get_activation
from imgcls.models.registry import register_model


class ConvGroup(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = get_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))  # pool before BN: BN/act work on 4x fewer values
        return self.act2(self.bn2(self.conv2(x)))


class AirbenchNet(ImageClassifier):
    """Stem + three :class:`ConvGroup` + max-pool + linear.

    Args:
        num_classes: output classes.
        in_chans: input channels.
        widths: channels of the stem and of the three groups.
        activation: activation name (GELU in airbench).
        head_scale: multiplier on the logits (airbench's 1/9 keeps early logits small, like a temperature).
        dropout_rate: dropout before the head.
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
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, widths[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 2, bias=False), nn.BatchNorm2d(widths[0]), get_activation(activation)
        )
        self.groups = nn.Sequential(
            *(ConvGroup(a, b, activation) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.head_scale = head_scale
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(self.stem(x))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.amax(dim=(2, 3))

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
def airbench(image_size: int | None = None, **kwargs) -> AirbenchNet:
    """airbench94's network (widths 24-64-256-256, about 2M parameters)."""
    return AirbenchNet(**kwargs)


@register_model
def airbench_small(image_size: int | None = None, **kwargs) -> AirbenchNet:
    """Half-width airbench (24-32-128-128) for CPU speedruns: about a quarter of the FLOPs."""
    return AirbenchNet(widths=(24, 32, 128, 128), **kwargs)
