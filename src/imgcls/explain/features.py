"""Feature maps: what a layer of a trained model outputs for an image, channel by channel.

Early layers of a CNN respond to edges and colours at full resolution; later ones to larger, more abstract patterns
at a coarser grid. :func:`feature_maps` records any layers' outputs with forward hooks (one pass, weights untouched);
:func:`viewable_layers` lists the layers whose output can be shown as maps, found by one such pass: conv-style
outputs ``[B, C, h, w]``, and transformer token outputs ``[B, N, D]`` whose patch tokens form a square grid (the
class token left out), shown as ``D`` maps of ``g x g`` patches. :func:`plot_feature_maps` draws the input beside
the strongest channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from imgcls.config import UserFacingError
from imgcls.explain.gradcam import to_display_image


class UnknownLayerError(UserFacingError, ValueError):
    """A layer name the model does not have, or whose output is no map; the message lists the valid ones."""


def as_maps(output: object) -> torch.Tensor | None:
    """A layer output as maps ``[B, C, h, w]``: conv outputs as they are; token outputs ``[B, N, D]`` with a square
    number of patch tokens (after 0, 1 or 2 leading class/distillation tokens) as ``[B, D, g, g]``; else None."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.ndim == 4:
        return output
    if output.ndim == 3:
        b, n, d = output.shape
        for extra in (1, 0, 2):  # ViTs put a class token first; a token count that is square as it is has none
            g = math.isqrt(n - extra) if n > extra else 0
            if g > 1 and g * g == n - extra:
                return output[:, extra:].transpose(1, 2).reshape(b, d, g, g)
    return None


def _record(model: nn.Module, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor | None]:
    """One forward pass of ``images`` with a hook on each named layer: name -> its output as maps (or None)."""
    found: dict[str, torch.Tensor | None] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: tuple, out: object, name: str = name) -> None:
            maps = as_maps(out)
            found[name] = None if maps is None else maps.detach().float().cpu()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(images.to(device))
    finally:
        for h in handles:
            h.remove()
    return found


def viewable_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The dotted names of every layer whose output on ``example`` ([1, C, H, W], preprocessed) is a map, in forward
    order of definition."""
    names = [n for n, _ in model.named_modules() if n]
    found = _record(model, example, names)
    return [n for n in names if found.get(n) is not None]


def feature_maps(model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` for ``images`` ([B, C, H, W], preprocessed) as maps ``[B, C, h, w]`` (float, CPU).

    Raises:
        UnknownLayerError: a name the model does not have, or a layer whose output is no map; it lists the layers
            that are.
    """
    valid = None
    for name in layers:
        try:
            model.get_submodule(name)
        except AttributeError:
            valid = valid or viewable_layers(model, images[:1])
            raise UnknownLayerError(_unknown(name, valid, "the model has no layer")) from None
    found = _record(model, images, layers)
    for name in layers:
        if found.get(name) is None:
            valid = valid or viewable_layers(model, images[:1])
            raise UnknownLayerError(_unknown(name, valid, "no feature maps come out of layer"))
    return {n: found[n] for n in layers}  # type: ignore[misc]


def _unknown(name: str, valid: Sequence[str], what: str) -> str:
    shown = ", ".join(valid[:60]) + (f" ... ({len(valid)} in all)" if len(valid) > 60 else "")
    return f"{what} '{name}'; layers with feature maps: {shown or 'none'}"


def strongest_channels(maps: torch.Tensor, k: int) -> list[int]:
    """The ``k`` channels of one image's maps [C, h, w] with the largest mean activation, strongest first."""
    return maps.flatten(1).mean(1).argsort(descending=True)[:k].tolist()


def plot_feature_maps(
    maps: torch.Tensor, *, image: torch.Tensor | np.ndarray | None = None, layer: str = "", channels: int = 16
) -> Figure:
    """The input (when given) and the ``channels`` strongest maps of one image ([C, h, w]), each scaled to its own
    range (viridis: bright = strong), titled with channel index and mean activation."""
    chosen = strongest_channels(maps, channels)
    n = len(chosen) + (image is not None)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.8 * cols, 1.9 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    start = 0
    if image is not None:
        axes[0].imshow(to_display_image(image), interpolation="nearest")
        axes[0].set_title("input", fontsize=8)
        start = 1
    for ax, c in zip(axes[start:], chosen, strict=False):
        m = maps[c].numpy()
        ax.imshow(m, cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c} (mean {m.mean():.2f})", fontsize=7)
    c, h, w = maps.shape
    fig.suptitle(f"{layer}: {c} channels of {h}x{w}; the {len(chosen)} strongest", fontsize=9)
    return fig
