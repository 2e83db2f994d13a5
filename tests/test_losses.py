"""Losses checked against hand computations and their documented special cases."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from imgcls.config import ConfigError, LossConfig
from imgcls.engine import losses
from imgcls.engine.losses import (
    CONFIG_PARAMS,
    LOSSES,
    DistillationLoss,
    FocalLoss,
    SoftTargetCrossEntropy,
    build_loss,
    check_loss_config,
    is_multilabel_loss,
    loss_parameters,
)
from imgcls.registry import Registry


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 5, generator=g) * 3, torch.randint(0, 5, (16,), generator=g)


def test_registry() -> None:
    assert {"cross_entropy", "focal"} <= set(LOSSES)


def test_cross_entropy_equals_torch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    loss = build_loss(LossConfig())(logits, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_label_smoothing_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    eps, k = 0.1, 3
    z = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    logp = [2.0 - z, 0.0 - z, -1.0 - z]
    q = [1 - eps + eps / k, eps / k, eps / k]
    expected = -sum(qi * li for qi, li in zip(q, logp, strict=True))
    hard = SoftTargetCrossEntropy(label_smoothing=eps)(logits, y)
    soft = SoftTargetCrossEntropy(label_smoothing=eps)(logits, F.one_hot(y, 3).float())
    assert hard.item() == pytest.approx(expected, rel=1e-6)
    assert soft.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_ce_with_one_hot_equals_ce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    soft = SoftTargetCrossEntropy()(logits, F.one_hot(y, 5).float())
    assert soft.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_soft_target_ce_with_mixed_targets(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    y2 = y.roll(1)
    lam = 0.3
    q = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y2, 5).float()
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y2)
    assert SoftTargetCrossEntropy()(logits, q).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_weighted_ce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    hard = SoftTargetCrossEntropy(weight=w)(logits, y)
    soft = SoftTargetCrossEntropy(weight=w)(logits, F.one_hot(y, 5).float())
    by_hand = (w[y] * -F.log_softmax(logits, 1).gather(1, y[:, None])[:, 0]).sum() / w[y].sum()
    assert hard.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert soft.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_focal_gamma_zero_equals_ce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    assert FocalLoss(gamma=0.0)(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    assert FocalLoss(gamma=0.0, weight=w)(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y, weight=w).item(), rel=1e-6
    )
    assert FocalLoss(gamma=0.0, label_smoothing=0.1)(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6
    )


def test_focal_by_hand_and_downweights_easy_examples() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.2, 0.0]])
    y = torch.tensor([0, 0])
    gamma, alpha = 2.0, 0.25
    p = torch.softmax(logits, 1)[:, 0]
    expected = (-alpha * (1 - p) ** gamma * p.log()).mean()
    assert FocalLoss(gamma=gamma, alpha=alpha)(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    focal = build_loss(LossConfig(name="focal", kwargs={"gamma": 2.0}))
    ce_ratio = F.cross_entropy(logits[:1], y[:1]) / F.cross_entropy(logits[1:], y[1:])
    assert focal(logits[:1], y[:1]) / focal(logits[1:], y[1:]) < ce_ratio  # the easy example counts less


def test_focal_parameters_pass_through_kwargs(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    cfg = LossConfig(name="focal", label_smoothing=0.1, kwargs={"gamma": 3.0, "alpha": 0.25})
    built = build_loss(cfg, w)
    assert isinstance(built, FocalLoss) and (built.gamma, built.alpha, built.label_smoothing) == (3.0, 0.25, 0.1)
    by_hand = FocalLoss(gamma=3.0, alpha=0.25, weight=w, label_smoothing=0.1)(logits, y)
    assert built(logits, y).item() == by_hand.item()
    default = build_loss(LossConfig(name="focal"))  # no kwargs: the factory's defaults (gamma 2, no alpha)
    assert (default.gamma, default.alpha) == (2.0, None)
    assert build_loss(LossConfig(name="focal", kwargs={"alpha": None})).alpha is None  # null means "the default"


# --------------------------------------------------------------------------------------------------------------------
# Every registered loss
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("weighted", [False, True])
def test_every_loss_is_a_finite_scalar_with_gradients(
    name: str, weighted: bool, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    logits, y = batch
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) if weighted else None
    loss_fn = build_loss(LossConfig(name=name), weight)
    soft = 0.3 * F.one_hot(y, 5).float() + 0.7 * F.one_hot(y.roll(1), 5).float()  # CutMix/MixUp targets
    for target in (y, soft):
        x = logits.clone().requires_grad_(True)
        loss = loss_fn(x, target)
        assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
        loss.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_honours_label_smoothing(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # build_loss passes label_smoothing and weight to every factory (they have their own config keys)
    assert set(CONFIG_PARAMS) <= set(inspect.signature(LOSSES.get(name)).parameters)
    logits, y = batch
    plain = build_loss(LossConfig(name=name))(logits, y)
    smoothed = build_loss(LossConfig(name=name, label_smoothing=0.1))(logits, y)
    assert torch.isfinite(smoothed) and smoothed.item() != plain.item()
    # smoothing hard targets equals passing the smoothed soft targets without it: towards 1/K over the classes of a
    # softmax, towards 1/2 for each label's own sigmoid (multi-label losses)
    q = F.one_hot(y, 5).float() * 0.9 + 0.1 / (2 if is_multilabel_loss(name) else 5)
    assert smoothed.item() == pytest.approx(build_loss(LossConfig(name=name))(logits, q).item(), rel=1e-5)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_refuses_unknown_kwargs(name: str) -> None:
    cfg = LossConfig(name=name, kwargs={"not_a_parameter": 1.0})
    valid = ", ".join(loss_parameters(name)) or "none"
    message = f"'training.loss.kwargs.not_a_parameter' for loss '{name}'.* 'training.loss.kwargs' for '{name}': {valid}"
    with pytest.raises(ConfigError, match=message):
        check_loss_config(cfg)
    with pytest.raises(ConfigError, match="not_a_parameter"):
        build_loss(cfg)
    with pytest.raises(TypeError):  # no **kwargs catch-all in the factory either
        LOSSES.get(name)(not_a_parameter=1.0)
    for key, config_key in CONFIG_PARAMS.items():  # these have their own config keys
        with pytest.raises(ConfigError, match=f"training.loss.kwargs.{key}.*set '{config_key}'"):
            check_loss_config(LossConfig(name=name, kwargs={key: 0.1}))
    check_loss_config(LossConfig(name=name))


def test_check_loss_config_names_and_hints() -> None:
    with pytest.raises(ConfigError, match="'training.loss.name'.*Did you mean 'focal'"):
        check_loss_config(LossConfig(name="focl"))
    with pytest.raises(ConfigError, match=r"Did you mean 'training.loss.kwargs.gamma'\? .*: gamma, alpha$"):
        check_loss_config(LossConfig(name="focal", kwargs={"gama": 2.0}))
    check_loss_config(LossConfig(name="focal", kwargs={"gamma": 1.0, "alpha": 0.5}))


def test_check_loss_config_needs_parameters_without_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "LOSSES", Registry("loss"))

    @losses.LOSSES.register("margin")
    def margin(margin: float, label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> torch.nn.Module:
        return SoftTargetCrossEntropy(label_smoothing=label_smoothing, weight=weight)

    with pytest.raises(ConfigError, match="loss 'margin' needs 'training.loss.kwargs.margin'"):
        check_loss_config(LossConfig(name="margin"))
    check_loss_config(LossConfig(name="margin", kwargs={"margin": 0.3}))


def test_distillation_alpha_zero_is_plain_ce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    teacher = torch.randn_like(logits)
    loss = DistillationLoss(SoftTargetCrossEntropy(), temperature=4.0, alpha=0.0)(logits, y, teacher)
    assert loss.item() == F.cross_entropy(logits, y).item()


def test_distillation_by_hand(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    teacher = torch.randn_like(logits) * 2
    t, alpha = 3.0, 0.7
    p_t = torch.softmax(teacher / t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(logits / t, 1))).sum(1).mean()
    expected = (1 - alpha) * F.cross_entropy(logits, y) + alpha * t * t * kl
    loss = DistillationLoss(SoftTargetCrossEntropy(), temperature=t, alpha=alpha)(logits, y, teacher)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # alpha=1 and a student equal to the teacher: zero loss, zero gradient
    student = teacher.clone().requires_grad_(True)
    pure = DistillationLoss(SoftTargetCrossEntropy(), temperature=t, alpha=1.0)(student, y, teacher)
    pure.backward()
    assert pure.item() == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max().item() < 1e-6


def test_distillation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(SoftTargetCrossEntropy(), temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(SoftTargetCrossEntropy(), alpha=1.5)
