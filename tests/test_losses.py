"""Losses checked against hand computations and their documented special cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from imgcls.config import LossConfig
from imgcls.engine.losses import LOSSES, DistillationLoss, FocalLoss, SoftTargetCrossEntropy, build_loss


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
    focal = build_loss(LossConfig(name="focal", focal_gamma=2.0))
    ce_ratio = F.cross_entropy(logits[:1], y[:1]) / F.cross_entropy(logits[1:], y[1:])
    assert focal(logits[:1], y[:1]) / focal(logits[1:], y[1:]) < ce_ratio  # the easy example counts less


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
