"""Optimizers (registry) built from parameter groups that skip weight decay on norms and biases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from imgcls.config import OptimizerConfig
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


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters.

    Each group records ``initial_lr`` (the lr the schedule multiplies), so per-group multipliers such as
    ``backbone_lr_mult`` survive scheduling.
    """
    from imgcls.models.transfer import param_groups

    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, backbone_lr_mult=cfg.backbone_lr_mult)
    optimizer = OPTIMIZERS.get(cfg.name)(groups, cfg)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer
