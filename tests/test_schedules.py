"""Learning-rate schedules: values at given steps, warmup, and the reduce-on-plateau state."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from imgcls.config import SchedulerConfig, build_config
from imgcls.engine.schedules import (
    DEFAULT_WARMUP_FRACTION,
    SCHEDULES,
    PlateauState,
    lr_curve,
    lr_multiplier,
    schedule_parameters,
    warmup_steps_for,
    warmup_warning,
)
from imgcls.engine.train import train

SPE = 10  # steps per epoch
EPOCHS = 20
TOTAL = SPE * EPOCHS


def mult(step: int, total: int = TOTAL, spe: int = SPE, plateau_mult: float = 1.0, **kw: object) -> float:
    return lr_multiplier(
        step, total_steps=total, steps_per_epoch=spe, cfg=SchedulerConfig(**kw), plateau_mult=plateau_mult
    )


#: schedules whose warmup multiplies the first steps of the unshifted curve (the others decay after the warmup)
WARMUP_MULTIPLIES = [name for name in SCHEDULES if not SCHEDULES.meta(name).get("decays_after_warmup", False)]
#: settings that exercise every schedule's parameters within a 20-epoch run
KNOBS = dict(eta_min=0.05, milestones=[5, 12], step_size=5, gamma=0.5, max_lr_mult=2.0, pct_start=0.3)


def test_registry_has_every_documented_schedule() -> None:
    for name in ("cosine", "cosine_warmup", "onecycle", "step", "multistep", "plateau", "constant"):
        assert name in SCHEDULES
    # and the concept page's table documents every registered schedule
    page = (Path(__file__).parents[1] / "docs" / "concepts" / "lr-schedules.md").read_text()
    for name in SCHEDULES:
        assert f"`{name}`" in page, name


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_parameter_is_a_scheduler_config_field(name: str) -> None:
    fields = {f.name for f in dataclasses.fields(SchedulerConfig)}
    assert set(schedule_parameters(SCHEDULES.get(name))) <= fields | {"plateau_mult"}  # plateau_mult: PlateauState's


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("knobs", [{}, KNOBS], ids=["defaults", "knobs"])
@pytest.mark.parametrize("warmup", [0.0, 1.5])
def test_every_schedule_is_finite_and_in_range(name: str, knobs: dict, warmup: float) -> None:
    cfg = SchedulerConfig(name=name, warmup_epochs=warmup, warmup_lr=0.1, **knobs)
    curve = lr_curve(cfg, total_steps=TOTAL, steps_per_epoch=SPE)
    curve.append(lr_multiplier(TOTAL, total_steps=TOTAL, steps_per_epoch=SPE, cfg=cfg))  # the end of the run
    assert all(math.isfinite(m) and 0.0 <= m <= max(1.0, cfg.max_lr_mult) + 1e-12 for m in curve)
    assert max(curve) > 0.0


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("warmup_epochs", [0.0, 2.0])
def test_every_schedule_honours_the_warmup(name: str, warmup_epochs: float) -> None:
    # the same schedule (and warmup length) without a ramp, warmup_lr=1: the ramp multiplies it step by step
    kw = dict(name=name, warmup_epochs=warmup_epochs, **KNOBS)
    warm = warmup_steps_for(SchedulerConfig(**kw), total_steps=TOTAL, steps_per_epoch=SPE)
    assert warm == (2 * SPE if warmup_epochs else SCHEDULES.meta(name).get("default_warmup_fraction", 0.0) * TOTAL)
    for s in range(0, TOTAL + 1, 3):
        ramp = 0.1 + 0.9 * s / warm if s < warm else 1.0
        assert mult(s, warmup_lr=0.1, **kw) == pytest.approx(mult(s, warmup_lr=1.0, **kw) * ramp), s
    if SCHEDULES.meta(name).get("decays_after_warmup", False):  # the decay starts after the warmup, ends as without
        assert mult(int(warm), warmup_lr=0.1, **kw) == pytest.approx(1.0)
        assert mult(TOTAL, warmup_lr=0.1, **kw) == pytest.approx(KNOBS["eta_min"])


def test_cosine_start_middle_end() -> None:
    assert mult(0, name="cosine") == pytest.approx(1.0)
    assert mult(TOTAL // 2, name="cosine", eta_min=0.0) == pytest.approx(0.5)
    assert mult(TOTAL, name="cosine", eta_min=0.01) == pytest.approx(0.01)
    assert mult(TOTAL // 2, name="cosine", eta_min=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    # the last optimizer step is one step before the end: just above eta_min, and the curve never increases
    curve = lr_curve(SchedulerConfig(name="cosine", eta_min=0.01), total_steps=TOTAL, steps_per_epoch=SPE)
    assert curve[-1] > 0.01 and curve[-1] == pytest.approx(0.01, abs=1e-3)
    assert all(b <= a + 1e-12 for a, b in zip(curve, curve[1:], strict=False))


def test_linear_warmup_then_cosine_ends_at_eta_min() -> None:
    kw = dict(name="cosine", warmup_epochs=2.0, warmup_lr=0.1, eta_min=0.05)
    warm = 2 * SPE
    assert mult(0, **kw) == pytest.approx(0.1)
    for s in (5, 10, 15):  # linear from warmup_lr to 1
        assert mult(s, **kw) == pytest.approx(0.1 + 0.9 * s / warm)
    assert mult(warm, **kw) == pytest.approx(1.0)
    # the cosine starts after the warmup: half-way through the remaining steps it is half-way down
    assert mult(warm + (TOTAL - warm) // 2, **kw) == pytest.approx(0.05 + 0.95 * 0.5)
    assert mult(TOTAL, **kw) == pytest.approx(0.05)


def test_cosine_warmup_default_and_explicit_length() -> None:
    warm = DEFAULT_WARMUP_FRACTION * TOTAL
    assert mult(0, name="cosine_warmup") == pytest.approx(0.0)
    assert mult(int(warm / 2), name="cosine_warmup") == pytest.approx(0.5)
    assert mult(int(warm), name="cosine_warmup") == pytest.approx(1.0)
    assert mult(TOTAL, name="cosine_warmup", eta_min=0.01) == pytest.approx(0.01)
    # an explicit warmup_epochs wins, and then cosine_warmup equals cosine with that warmup
    for s in (0, 7, 30, 111, TOTAL - 1):
        assert mult(s, name="cosine_warmup", warmup_epochs=3.0) == pytest.approx(
            mult(s, name="cosine", warmup_epochs=3.0)
        )


def test_onecycle_peak_at_pct_start() -> None:
    kw = dict(name="onecycle", max_lr_mult=4.0, pct_start=0.3)
    peak_step = int(0.3 * TOTAL)
    curve = lr_curve(SchedulerConfig(**kw), total_steps=TOTAL, steps_per_epoch=SPE)
    assert max(curve) == pytest.approx(4.0)
    assert curve.index(max(curve)) == peak_step
    assert curve[0] == pytest.approx(4.0 / 25)  # OneCycleLR's div_factor
    assert mult(TOTAL, **kw) == pytest.approx(4.0 / 25 / 1e4)  # final_div_factor
    # rising before the peak, falling after it
    assert all(b >= a for a, b in zip(curve[:peak_step], curve[1 : peak_step + 1], strict=True))
    assert all(b <= a for a, b in zip(curve[peak_step:], curve[peak_step + 1 :], strict=False))


def test_onecycle_matches_torch_onecyclelr_shape() -> None:
    import torch

    total = 100
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    # torch puts the peak at step pct_start * total_steps - 1 and the end at total_steps - 1; ours at pct * total and
    # total: with total_steps = total + 1 and pct_start = 26/101 both peak at step 25 and end at step 100
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.4, total_steps=total + 1, pct_start=26 / 101, anneal_strategy="cos", cycle_momentum=False
    )
    ours = [mult(s, total=total, name="onecycle", max_lr_mult=4.0, pct_start=0.25) * 0.1 for s in range(total + 1)]
    theirs = []
    for _ in range(total + 1):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours[25] == pytest.approx(theirs[25], rel=1e-6)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-6)
    assert ours[-1] == pytest.approx(theirs[-1], rel=1e-6)


def test_step_decay_every_step_size_epochs() -> None:
    kw = dict(name="step", step_size=5, gamma=0.5)
    assert mult(0, **kw) == 1.0
    assert mult(5 * SPE - 1, **kw) == 1.0  # last step of epoch 5
    assert mult(5 * SPE, **kw) == pytest.approx(0.5)  # first step of epoch 6
    assert mult(10 * SPE, **kw) == pytest.approx(0.25)
    assert mult(19 * SPE, **kw) == pytest.approx(0.125)


def test_multistep_decays_at_milestones() -> None:
    kw = dict(name="multistep", milestones=[3, 8], gamma=0.1)
    assert mult(3 * SPE - 1, **kw) == 1.0
    assert mult(3 * SPE, **kw) == pytest.approx(0.1)
    assert mult(8 * SPE - 1, **kw) == pytest.approx(0.1)
    assert mult(8 * SPE, **kw) == pytest.approx(0.01)


@pytest.mark.parametrize("name", WARMUP_MULTIPLIES)
def test_warmup_composes_with_every_schedule(name: str) -> None:
    kw = dict(name=name, warmup_epochs=1.0, warmup_lr=0.0, milestones=[5], step_size=5, max_lr_mult=2.0)
    for s in (0, 3, 7):
        assert mult(s, **kw) == pytest.approx(mult(s, **{**kw, "warmup_epochs": 0.0}) * s / SPE)
    for s in (SPE, 2 * SPE, 7 * SPE):
        assert mult(s, **kw) == pytest.approx(mult(s, **{**kw, "warmup_epochs": 0.0}))


def test_fractional_warmup_epochs() -> None:
    assert mult(2, name="constant", warmup_epochs=0.5) == pytest.approx(2 / 5)
    assert mult(5, name="constant", warmup_epochs=0.5) == 1.0


def test_plateau_multiplier_and_state() -> None:
    assert mult(123, name="plateau", plateau_mult=0.01) == pytest.approx(0.01)
    state = PlateauState(gamma=0.5, patience=2, mode="max")
    values = [0.5, 0.6, 0.6, 0.59, 0.6, 0.7, 0.7, 0.7, 0.7]
    mults = [state.update(v) for v in values]
    # reduced once more than `patience` epochs in a row brought no improvement (torch's ReduceLROnPlateau rule)
    assert mults == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]
    restored = PlateauState(gamma=0.5, patience=2)
    restored.load_state_dict(state.state_dict())
    assert restored.mult == 0.25 and restored.best == 0.7
    loss_state = PlateauState(gamma=0.1, patience=0, mode="min")
    assert [loss_state.update(v) for v in (1.0, 0.9, 0.95)] == [1, 1, pytest.approx(0.1)]


def test_plateau_matches_torch_reduce_on_plateau() -> None:
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2, threshold=0)
    state = PlateauState(gamma=0.5, patience=2, mode="max")
    for v in [0.1, 0.2, 0.2, 0.2, 0.2, 0.15, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]:
        torch_sched.step(v)
        assert math.isclose(state.update(v), opt.param_groups[0]["lr"])


def test_warmup_that_does_not_fit_the_run_is_named() -> None:
    assert warmup_warning(SchedulerConfig(warmup_epochs=1), epochs=15) is None
    assert warmup_warning(SchedulerConfig(warmup_epochs=0), epochs=1) is None
    text = warmup_warning(SchedulerConfig(name="linear", warmup_epochs=2.5), epochs=2)
    assert text.startswith("training.scheduler.warmup_epochs=2.5 does not fit training.epochs=2") and "linear" in text


def test_train_prints_the_warmup_warning_once(tiny_overrides: list[str], capsys: pytest.CaptureFixture) -> None:
    """One ``warning:`` line at the start of training, naming both keys."""
    train(build_config("quickstart", [*tiny_overrides, "training.scheduler.warmup_epochs=2"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "training.scheduler.warmup_epochs=2" in lines[0] and "training.epochs=2" in lines[0]
