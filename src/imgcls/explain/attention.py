"""Where a Vision Transformer looks: the attention of one layer, and attention rollout over all layers.

- **One layer**: ``model.get_attention_maps(x, layer_idx)`` gives [B, heads, T, T] (token 0 = class token); the row of
  the class token over the patch tokens, reshaped to the patch grid, shows what the class token reads in that layer.
- **Attention rollout** (Abnar & Zuidema, 2020): the residual connection is accounted for by ``0.5 A + 0.5 I`` (rows
  renormalised), heads are fused (mean, or max), and the layers are multiplied, ``R = A_L ... A_2 A_1``; the class
  token's row of ``R`` says how much each input patch flows into the class token through all layers.

Works with any model that has ``get_attention_maps`` (the ViT and the CNN-transformer hybrid); one forward pass when
the model's blocks expose ``norm1`` and ``attn.attention_weights`` (imgcls transformers), one pass per layer otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import nn

from imgcls.explain.figures import HEATMAP_CMAP
from imgcls.explain.gradcam import overlay_heatmap, to_display_image
from imgcls.plotting import save_figure


def _require_attention(model: nn.Module) -> None:
    if not hasattr(model, "get_attention_maps"):
        raise ValueError(f"{type(model).__name__} has no attention maps (get_attention_maps); use Grad-CAM for CNNs")


def patch_grid(model: nn.Module, image_size: tuple[int, int], num_patches: int) -> tuple[int, int]:
    """The (rows, cols) of the patch-token grid for an input of ``image_size``."""
    patch = getattr(model, "patch_size", None)
    if patch:
        h, w = image_size[0] // patch, image_size[1] // patch
        if h * w == num_patches:
            return h, w
    side = int(round(math.sqrt(num_patches)))
    if side * side != num_patches:
        raise ValueError(f"cannot arrange {num_patches} patch tokens in a grid")
    return side, side


@torch.no_grad()
def all_attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Softmaxed attention of every block, first to last: a list of [B, heads, T, T]."""
    _require_attention(model)
    model.eval()
    blocks = getattr(model, "blocks", None)
    if blocks is not None and all(
        hasattr(b, "norm1") and hasattr(getattr(b, "attn", None), "attention_weights") for b in blocks
    ):
        maps: list[torch.Tensor] = []
        handles = [
            b.attn.register_forward_pre_hook(lambda m, args: maps.append(m.attention_weights(args[0]))) for b in blocks
        ]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        return maps
    maps = []
    i = 0
    while True:  # generic path: one call per layer until the model says there is none
        try:
            maps.append(model.get_attention_maps(x, i))
        except IndexError:
            return maps
        i += 1


@torch.no_grad()
def layer_attention(model: nn.Module, x: torch.Tensor, layer_idx: int = -1) -> torch.Tensor:
    """Class-token attention to each patch in one layer, per head: [B, heads, h, w] (rows of the grid)."""
    _require_attention(model)
    model.eval()
    attn = model.get_attention_maps(x, layer_idx)  # [B, heads, T, T]
    cls_to_patches = attn[:, :, 0, 1:]
    h, w = patch_grid(model, tuple(x.shape[-2:]), cls_to_patches.shape[-1])
    return cls_to_patches.reshape(*cls_to_patches.shape[:2], h, w)


@torch.no_grad()
def attention_rollout(
    model: nn.Module, x: torch.Tensor, *, head_fusion: str = "mean", discard_ratio: float = 0.0, residual: bool = True
) -> torch.Tensor:
    """Attention rollout: how much each patch contributes to the class token through all layers.

    Args:
        model: a transformer with ``get_attention_maps``.
        x: images [B, C, H, W].
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: drop this fraction of the weakest attention weights per layer (not the class token's own).
        residual: add the identity for the residual path (``0.5 A + 0.5 I``), as in the paper.

    Returns:
        [B, h, w] on the patch grid, each map scaled to [0, 1].
    """
    maps = all_attention_maps(model, x)
    if not maps:
        raise ValueError("the model returned no attention maps")
    b, _, t, _ = maps[0].shape
    eye = torch.eye(t, device=maps[0].device, dtype=torch.float32)
    rollout = eye.expand(b, t, t).clone()
    for attn in maps:
        a = attn.float()
        if head_fusion == "mean":
            a = a.mean(1)
        elif head_fusion == "max":
            a = a.amax(1)
        elif head_fusion == "min":
            a = a.amin(1)
        else:
            raise ValueError(f"head_fusion must be mean, max or min, got '{head_fusion}'")
        if discard_ratio > 0:
            flat = a.reshape(b, -1)
            n_drop = int(flat.shape[1] * discard_ratio)
            if n_drop:
                idx = flat.topk(n_drop, dim=1, largest=False).indices
                cls_self = flat[:, :1]
                flat = flat.scatter(1, idx, 0.0)
                flat = torch.cat([cls_self, flat[:, 1:]], dim=1)  # never drop the class token's attention to itself
                a = flat.reshape(b, t, t)
        if residual:
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        rollout = a @ rollout
    cls_row = rollout[:, 0, 1:]
    h, w = patch_grid(model, tuple(x.shape[-2:]), cls_row.shape[-1])
    return normalize_maps(cls_row.reshape(b, h, w))


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of [B, ...] to [0, 1] (constant maps become 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    out = torch.where(hi > lo, (flat - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def upsample_map(grid_map: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch-grid map [h, w] -> [H, W] (bilinear) as float32 numpy."""
    t = torch.as_tensor(np.asarray(grid_map), dtype=torch.float32)[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def save_head_grid(
    image: torch.Tensor | np.ndarray, head_maps: torch.Tensor, path: str | Path, *, title: str = ""
) -> Path:
    """One figure: the image, then each head's class-token attention [heads, h, w] overlaid on it, a colour bar (each
    head's map scaled to [0, 1] on its own) and ``title`` (the layer and the prediction), as PNG."""

    base = to_display_image(image)
    maps = normalize_maps(head_maps.float())
    n = maps.shape[0] + 1
    fig = Figure(figsize=(1.9 * n + 0.9, 2.5), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(base, interpolation="nearest")
    axes[0].set_title("input", fontsize=8)
    for i, m in enumerate(maps):
        axes[i + 1].imshow(overlay_heatmap(base, m.numpy(), cmap=HEATMAP_CMAP), interpolation="nearest")
        axes[i + 1].set_title(f"head {i}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=HEATMAP_CMAP), ax=list(axes[1:]), fraction=0.03)
    bar.set_label("attention (per head: 1 = its strongest)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)
