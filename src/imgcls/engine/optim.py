"""Optimizers (registry) built from parameter groups that skip weight decay on norms and biases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm.optim
import torch
from torch import nn

from imgcls.config import OptimizerConfig
from imgcls.models.transfer import param_groups
from imgcls.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # Adam's "weight_decay" is L2 added to the gradient (the classic, coupled form); AdamW decouples it.
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class Lookahead(timm.optim.Lookahead):
    """timm's Lookahead, plus parameter groups added later (gradual unfreezing) getting the lookahead settings.

    As in timm, the slow weights start as a copy of the fast weights at the first slow update (step k), not at step 0.

    Its ``state_dict`` is the base optimizer's, with the slow weights in the per-parameter state and the step count in
    the groups, so a resumed run continues exactly. ``sync_lookahead()`` (called at the end of every epoch, as timm's
    train script does) moves the slow weights and copies them into the model before evaluation and checkpoints.
    """

    @torch.no_grad()
    def sync_lookahead(self) -> None:
        """One slow-weight update now, copied into the model. timm's version skips parameters whose ``.grad`` is
        None, which after ``zero_grad(set_to_none=True)`` would be all of them."""
        for group in self.param_groups:
            for p in group["params"]:
                slow = self._base_optimizer.state[p].get("lookahead_slow_buff")
                if slow is not None:
                    slow.add_(p - slow, alpha=group["lookahead_alpha"])
                    p.copy_(slow)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._base_optimizer.add_param_group(param_group)  # the group lists are shared: this adds it here too
        for key in ("lookahead_alpha", "lookahead_k", "lookahead_step"):
            param_group.setdefault(key, self.defaults[key])


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters (wrapped in :class:`Lookahead` if asked).

    Each group records ``initial_lr`` (the lr the schedule multiplies), so per-group multipliers such as
    ``backbone_lr_mult`` survive scheduling.
    """

    groups = param_groups(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        backbone_lr_mult=cfg.backbone_lr_mult,
        bias_lr_mult=cfg.bias_lr_mult,
    )
    optimizer = OPTIMIZERS.get(cfg.name)(groups, cfg)
    if cfg.lookahead:
        optimizer = Lookahead(optimizer, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer
