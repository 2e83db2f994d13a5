"""ResNets (He et al., 2015) with a CIFAR stem (3x3 conv, no max-pool) or the ImageNet stem (7x7/2 conv + max-pool).

The layout is the torchvision one: a stem, four stages of basic (18/34) or bottleneck (50/101/152) blocks with
widths 64-128-256-512 (x4 expansion for bottlenecks), global average pooling and a linear head. Regularisers:
stochastic depth on every residual branch (rate rising linearly with depth), optional DropBlock in the last two
stages (where feature maps are small and spatially redundant), dropout before the head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import DropBlock2D, StochasticDepth, drop_path_rates, get_activation
from imgcls.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs on the residual branch (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        activation: str,
        drop_path: float = 0.0,
        drop_block: float = 0.0,
        block_size: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = get_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = get_activation(activation)
        self.shortcut = _shortcut(in_ch, out_ch * self.expansion, stride)
        self.drop_path = StochasticDepth(drop_path)
        self.drop_block = DropBlock2D(drop_block, block_size) if drop_block > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.drop_block(self.act2(self.drop_path(out) + self.shortcut(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) on the residual branch (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        activation: str,
        drop_path: float = 0.0,
        drop_block: float = 0.0,
        block_size: int = 3,
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = get_activation(activation)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = get_activation(activation)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.act3 = get_activation(activation)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.drop_path = StochasticDepth(drop_path)
        self.drop_block = DropBlock2D(drop_block, block_size) if drop_block > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.drop_block(self.act3(self.drop_path(out) + self.shortcut(x)))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(ImageClassifier):
    """A ResNet.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        num_classes: output classes.
        in_chans: input channels.
        stem: "cifar" (3x3 conv, stride 1) or "imagenet" (7x7/2 conv + 3x3/2 max-pool).
        widths: base widths of the four stages.
        activation: activation name.
        dropout_rate: dropout before the head.
        drop_path_rate: stochastic depth rate of the last block (linearly less for earlier blocks).
        drop_block_rate: DropBlock drop probability on the output of each block of the last two stages (0: off).
        drop_block_size: DropBlock square side in feature-map pixels.
        image_size: expected input side in pixels (recorded in ``data_cfg``; default by stem: 32 or 224).
    """

    cam_layer = "stages.3"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        num_classes: int = 10,
        in_chans: int = 3,
        stem: str = "cifar",
        widths: tuple[int, ...] = (64, 128, 256, 512),
        activation: str = "relu",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_block_rate: float = 0.0,
        drop_block_size: int = 3,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem '{stem}': valid stems are cifar, imagenet")
        self.num_classes, self.in_chans = num_classes, in_chans
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[0]),
                get_activation(activation),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]),
                get_activation(activation),
                nn.MaxPool2d(3, 2, 1),
            )
        dp_rates = iter(drop_path_rates(drop_path_rate, sum(layers)))
        stages = []
        in_ch = widths[0]
        for i, (w, n) in enumerate(zip(widths, layers, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                drop_block = drop_block_rate if i >= len(widths) - 2 else 0.0
                blocks.append(block(in_ch, w, stride, activation, next(dp_rates), drop_block, drop_block_size))
                in_ch = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.cam_layer = f"stages.{len(stages) - 1}"
        self.num_features = in_ch
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(in_ch, num_classes)
        side = image_size or (32 if stem == "cifar" else 224)
        self.data_cfg["input_size"] = (in_chans, side, side)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch so every block starts as identity (Goyal et al., 2017).
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def stage_groups(self) -> list[nn.Module]:
        return [self.stem, *self.stages]


def _stem(stem: str | None, image_size: int | None) -> str:
    """The stem by input size: the CIFAR stem keeps resolution for small images, the ImageNet one divides by 4."""
    if stem is not None:
        return stem
    return "cifar" if (image_size is None or image_size <= 64) else "imagenet"


#: stage widths of the torchvision ResNets (whose ImageNet weights fit only these)
STANDARD_WIDTHS = (64, 128, 256, 512)

_RESNET_OPTIONS = """Args:
    num_classes: output classes.
    in_chans: input channels.
    image_size: expected input side in pixels; picks the stem when ``stem`` is unset (<= 64 px: cifar).
    stem: "cifar" or "imagenet" (default: by ``image_size``).
    widths: base widths of the four stages.
    activation: activation name.
    dropout_rate: dropout before the head.
    drop_path_rate: stochastic depth rate of the last block.
    drop_block_rate: DropBlock probability in the last two stages (0: off).
    drop_block_size: DropBlock square side in feature-map pixels.
"""


def _resnet_entry(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, ...],
    summary: str,
    default_widths: tuple[int, ...] = STANDARD_WIDTHS,
) -> Callable[..., ResNet]:
    """Register model ``name``: a ResNet of ``layers`` ``block``s. Its signature lists every option it takes."""

    def entry(
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int | None = None,
        stem: str | None = None,
        widths: tuple[int, ...] = default_widths,
        activation: str = "relu",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_block_rate: float = 0.0,
        drop_block_size: int = 3,
    ) -> ResNet:
        model = ResNet(
            block,
            layers,
            num_classes=num_classes,
            in_chans=in_chans,
            stem=_stem(stem, image_size),
            widths=widths,
            activation=activation,
            dropout_rate=dropout_rate,
            drop_path_rate=drop_path_rate,
            drop_block_rate=drop_block_rate,
            drop_block_size=drop_block_size,
            image_size=image_size,
        )
        # torchvision publishes ImageNet weights for the standard-width ImageNet-stem models (see models/pretrained.py).
        if model.stem[0].kernel_size == (7, 7) and tuple(widths) == STANDARD_WIDTHS:
            model.pretrained_source = f"torchvision:{name}"
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{summary}\n\n{_RESNET_OPTIONS}"
    return register_model(entry)


resnet18 = _resnet_entry(
    "resnet18", BasicBlock, (2, 2, 2, 2), "ResNet-18 (basic blocks 2-2-2-2, 11.2M parameters); CIFAR stem for <= 64 px."
)
resnet34 = _resnet_entry("resnet34", BasicBlock, (3, 4, 6, 3), "ResNet-34 (basic blocks 3-4-6-3, 21.3M parameters).")
resnet50 = _resnet_entry(
    "resnet50", Bottleneck, (3, 4, 6, 3), "ResNet-50 (bottleneck blocks 3-4-6-3, 23.5M parameters)."
)
resnet101 = _resnet_entry(
    "resnet101", Bottleneck, (3, 4, 23, 3), "ResNet-101 (bottleneck blocks 3-4-23-3, 42.5M parameters)."
)
resnet152 = _resnet_entry(
    "resnet152", Bottleneck, (3, 8, 36, 3), "ResNet-152 (bottleneck blocks 3-8-36-3, 58.2M parameters)."
)
resnet_tiny = _resnet_entry(
    "resnet_tiny",
    BasicBlock,
    (1, 1, 1, 1),
    "A one-block-per-stage ResNet with widths 16-32-64-128 (0.35M parameters): for tests and smoke runs.",
    default_widths=(16, 32, 64, 128),
)
