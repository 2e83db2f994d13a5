"""A CNN-transformer hybrid: a small conv stem makes the patch tokens, a ViT encoder relates them.

Convolutions are good at local texture with few parameters and build in translation equivariance, which a plain
ViT must learn from data (hence its hunger for data on CIFAR-size datasets). The hybrid lets a conv stem reduce the
image to an h x w feature grid (stride 4 for inputs <= 64 px: 32 px -> 8x8 tokens; stride 16 otherwise), projects each
grid cell to a token with a 1x1 conv, and runs the same pre-norm transformer blocks as :mod:`imgcls.models.vit`.

The conv stem's last stage is a natural Grad-CAM layer (``cam_layer``); ``get_attention_maps`` works as for the ViT.
"""

from __future__ import annotations

import math

from torch import nn

from imgcls.models.layers import ModuleGroup, get_activation
from imgcls.models.registry import register_model
from imgcls.models.vit import VisionTransformer


def _conv_bn_act(in_ch: int, out_ch: int, stride: int, activation: str) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), get_activation(activation)]


class CNNTransformer(VisionTransformer):
    """Conv stem -> 1x1 projection to tokens -> transformer encoder -> class-token head.

    Args:
        num_classes: output classes.
        in_chans: input channels.
        image_size: input side in pixels (default 32); the stem's total stride is 4 for <= 64 px, else 16.
        stem_width: channels of the first conv stage; each later stage doubles them.
        dim: token width.
        depth: number of transformer blocks.
        heads: attention heads per block.
        mlp_ratio: MLP hidden width / dim.
        activation: activation of the conv stem and the MLPs.
        dropout_rate: dropout before the head.
        drop_path_rate: stochastic depth rate of the last block.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int | None = None,
        stem_width: int = 32,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        image_size = image_size or 32
        total_stride = 4 if image_size <= 64 else 16
        # Small images keep full resolution in the first stage (stride 1) to see fine detail; each following
        # stage halves the resolution. Each stage: a strided 3x3 conv then a 3x3 conv.
        n_down = int(math.log2(total_stride))
        strides = [1] + [2] * n_down if image_size <= 64 else [2] * n_down
        stages: list[nn.Module] = []
        in_ch = in_chans
        for i, stride in enumerate(strides):
            width = stem_width * 2**i
            stages.append(
                nn.Sequential(
                    *_conv_bn_act(in_ch, width, stride, activation), *_conv_bn_act(width, width, 1, activation)
                )
            )
            in_ch = width
        patchify = nn.Sequential(*stages, nn.Conv2d(in_ch, dim, 1))  # 1x1 conv: one token per grid cell
        super().__init__(
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=image_size,
            patch_size=total_stride,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            activation=activation,
            dropout_rate=dropout_rate,
            drop_path_rate=drop_path_rate,
            patchify=patchify,
        )
        self.cam_layer = f"embed.patchify.{len(stages) - 1}"
        for m in self.embed.patchify.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stage_groups(self) -> list[nn.Module]:
        # Conv stages first (so freeze_layers=N can freeze just the CNN), then the tokeniser, then the blocks.
        *conv_stages, proj = self.embed.patchify
        tokens = ModuleGroup([proj], [self.embed.cls_token, self.embed.pos_embed])
        return [*conv_stages, tokens, *self.blocks[:-1], nn.ModuleList([self.blocks[-1], self.norm])]


@register_model
def cnn_transformer_small(
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    mlp_ratio: float = 4.0,
    activation: str = "gelu",
    dropout_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> CNNTransformer:
    """Conv stem 32-64-128 channels, 6 blocks of dim 192 with 3 heads (3.0M parameters). Options: see
    :class:`CNNTransformer`."""
    return CNNTransformer(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        stem_width=32,
        dim=192,
        depth=6,
        heads=3,
        mlp_ratio=mlp_ratio,
        activation=activation,
        dropout_rate=dropout_rate,
        drop_path_rate=drop_path_rate,
    )


@register_model
def cnn_transformer_base(
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    mlp_ratio: float = 4.0,
    activation: str = "gelu",
    dropout_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> CNNTransformer:
    """Conv stem 64-128-256 channels, 8 blocks of dim 384 with 6 heads (15M parameters). Options: see
    :class:`CNNTransformer`."""
    return CNNTransformer(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        stem_width=64,
        dim=384,
        depth=8,
        heads=6,
        mlp_ratio=mlp_ratio,
        activation=activation,
        dropout_rate=dropout_rate,
        drop_path_rate=drop_path_rate,
    )
