"""Exponential moving average of model weights (Polyak averaging), evaluated through the same ``evaluate()``."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after each optimizer step.

    With ``warmup`` the decay ramps as ``min(decay, (1 + n) / (10 + n))`` for update n, so the average is not
    dominated by the random initial weights in short runs. Buffers (BN running statistics) are copied, not averaged.

    Args:
        model: the model being trained (its current weights start the average).
        decay: the target decay.
        warmup: ramp the decay up over the first updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0  # a Python int: reading it never syncs with the device

    def get_extra_state(self) -> dict[str, int]:
        return {"num_updates": self.num_updates}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.num_updates = int(state["num_updates"])

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        model = getattr(model, "module", model)  # unwrap DDP
        model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for eb, b in zip(self.module.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        self.num_updates += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
