"""Transfer-learning helpers: freezing, frozen BatchNorm, gradual unfreezing and optimizer parameter groups.

Freezing works on ``model.stage_groups()`` (the backbone in input-to-output order; the head is never frozen):
``apply_freezing(model, freeze_backbone=True)`` trains only the head, ``freeze_layers=N`` freezes the first N groups.

Frozen BatchNorm layers must also stop updating their running statistics, or a "frozen" backbone still drifts as
training-mode forward passes re-estimate mean/var on the new data. ``apply_freezing`` therefore marks them and
registers a forward pre-hook that keeps them in eval mode, so **the training loop needs to do nothing**: calling
``model.train()`` as usual is safe. :func:`freeze_bn_eval` also exists for code that wants the ``.training`` flags
right immediately after ``model.train()`` (the hook sets them at the next forward).

Gradual unfreezing (ULMFiT-style): start with ``freeze_backbone=True`` and call :func:`unfreeze_next_group` at each
epoch listed in ``training.unfreeze_epochs``; it unfreezes the last still-frozen group (head side first) and adds its
parameters to the optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: attribute set on BatchNorm modules of frozen groups
FROZEN_BN_ATTR = "imgcls_frozen_bn"
#: names (last component) of parameters that never get weight decay even if they are not 1-D
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token", "relative_position_bias_table")


def _keep_frozen_bn_in_eval(module: nn.Module, args: Any) -> None:
    # Runs before every forward of a BatchNorm that was frozen at some point; cheap attribute check.
    if getattr(module, FROZEN_BN_ATTR, False):
        module.training = False


def _set_group_frozen(group: nn.Module, frozen: bool, training: bool = True) -> None:
    for p in group.parameters():
        p.requires_grad_(not frozen)
    for m in group.modules():
        if isinstance(m, _BatchNorm):
            setattr(m, FROZEN_BN_ATTR, frozen)
            if not getattr(m, "_imgcls_bn_hook", False):
                m.register_forward_pre_hook(_keep_frozen_bn_in_eval)
                m._imgcls_bn_hook = True
            m.train(training and not frozen)


def apply_freezing(model: nn.Module, freeze_backbone: bool = False, freeze_layers: int = 0) -> None:
    """Freeze backbone stage groups in place: parameters stop receiving gradients and BatchNorm statistics freeze.

    Args:
        model: an imgcls model (uses ``model.stage_groups()``).
        freeze_backbone: freeze every stage group (train the head only).
        freeze_layers: freeze the first N stage groups (stem first); ignored when ``freeze_backbone``.

    Raises:
        ValueError: ``freeze_layers`` is negative or larger than the number of stage groups (the message names the
            maximum).
    """
    groups = model.stage_groups()
    if freeze_layers < 0 or freeze_layers > len(groups):
        raise ValueError(
            f"freeze_layers={freeze_layers} is out of range for {type(model).__name__}, which has {len(groups)} stage "
            f"groups: use 0..{len(groups)} (or freeze_backbone=true to freeze all {len(groups)})"
        )
    n = len(groups) if freeze_backbone else freeze_layers
    for group in groups[:n]:
        _set_group_frozen(group, True)


def freeze_bn_eval(model: nn.Module) -> None:
    """Put the BatchNorm layers of frozen groups in eval mode now (the forward pre-hook does it lazily anyway)."""
    for m in model.modules():
        if getattr(m, FROZEN_BN_ATTR, False):
            m.eval()


def set_train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)`` followed by :func:`freeze_bn_eval`; returns the model."""
    model.train(mode)
    freeze_bn_eval(model)
    return model


def num_frozen_groups(model: nn.Module) -> int:
    """How many stage groups have all their parameters frozen."""
    return sum(1 for g in model.stage_groups() if all(not p.requires_grad for p in g.parameters()))


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return names | {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in NO_DECAY_NAMES}


def _split_decay(
    named: list[tuple[str, nn.Parameter]], no_decay_names: set[str]
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): 1-D tensors (norm weights, biases) and token/position embeddings get no weight decay."""
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if p.ndim <= 1 or name in no_decay_names else decay).append(p)
    return decay, no_decay


def _groups(
    prefix: str,
    named: list[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    no_decay_names: set[str],
    bias_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    decay, no_decay = _split_decay(named, no_decay_names)
    out = [{"name": prefix, "params": decay, "lr": lr, "weight_decay": weight_decay}]
    if bias_lr_mult == 1.0:
        out.append({"name": f"{prefix}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    else:  # biases and norm parameters (1-D) in a group of their own at the higher rate; embeddings keep lr
        biases = [p for p in no_decay if p.ndim <= 1]
        embeddings = [p for p in no_decay if p.ndim > 1]
        out.append({"name": f"{prefix}_bias", "params": biases, "lr": lr * bias_lr_mult, "weight_decay": 0.0})
        out.append({"name": f"{prefix}_no_decay", "params": embeddings, "lr": lr, "weight_decay": 0.0})
    return [g for g in out if g["params"]]


def param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0, bias_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the trainable parameters of ``model``.

    The classifier trains at ``lr`` and everything else (the backbone) at ``lr * backbone_lr_mult`` (pretrained
    features need smaller steps than a fresh head). 1-D parameters (norm weights, biases) and token / positional
    embeddings get no weight decay: decaying them only shrinks scales and offsets, it does not regularise.
    Frozen parameters are left out (add them later with :func:`unfreeze_next_group`).

    Args:
        model: the model.
        lr: base learning rate (the head's).
        weight_decay: weight decay for the decayed groups.
        backbone_lr_mult: multiplier for the backbone's learning rate.
        bias_lr_mult: multiplier for biases and norm parameters (1-D), on top of the above (airbench trains its
            BatchNorm biases 64x faster); these then form groups of their own, ``<prefix>_bias``.

    Returns:
        Up to four dicts named "head", "head_no_decay", "backbone", "backbone_no_decay" (plus "head_bias" and
        "backbone_bias" with ``bias_lr_mult``), each with keys "params", "lr", "weight_decay" and "name" (empty
        groups are omitted).

    Raises:
        ValueError: the model has no trainable parameter.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else nn.Identity()
    head_ids = {id(p) for p in head.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (is everything frozen?)")
    no_decay_names = _no_weight_decay_names(model)
    head_named = [(n, p) for n, p in trainable if id(p) in head_ids]
    backbone_named = [(n, p) for n, p in trainable if id(p) not in head_ids]
    return _groups("head", head_named, lr, weight_decay, no_decay_names, bias_lr_mult) + _groups(
        "backbone", backbone_named, lr * backbone_lr_mult, weight_decay, no_decay_names, bias_lr_mult
    )


def unfreeze_next_group(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    bias_lr_mult: float = 1.0,
) -> bool:
    """Unfreeze the last still-frozen stage group (unfreezing runs from the head towards the stem) and optimise it.

    The group's parameters get ``requires_grad=True``, its BatchNorm layers resume updating statistics (they follow
    ``model.training`` again), and they are added to ``optimizer`` as new parameter groups named
    ``backbone.<index>`` and ``backbone.<index>_no_decay`` (no weight decay for 1-D parameters).

    Learning rate: ``lr`` is the *base* rate (as given to :func:`param_groups`); the new groups get
    ``initial_lr = lr * backbone_lr_mult``. If the optimizer's groups carry ``initial_lr`` (set by torch LR
    schedulers, or by a schedule that computes ``lr = initial_lr * factor(step)``), the new groups start at the same
    point of the schedule: ``lr = initial_lr * current factor``; otherwise ``lr = initial_lr``.

    Args:
        model: the model, previously frozen with :func:`apply_freezing`.
        optimizer: its optimizer.
        lr: base learning rate.
        weight_decay: weight decay for the decayed group.
        backbone_lr_mult: backbone learning-rate multiplier.
        bias_lr_mult: multiplier for its biases and norm parameters (as in :func:`param_groups`).

    Returns:
        True if a group was unfrozen, False if nothing was frozen any more.
    """
    groups = model.stage_groups()
    index = next(
        (i for i in reversed(range(len(groups))) if any(not p.requires_grad for p in groups[i].parameters())), None
    )
    if index is None:
        return False
    group = groups[index]
    _set_group_frozen(group, False, training=model.training)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    named = [(names[id(p)], p) for p in group.parameters() if id(p) not in in_optimizer and id(p) in names]
    base_lr = lr * backbone_lr_mult
    scale = 1.0
    scheduled = [g for g in optimizer.param_groups if g.get("initial_lr")]
    if scheduled:
        scale = scheduled[0]["lr"] / scheduled[0]["initial_lr"]
    for new in _groups(f"backbone.{index}", named, base_lr, weight_decay, _no_weight_decay_names(model), bias_lr_mult):
        new["initial_lr"], new["lr"] = new["lr"], new["lr"] * scale
        optimizer.add_param_group(new)
    return True
