"""EfficientNet-B0..B3 (Tan & Le, 2019): MBConv blocks with squeeze-excitation, scaled by compound coefficients.

B0 is a stack of seven stages of inverted-residual "MBConv" blocks (1x1 expand -> depthwise kxk -> squeeze-excitation
-> 1x1 project, residual when shapes allow). Bigger variants multiply every stage's width by ``width_mult`` (rounded to
multiples of 8), its block count by ``depth_mult`` (rounded up), and train at a higher resolution:

    variant  width  depth  resolution  dropout
    b0       1.0    1.0    224         0.2
    b1       1.0    1.1    240         0.2
    b2       1.1    1.2    260         0.3
    b3       1.2    1.4    300         0.3

The paper's resolution is kept in ``model.paper_resolution``; ``data_cfg["input_size"]`` is the ``image_size`` the
model is built for (default 32, like every imgcls model). For inputs <= 64 px the stem conv has stride 1 instead of 2,
otherwise a 32 px image would shrink to 1x1 before the last stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import StochasticDepth, drop_path_rates, get_activation
from imgcls.models.registry import register_model

# B0 stages: (expand ratio, kernel, stride, output channels, repeats)
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def round_channels(channels: float, width_mult: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width_mult`` and round to a multiple of ``divisor``, never losing more than 10%."""
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """Scale a stage's block count by ``depth_mult``, rounding up (the paper's rule)."""
    return int(math.ceil(depth_mult * repeats))


def init_conv_fan_out(conv: nn.Conv2d) -> None:
    """He-normal init by the conv's true fan-out, ``k*k*out_channels / groups`` (the paper's and timm's rule).

    ``nn.init.kaiming_normal_(mode="fan_out")`` ignores ``groups``: for a depthwise conv it takes ``k*k*channels``
    where each output sees only ``k*k`` weights, so the weights start ``sqrt(channels)`` times too small (17x for
    288 channels). Adam's steps are about ``lr`` whatever a weight's size, so such weights change by several percent
    a step, and with them the variance the following BatchNorm sees, faster than its running statistics (an average
    over ~10 steps at momentum 0.1) can follow. Through a chain of blocks without residuals (efficientnet_tiny) the
    stale statistics compound: in eval mode the features shrink to a constant and the model predicts one class.
    """
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class SqueezeExcite(nn.Module):
    """Channel attention: global-pool, bottleneck MLP (1x1 convs), sigmoid gate that rescales each channel."""

    def __init__(self, channels: int, reduced: int, activation: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = get_activation(activation)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        return x * torch.sigmoid(self.expand(self.act(self.reduce(scale))))


class MBConv(nn.Module):
    """Inverted residual block: expand (1x1) -> depthwise (kxk) -> squeeze-excite -> project (1x1, no activation).

    The squeeze-excitation bottleneck is a quarter of the *input* channels, as in the paper. The residual (with
    stochastic depth on the branch) is used when stride is 1 and input and output widths match.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        activation: str,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), get_activation(activation)]
        layers += [
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),  # depthwise: one filter per ch
            nn.BatchNorm2d(mid),
            get_activation(activation),
            SqueezeExcite(mid, max(1, int(in_ch * se_ratio)), activation),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),  # linear bottleneck: no activation after the projection
        ]
        self.branch = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.use_residual:
            return x + self.drop_path(out)
        return out


class EfficientNet(ImageClassifier):
    """EfficientNet: stem conv, seven MBConv stages, 1x1 head conv to ``round(1280 * width)`` channels, pool, linear.

    Args:
        width_mult: channel multiplier.
        depth_mult: block-count multiplier.
        num_classes: output classes.
        in_chans: input channels.
        stages: B0 stage table (expand, kernel, stride, channels, repeats) before scaling.
        stem_channels: stem width before scaling.
        head_channels: head conv width before scaling.
        activation: activation name (the paper uses swish = silu).
        dropout_rate: dropout before the classifier.
        drop_path_rate: stochastic depth rate of the last block (linearly less for earlier blocks).
        image_size: expected input side in pixels; <= 64 gives a stride-1 stem.
        paper_resolution: the resolution of the paper's variant (informational).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        num_classes: int = 10,
        in_chans: int = 3,
        stages: tuple[tuple[int, int, int, int, int], ...] = B0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        activation: str = "silu",
        dropout_rate: float = 0.2,
        drop_path_rate: float = 0.2,
        image_size: int | None = None,
        paper_resolution: int = 224,
    ) -> None:
        super().__init__()
        image_size = image_size or 32
        self.num_classes, self.in_chans, self.paper_resolution = num_classes, in_chans, paper_resolution
        stem_ch = round_channels(stem_channels, width_mult)
        stem_stride = 1 if image_size <= 64 else 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_ch, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(stem_ch),
            get_activation(activation),
        )
        repeats = [round_repeats(r, depth_mult) for *_, r in stages]
        dp_rates = iter(drop_path_rates(drop_path_rate, sum(repeats)))
        blocks = []
        in_ch = stem_ch
        for (expand, kernel, stride, ch, _), n in zip(stages, repeats, strict=True):
            out_ch = round_channels(ch, width_mult)
            stage = []
            for j in range(n):  # only the first block of a stage changes width and resolution
                stage.append(
                    MBConv(in_ch, out_ch, expand, kernel, stride if j == 0 else 1, activation, 0.25, next(dp_rates))
                )
                in_ch = out_ch
            blocks.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*blocks)
        self.num_features = round_channels(head_channels, width_mult)
        self.head_conv = nn.Sequential(
            nn.Conv2d(in_ch, self.num_features, 1, bias=False),
            nn.BatchNorm2d(self.num_features),
            get_activation(activation),
        )
        self.cam_layer = "head_conv"
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        self.data_cfg["input_size"] = (in_chans, image_size, image_size)
        self.data_cfg["interpolation"] = "bicubic"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_fan_out(m)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.stages(self.stem(x)))

    def stage_groups(self) -> list[nn.Module]:
        return [self.stem, *self.stages, self.head_conv]


# name: (width_mult, depth_mult, paper resolution, dropout)
_VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
}


_EFFICIENTNET_OPTIONS = """Args:
    num_classes: output classes.
    in_chans: input channels.
    image_size: expected input side in pixels; <= 64 gives a stride-1 stem.
    activation: activation name (the paper uses swish = silu).
    dropout_rate: dropout before the classifier.
    drop_path_rate: stochastic depth rate of the last block.
"""


def _efficientnet_entry(
    name: str,
    width_mult: float,
    depth_mult: float,
    paper_resolution: int,
    default_dropout: float,
    summary: str,
    head_channels: int = 1280,
) -> Callable[..., EfficientNet]:
    """Register model ``name``: an EfficientNet scaled by ``width_mult``/``depth_mult``. Its signature lists every
    option it takes (the stage table and the stem/head widths are part of the variant)."""

    def entry(
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int | None = None,
        activation: str = "silu",
        dropout_rate: float = default_dropout,
        drop_path_rate: float = 0.2,
    ) -> EfficientNet:
        return EfficientNet(
            width_mult,
            depth_mult,
            num_classes=num_classes,
            in_chans=in_chans,
            head_channels=head_channels,
            activation=activation,
            dropout_rate=dropout_rate,
            drop_path_rate=drop_path_rate,
            image_size=image_size,
            paper_resolution=paper_resolution,
        )

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{summary}\n\n{_EFFICIENTNET_OPTIONS}"
    return register_model(entry)


efficientnet_b0 = _efficientnet_entry(
    "efficientnet_b0", *_VARIANTS["b0"], "EfficientNet-B0 (4.0M parameters with 10 classes; paper resolution 224)."
)
efficientnet_b1 = _efficientnet_entry(
    "efficientnet_b1", *_VARIANTS["b1"], "EfficientNet-B1: depth x1.1 (paper resolution 240)."
)
efficientnet_b2 = _efficientnet_entry(
    "efficientnet_b2", *_VARIANTS["b2"], "EfficientNet-B2: width x1.1, depth x1.2 (paper resolution 260)."
)
efficientnet_b3 = _efficientnet_entry(
    "efficientnet_b3", *_VARIANTS["b3"], "EfficientNet-B3: width x1.2, depth x1.4 (paper resolution 300)."
)
efficientnet_tiny = _efficientnet_entry(
    "efficientnet_tiny",
    0.25,
    0.25,
    224,
    0.0,
    "Quarter width, one block per stage, 80-channel head (0.1M parameters): for tests and smoke runs.",
    head_channels=320,
)
