"""Vision Transformer (Dosovitskiy et al., 2020): an image as a sequence of patch tokens through a transformer encoder.

1. Patch embedding: a conv with kernel = stride = patch size turns [B, C, H, W] into a grid of D-dim tokens
   (patch 4 for inputs <= 64 px: a 32 px image gives 8x8 = 64 tokens; patch 16 for larger inputs: 224 px -> 14x14).
2. A learned class token is prepended and a learned positional embedding added (tokens carry no position otherwise).
3. ``depth`` pre-norm blocks: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, stochastic depth on both branches.
4. A final LayerNorm; the class token's features feed the linear head.

``get_attention_maps(x, layer_idx)`` returns the softmaxed attention of one block, [B, heads, tokens, tokens], for
attention visualisation and rollout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import StochasticDepth, drop_path_rates, get_activation
from imgcls.models.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention: per head ``softmax(q k^T / sqrt(d)) v``, heads concatenated and projected."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each [B, heads, T, head_dim]

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmaxed attention [B, heads, T, T] (each row sums to 1) for already-normalised tokens ``x``."""
        q, k, _ = self._qkv(x)
        return (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)  # fused kernel; same maths as attention_weights(x) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """Position-wise feed-forward network: Linear(dim -> hidden), activation, Linear(hidden -> dim)."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = get_activation(activation)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer encoder block (shared by the ViT and the CNN-transformer hybrid)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, activation: str, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation)
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenEmbed(nn.Module):
    """Image -> tokens: ``patchify`` ([B, C, H, W] -> [B, D, h, w]), flatten, prepend the class token, add positions.

    The positional embedding is learned for the ``grid`` the model is built for; other input sizes get it resized
    bicubically (so a model can run at a different resolution, e.g. for test-time augmentation).
    """

    def __init__(self, patchify: nn.Module, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.patchify, self.grid = patchify, grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding [1, 1 + h*w, D] for an h x w token grid."""
        if (h, w) == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)  # [1, D, gh, gw]
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patchify(x)  # [B, D, h, w]
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed_for(h, w)


class VisionTransformer(ImageClassifier):
    """ViT with a class token. ``forward_features`` returns all tokens [B, 1 + h*w, D]; ``pool`` takes the class token.

    Args:
        num_classes: output classes.
        in_chans: input channels.
        image_size: input side in pixels the positional embedding is learned for (default 32).
        patch_size: patch side (default 4 for inputs <= 64 px, else 16); with ``patchify`` its total stride.
        dim: token width.
        depth: number of transformer blocks.
        heads: attention heads per block.
        mlp_ratio: MLP hidden width / dim.
        activation: MLP activation (gelu in the paper).
        dropout_rate: dropout before the head.
        drop_path_rate: stochastic depth rate of the last block (linearly less for earlier blocks).
        patchify: optional module mapping images to [B, dim, H / patch_size, W / patch_size] (the hybrid's CNN stem);
            default: a patch_size x patch_size conv with stride patch_size.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int | None = None,
        patch_size: int | None = None,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patchify: nn.Module | None = None,
    ) -> None:
        super().__init__()
        image_size = image_size or 32
        patch_size = patch_size or (4 if image_size <= 64 else 16)
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, dim
        self.patch_size, self.num_heads = patch_size, heads
        if patchify is None:
            patchify = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        grid = (image_size // patch_size, image_size // patch_size)
        self.embed = TokenEmbed(patchify, dim, grid)
        self.blocks = nn.Sequential(
            *(Block(dim, heads, mlp_ratio, activation, rate) for rate in drop_path_rates(drop_path_rate, depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(dim, num_classes)
        self.data_cfg["input_size"] = (in_chans, image_size, image_size)
        self.data_cfg["interpolation"] = "bicubic"
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(x)))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, 0]  # the class token

    def stage_groups(self) -> list[nn.Module]:
        # The final norm belongs with the last block: unfreezing it alone would waste an epoch of gradual unfreezing.
        return [self.embed, *self.blocks[:-1], nn.ModuleList([self.blocks[-1], self.norm])]

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides 1-D ones (learned positions and the class token)."""
        return {"embed.cls_token", "embed.pos_embed"}

    def get_attention_maps(self, x: torch.Tensor, layer_idx: int = -1) -> torch.Tensor:
        """Softmaxed self-attention of block ``layer_idx`` (negative counts from the end).

        Args:
            x: images [B, C, H, W].
            layer_idx: which block.

        Returns:
            [B, heads, T, T] with T = 1 + number of patches (token 0 is the class token); rows sum to 1.
            Gradients flow unless the caller wraps the call in ``torch.no_grad()`` (visualisation should).
        """
        depth = len(self.blocks)
        if not -depth <= layer_idx < depth:
            raise IndexError(f"layer_idx {layer_idx} out of range for {depth} blocks")
        layer_idx %= depth
        tokens = self.embed(x)
        for block in self.blocks[:layer_idx]:
            tokens = block(tokens)
        block = self.blocks[layer_idx]
        return block.attn.attention_weights(block.norm1(tokens))


_VIT_OPTIONS = """Args:
    num_classes: output classes.
    in_chans: input channels.
    image_size: input side in pixels the positional embedding is learned for (default 32).
    patch_size: patch side (default 4 for inputs <= 64 px, else 16).
    mlp_ratio: MLP hidden width / dim.
    activation: MLP activation.
    dropout_rate: dropout before the head.
    drop_path_rate: stochastic depth rate of the last block.
"""


def _vit_entry(
    name: str, dim: int, depth: int, heads: int, summary: str, default_mlp_ratio: float = 4.0
) -> Callable[..., VisionTransformer]:
    """Register model ``name``: a ViT of ``depth`` blocks of width ``dim``. Its signature lists every option it
    takes."""

    def entry(
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int | None = None,
        patch_size: int | None = None,
        mlp_ratio: float = default_mlp_ratio,
        activation: str = "gelu",
        dropout_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> VisionTransformer:
        return VisionTransformer(
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=image_size,
            patch_size=patch_size,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            activation=activation,
            dropout_rate=dropout_rate,
            drop_path_rate=drop_path_rate,
        )

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{summary}\n\n{_VIT_OPTIONS}"
    return register_model(entry)


vit_tiny = _vit_entry(
    "vit_tiny", 192, 12, 3, "ViT-Tiny: dim 192, 12 blocks, 3 heads (5.4M parameters); patch 4 for <= 64 px, else 16."
)
vit_small = _vit_entry(
    "vit_small", 384, 12, 6, "ViT-Small: dim 384, 12 blocks, 6 heads (21.3M parameters); patch 4 for <= 64 px, else 16."
)
vit_micro = _vit_entry(
    "vit_micro",
    64,
    2,
    2,
    "A two-block, 64-dim ViT (0.07M parameters): for tests and smoke runs.",
    default_mlp_ratio=2.0,
)
