"""Model size and cost: parameter counts, multiply-accumulates (MACs) per image, the table ``imgcls models`` prints."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from imgcls.models.factory import create_model
from imgcls.models.transfer import apply_freezing


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) number of parameters (shared parameters counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _as_input_size(input_size: int | tuple[int, ...], in_chans: int) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        return (in_chans, input_size, input_size)
    if len(input_size) == 2:
        return (in_chans, *input_size)
    c, h, w = input_size
    return (c, h, w)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a single image (FLOPs / 2, counted by ``FlopCounterMode``).

    Counts matrix multiplications and convolutions (including attention); elementwise ops, norms and pooling are
    not counted, as is customary.

    Args:
        model: the model (evaluated in eval mode, then put back in its previous mode).
        input_size: (C, H, W), (H, W) or a square side in pixels.

    Returns:
        MACs per image.
    """
    c, h, w = _as_input_size(input_size, getattr(model, "in_chans", 3))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        # The math attention backend runs as plain matmuls the counter sees; fused CPU kernels are not counted.
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, c, h, w, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_table(
    names: Iterable[str],
    num_classes: int = 10,
    input_size: int | tuple[int, ...] | None = None,
    freeze_backbone: bool = False,
    freeze_layers: int = 0,
) -> list[dict[str, Any]]:
    """One row per model: parameters, trainable parameters under the chosen freezing, MACs per image.

    Args:
        names: registered model names (or ``timm:<name>``).
        num_classes: classifier width to build the models with.
        input_size: input side (or (C, H, W)) to build and measure at; default: each model's own ``data_cfg``
            input size (32 px for in-house models, the weights' resolution for pretrained ones).
        freeze_backbone: count trainable parameters with the backbone frozen.
        freeze_layers: count trainable parameters with the first N stage groups frozen.

    Returns:
        Rows with keys "name", "params", "trainable_params", "macs", "input_size" (C, H, W) and "stage_groups".
    """
    rows = []
    for name in names:
        kwargs: dict[str, Any] = {}
        if input_size is not None:
            kwargs["image_size"] = input_size if isinstance(input_size, int) else input_size[-1]
        model = create_model(name, num_classes=num_classes, **kwargs)
        size = model.data_cfg["input_size"] if input_size is None else _as_input_size(input_size, model.in_chans)
        apply_freezing(model, freeze_backbone=freeze_backbone, freeze_layers=freeze_layers)
        total, trainable = count_params(model)
        rows.append(
            {
                "name": name,
                "params": total,
                "trainable_params": trainable,
                "macs": count_macs(model, size),
                "input_size": tuple(size),
                "stage_groups": len(model.stage_groups()),
            }
        )
    return rows
