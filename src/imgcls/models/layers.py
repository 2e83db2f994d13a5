"""Small building blocks shared by the in-house models."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,  # swish is SiLU (x * sigmoid(x))
    "leaky_relu": nn.LeakyReLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, gelu, silu/swish, leaky_relu, mish)."""
    try:
        cls = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation '{name}'. Valid: {', '.join(sorted(_ACTIVATIONS))}") from None
    if cls in (nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.Mish):
        return cls(inplace=True)
    return cls()


def list_activations() -> list[str]:
    return sorted(_ACTIVATIONS)


class StochasticDepth(nn.Module):
    """Stochastic depth, a.k.a. DropPath (Huang et al., 2016): drop a whole residual branch per sample.

    In training each sample's branch output is zeroed with probability ``p`` and the survivors are scaled by
    ``1 / (1 - p)`` so the expected output is unchanged; in eval it is the identity. Put it on the residual branch
    (``x + drop_path(branch(x))``), never on the shortcut.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"StochasticDepth p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # One Bernoulli draw per sample, broadcast over every other dimension ([B, 1, 1, 1] or [B, 1, 1]).
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


DropPath = StochasticDepth  # the name timm uses


class DropBlock2D(nn.Module):
    """DropBlock (Ghiasi et al., 2018): drop contiguous ``block_size`` x ``block_size`` squares of a feature map.

    Dropping single activations (dropout) barely regularises conv features because neighbours carry the same
    information; dropping whole blocks does. Blocks are shared across channels. Block corners are drawn on a grid
    padded by ``block_size - 1`` so that every activation, border ones included, is covered by exactly
    ``block_size**2`` candidate blocks; with corner rate ``gamma = 1 - (1 - drop_prob) ** (1 / block_size**2)``
    each activation is dropped with probability exactly ``drop_prob``, and scaling the kept ones by
    ``1 / (1 - drop_prob)`` keeps every activation's expectation. Identity in eval.

    Args:
        drop_prob: probability that an activation is dropped, in [0, 1).
        block_size: side of the dropped squares, in feature-map pixels (clipped to the map size).
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 3) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropBlock2D drop_prob must be in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"DropBlock2D block_size must be >= 1, got {block_size}")
        self.drop_prob, self.block_size = drop_prob, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        b, _, h, w = x.shape
        bs = min(self.block_size, h, w)
        gamma = 1.0 - (1.0 - self.drop_prob) ** (1.0 / (bs * bs))
        # corners[i] marks a block covering rows i - (bs - 1) .. i of the map: [B, 1, H + bs - 1, W + bs - 1].
        corners = (torch.rand(b, 1, h + bs - 1, w + bs - 1, device=x.device) < gamma).to(x.dtype)
        # A stride-1 bs x bs max-pool grows each corner into its block and returns exactly [B, 1, H, W].
        dropped = nn.functional.max_pool2d(corners, kernel_size=bs, stride=1)
        return x * (1.0 - dropped) / (1.0 - self.drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 to ``drop_path_rate`` (the usual schedule).

    Early blocks compute features every later block needs, so they are dropped least.
    """
    if num_blocks <= 1:
        return [drop_path_rate] * num_blocks
    return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]


class ModuleGroup(nn.Module):
    """A view presenting existing modules and loose parameters as one module (used by ``stage_groups``).

    Nothing is copied: the members are the model's own modules and parameters, so freezing the group freezes them
    in the model. The view is not registered in the model, so the model's parameters are not duplicated.

    Args:
        modules: member modules.
        params: loose parameters (e.g. a class token or positional embedding that sits directly on a model).
    """

    def __init__(self, modules: Iterable[nn.Module] = (), params: Iterable[nn.Parameter] = ()) -> None:
        super().__init__()
        self.members = nn.ModuleList(modules)
        self.loose_params = nn.ParameterList(params)
