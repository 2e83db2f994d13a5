"""Losses. Every loss takes ``(logits [B, K], target)`` where target is class indices [B] or soft targets [B, K]
(from CutMix/MixUp), so batch mixing works with every loss.

Multi-label losses (registered with ``multilabel=True``: ``bce``, ``asl``) read each logit as an independent sigmoid
and the target as a (possibly mixed) multi-hot vector [B, K]; for them ``weight`` is the positive-class weight of
each label (``training.loss.class_weights=balanced``: negatives / positives of the train split). Single-label losses
(softmax over the classes) cannot train multi-label data; :func:`loss_for_data` says which to use.

A loss is a factory registered in :data:`LOSSES`, called by :func:`build_loss` as
``factory(label_smoothing=..., weight=..., **training.loss.kwargs)``: ``label_smoothing`` and ``weight`` (class
weights [K] or None) come from their own config keys, every other parameter of the factory is a loss parameter set in
``training.loss.kwargs`` (e.g. ``training.loss.kwargs.gamma=3`` for focal). Factories take no ``**kwargs`` catch-all,
so a misspelt parameter fails (:func:`check_loss_config` says so before any work, naming the valid ones).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config import ConfigError, LossConfig
from imgcls.registry import Registry

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
#: factory parameters filled from their own config keys, never from ``training.loss.kwargs``
CONFIG_PARAMS = {"label_smoothing": "training.loss.label_smoothing", "weight": "training.loss.class_weights"}


def _soft(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class indices or soft targets -> smoothed soft targets [B, K]."""
    if target.ndim == 1:
        target = F.one_hot(target, num_classes).float()
    if smoothing > 0:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing, class weights and soft targets.

    With hard targets it equals ``F.cross_entropy(logits, target, weight, label_smoothing)``; with soft targets it is
    ``-(w_y * q * log p).sum / normaliser`` where class weights scale each class's term.
    """

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)
        q = _soft(target, logits.shape[1], self.label_smoothing)
        logp = F.log_softmax(logits.float(), dim=1)
        if self.weight is None:
            return -(q * logp).sum(1).mean()
        w = self.weight[None, :]
        return -(w * q * logp).sum(1).sum() / (w * q).sum()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``-alpha * (1 - p_y)^gamma * log p_y``, soft-target aware.

    ``gamma`` down-weights easy examples (0 gives cross-entropy); ``alpha`` is a constant factor (the multi-class
    form: per-class balancing is ``weight``, i.e. ``training.loss.class_weights=balanced``).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = None,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.gamma, self.alpha, self.label_smoothing = gamma, alpha, label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = _soft(target, logits.shape[1], self.label_smoothing)
        logp = F.log_softmax(logits.float(), dim=1)
        p = logp.exp()
        term = -q * (1 - p).pow(self.gamma) * logp
        if self.alpha is not None:
            term = term * self.alpha
        if self.weight is not None:
            # normalised like weighted cross-entropy, so that gamma=0 with class weights equals weighted CE
            w = self.weight[None, :]
            return (w * term).sum() / (w * q).sum()
        return term.sum(1).mean()


class DistillationLoss(nn.Module):
    """Knowledge distillation (Hinton et al., 2015) around any base loss.

    ``loss = (1 - alpha) * base(logits, target) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``,
    with the KL divergence averaged over the batch. ``T^2`` keeps the soft term's gradient scale independent of the
    temperature. ``alpha=0`` is exactly the base loss.

    Args:
        base_loss: the hard-label loss, called as ``base_loss(logits, target)`` (hard or soft targets).
        temperature: softmax temperature ``T`` (> 0) applied to both student and teacher logits.
        alpha: weight of the soft (teacher) term, in [0, 1].
    """

    def __init__(
        self,
        base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        temperature: float = 4.0,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.base_loss, self.temperature, self.alpha = base_loss, temperature, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Args: student ``logits`` [B, K], ``target`` [B] or [B, K], ``teacher_logits`` [B, K] (no gradient)."""
        base = self.base_loss(logits, target)
        if self.alpha == 0:
            return base
        t = self.temperature
        log_student = F.log_softmax(logits.float() / t, dim=1)
        log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
        soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
        return (1.0 - self.alpha) * base + self.alpha * t * t * soft


class BinaryCrossEntropy(nn.Module):
    """Sigmoid binary cross-entropy per label, averaged over labels and samples, with positive-class weights
    (``pos_weight`` [K]) and label smoothing (targets pulled towards 1/2 by ``label_smoothing``)."""

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = _soft(target, logits.shape[1], 0.0)
        if self.label_smoothing > 0:
            q = q * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), q, pos_weight=self.weight)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label data with many negatives per image:

    ``L = -y (1 - p)^gamma_pos log p - (1 - y) p_m^gamma_neg log(1 - p_m)``, with ``p_m = max(p - clip, 0)``: easy
    negatives are down-weighted (``gamma_neg``) and very easy ones discarded (``clip``, probability shifting). Soft
    targets from mixing interpolate both terms. Averaged over labels and samples like :class:`BinaryCrossEntropy` (the
    paper's code sums over labels, which is the same loss at K times the learning rate), so that
    ``gamma_neg=gamma_pos=clip=0`` gives exactly ``bce`` and a comparison of the two is not one of step sizes.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        label_smoothing: float = 0.0,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"ASL clip must be in [0, 1), got {clip}")
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"ASL gammas must be >= 0, got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = _soft(target, logits.shape[1], 0.0)
        if self.label_smoothing > 0:
            q = q * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp_min(0.0) if self.clip > 0 else p
        pos = q * (1 - p).pow(self.gamma_pos) * torch.log(p.clamp_min(self.eps))
        if self.weight is not None:
            pos = pos * self.weight[None, :]
        neg = (1 - q) * p_neg.pow(self.gamma_neg) * torch.log((1 - p_neg).clamp_min(self.eps))
        return -(pos + neg).mean()


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> nn.Module:
    return SoftTargetCrossEntropy(label_smoothing=label_smoothing, weight=weight)


@LOSSES.register("focal")
def focal(
    label_smoothing: float = 0.0, weight: torch.Tensor | None = None, gamma: float = 2.0, alpha: float | None = None
) -> nn.Module:
    """:class:`FocalLoss`; ``training.loss.kwargs={gamma: 2.0, alpha: 0.25}``."""
    return FocalLoss(gamma=gamma, alpha=alpha, weight=weight, label_smoothing=label_smoothing)


@LOSSES.register("bce", multilabel=True)
def bce(label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> nn.Module:
    """:class:`BinaryCrossEntropy` (multi-label: one sigmoid per class); ``weight``: positive-class weights [K]."""
    return BinaryCrossEntropy(label_smoothing=label_smoothing, weight=weight)


@LOSSES.register("asl", multilabel=True)
def asl(
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
) -> nn.Module:
    """:class:`AsymmetricLoss` (multi-label); ``training.loss.kwargs={gamma_neg: 4, gamma_pos: 0, clip: 0.05}``."""
    return AsymmetricLoss(
        gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, label_smoothing=label_smoothing, weight=weight
    )


def is_multilabel_loss(name: str) -> bool:
    """Whether loss ``name`` reads logits as independent sigmoids (registered with ``multilabel=True``)."""
    return bool(LOSSES.meta(name).get("multilabel", False))


#: the multi-label loss that stands in for the default single-label one on multi-label data
MULTILABEL_DEFAULT_LOSS = {"cross_entropy": "bce"}


def loss_for_data(name: str, *, multilabel: bool) -> tuple[str, str]:
    """The loss to train with: (name, note). On multi-label data ``cross_entropy`` (the default) becomes its sigmoid
    counterpart ``bce``, said in the note; other single-label losses are refused.

    Raises:
        ConfigError: a single-label loss other than cross_entropy on multi-label data.
    """
    if not multilabel or is_multilabel_loss(name):
        return name, ""
    if name in MULTILABEL_DEFAULT_LOSS:
        new = MULTILABEL_DEFAULT_LOSS[name]
        return new, f"training.loss.name={name} on multi-label data: using {new} (sigmoid per class) instead"
    choices = ", ".join(n for n in LOSSES.list() if is_multilabel_loss(n))
    raise ConfigError(
        f"bad value '{name}' for 'training.loss.name': it is a single-label (softmax) loss, and the data is "
        f"multi-label; use one of {choices}"
    )


def loss_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters loss ``name`` takes in ``training.loss.kwargs``: its factory's, minus :data:`CONFIG_PARAMS`
    (and minus a ``**kwargs`` catch-all, which a third-party factory may have)."""
    params = inspect.signature(LOSSES.get(name)).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p for p in params if p.kind in named and p.name not in CONFIG_PARAMS}


def check_loss_config(cfg: LossConfig) -> None:
    """Check the loss name and ``training.loss.kwargs`` against the registered factory's parameters.

    Raises:
        ConfigError: (one line naming the key and the valid choices) for an unknown loss name, a kwargs key the loss
            does not take, a kwargs key that has its own config key, or a parameter without default left unset.
    """
    if cfg.name not in LOSSES:
        raise ConfigError(f"bad value for 'training.loss.name': {LOSSES.unknown_message(cfg.name)}")
    params = loss_parameters(cfg.name)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(LOSSES.get(cfg.name)).parameters.values()
    )
    valid = f"Valid keys in 'training.loss.kwargs' for '{cfg.name}': {', '.join(params) or 'none'}"
    for key in cfg.kwargs:
        if key in CONFIG_PARAMS:
            raise ConfigError(f"'training.loss.kwargs.{key}' has its own key: set '{CONFIG_PARAMS[key]}' instead")
        if key not in params and not takes_any:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean 'training.loss.kwargs.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key 'training.loss.kwargs.{key}' for loss '{cfg.name}'.{hint} {valid}")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and cfg.kwargs.get(name) is None:
            raise ConfigError(f"loss '{cfg.name}' needs 'training.loss.kwargs.{name}'. {valid}")


def check_loss_values(cfg: LossConfig) -> None:
    """Build the configured loss and evaluate it once on a tiny batch (2 samples, 3 classes), so that values in
    ``training.loss.kwargs`` it cannot use (a string for a number, ...) or that make it non-finite fail before any work.
    Nothing to do without kwargs (the factory's defaults; ``label_smoothing`` has its range).

    Raises:
        ConfigError: naming ``training.loss.kwargs`` and the loss's own complaint.
    """
    if not cfg.kwargs:
        return
    logits, target = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]), torch.tensor([0, 2])
    try:
        value = LOSSES.create(cfg.name, label_smoothing=cfg.label_smoothing, **cfg.kwargs)(logits, target)
    except (TypeError, ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split())
        raise ConfigError(f"bad value {cfg.kwargs} for 'training.loss.kwargs' of loss '{cfg.name}': {reason}") from e
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(
            f"bad value {cfg.kwargs} for 'training.loss.kwargs' of loss '{cfg.name}': the loss of a test batch is "
            f"{value.tolist()}, not a finite number"
        )


def build_loss(cfg: LossConfig, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The configured loss; ``class_weights`` [K] when ``cfg.class_weights == "balanced"``.

    Raises:
        ConfigError: see :func:`check_loss_config`.
    """
    check_loss_config(cfg)
    return LOSSES.create(cfg.name, label_smoothing=cfg.label_smoothing, weight=class_weights, **cfg.kwargs)
