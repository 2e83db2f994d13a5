"""Learning-rate schedules as pure functions of the optimizer step.

Each schedule maps ``(step, total_steps, steps_per_epoch, **params) -> multiplier`` of the base lr; the loop sets
``group["lr"] = group["initial_lr"] * multiplier`` before every optimizer step. Linear warmup (``warmup_epochs``,
starting at ``warmup_lr`` x base) composes with every schedule. Being pure, a schedule needs no state in a checkpoint
(except ``plateau``, which reacts to validation metrics: see :class:`PlateauState`), and ``imgcls lr-plot`` draws it.

A schedule is a function registered in :data:`SCHEDULES`. Its keyword parameters are filled from the
``training.scheduler`` fields of the same name (``plateau_mult`` from :class:`PlateauState`), so a new knob is a
:class:`~imgcls.config.SchedulerConfig` field plus the parameter. Its metadata says how the warmup composes with it:

- ``decays_after_warmup=True``: the schedule runs over the steps after the warmup, so it still ends at its final value
  (cosine, linear); otherwise it runs over the whole run and the warmup multiplies its first steps;
- ``default_warmup_fraction=f``: with ``warmup_epochs=0`` the warmup lasts this fraction of the run (cosine_warmup).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imgcls.config import SchedulerConfig
from imgcls.registry import Registry

ScheduleFn = Callable[..., float]
SCHEDULES: Registry[ScheduleFn] = Registry("scheduler")

#: ``cosine_warmup`` with ``warmup_epochs=0`` warms up over this fraction of the run's steps
DEFAULT_WARMUP_FRACTION = 0.05


@SCHEDULES.register("constant")
def constant(step: float, total_steps: float, steps_per_epoch: int) -> float:
    return 1.0


@SCHEDULES.register("cosine", decays_after_warmup=True)
def cosine(step: float, total_steps: float, steps_per_epoch: int, eta_min: float = 0.0) -> float:
    """Half-cosine from 1 down to ``eta_min`` over the whole run."""
    t = min(max(step / max(1, total_steps), 0.0), 1.0)
    return eta_min + (1.0 - eta_min) * 0.5 * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("cosine_warmup", decays_after_warmup=True, default_warmup_fraction=DEFAULT_WARMUP_FRACTION)
def cosine_warmup(step: float, total_steps: float, steps_per_epoch: int, eta_min: float = 0.0) -> float:
    """Cosine decay after a linear warmup.

    The warmup itself is applied by :func:`lr_multiplier`, which also shifts the cosine so that it starts after the
    warmup and still ends at ``eta_min`` (``decays_after_warmup``). With ``warmup_epochs=0`` this schedule warms up
    over the first :data:`DEFAULT_WARMUP_FRACTION` of the run (``default_warmup_fraction``; plain ``cosine`` plus
    ``warmup_epochs`` does the same with an explicit length).
    """
    return cosine(step, total_steps, steps_per_epoch, eta_min=eta_min)


@SCHEDULES.register("linear", decays_after_warmup=True)
def linear(step: float, total_steps: float, steps_per_epoch: int, eta_min: float = 0.0) -> float:
    """Straight line from 1 down to ``eta_min`` over the run (after the warmup, like ``cosine``).

    With ``warmup_epochs`` this is the triangular schedule of the CIFAR-10 speed records (airbench, Page's ResNet).
    """
    t = min(max(step / max(1, total_steps), 0.0), 1.0)
    return 1.0 - (1.0 - eta_min) * t


@SCHEDULES.register("onecycle")
def onecycle(
    step: float, total_steps: float, steps_per_epoch: int, max_lr_mult: float = 1.0, pct_start: float = 0.25
) -> float:
    """Smith's one-cycle: cosine rise from max/25 to max over ``pct_start`` of the run, then cosine down to max/1e4.

    The same shape as ``torch.optim.lr_scheduler.OneCycleLR`` (div_factor 25, final_div_factor 1e4).
    """
    peak = max_lr_mult
    start, end = peak / 25.0, peak / 25.0 / 1e4
    rise = max(1.0, pct_start * total_steps)
    if step < rise:
        t = step / rise
        return start + (peak - start) * 0.5 * (1 - math.cos(math.pi * t))
    t = min(1.0, (step - rise) / max(1.0, total_steps - rise))
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("step")
def step_decay(step: float, total_steps: float, steps_per_epoch: int, step_size: int = 30, gamma: float = 0.1) -> float:
    """Multiply by ``gamma`` every ``step_size`` epochs."""
    epoch = step // max(1, steps_per_epoch)
    return gamma ** (epoch // max(1, step_size))


@SCHEDULES.register("multistep")
def multistep(
    step: float, total_steps: float, steps_per_epoch: int, milestones: Sequence[int] = (30, 60, 90), gamma: float = 0.1
) -> float:
    """Multiply by ``gamma`` at each milestone epoch."""
    epoch = step // max(1, steps_per_epoch)
    return gamma ** sum(1 for m in milestones if epoch >= m)


@SCHEDULES.register("plateau")
def plateau(step: float, total_steps: float, steps_per_epoch: int, plateau_mult: float = 1.0) -> float:
    """Reduce-on-plateau: the multiplier is kept by :class:`PlateauState`, updated once per epoch from val metrics."""
    return plateau_mult


def warmup_steps_for(cfg: SchedulerConfig, *, total_steps: int, steps_per_epoch: int) -> float:
    """Length of the linear warmup in optimizer steps (may be fractional)."""
    if cfg.warmup_epochs > 0:
        return min(float(cfg.warmup_epochs * steps_per_epoch), float(total_steps))
    return SCHEDULES.meta(cfg.name).get("default_warmup_fraction", 0.0) * total_steps


def warmup_warning(cfg: SchedulerConfig, *, epochs: int) -> str | None:
    """One line when the warmup does not fit the run (``warmup_epochs`` >= ``epochs``: the lr never leaves the warmup,
    and the schedule never starts), naming the keys; None when it fits."""
    if cfg.warmup_epochs <= 0 or cfg.warmup_epochs < epochs:
        return None
    return (
        f"training.scheduler.warmup_epochs={cfg.warmup_epochs:g} does not fit training.epochs={epochs}: the whole run "
        f"is warmup (the {cfg.name} schedule never starts); shorten the warmup or train longer"
    )


@functools.cache
def schedule_parameters(fn: ScheduleFn) -> tuple[str, ...]:
    """The keyword parameters of schedule ``fn`` (after ``step, total_steps, steps_per_epoch``)."""
    return tuple(inspect.signature(fn).parameters)[3:]


def schedule_kwargs(fn: ScheduleFn, cfg: SchedulerConfig, *, plateau_mult: float = 1.0) -> dict[str, object]:
    """``fn``'s keyword arguments: the ``training.scheduler`` fields of the same name, and ``plateau_mult``."""
    runtime = {"plateau_mult": plateau_mult}
    return {name: runtime[name] if name in runtime else getattr(cfg, name) for name in schedule_parameters(fn)}


def lr_multiplier(
    step: int, *, total_steps: int, steps_per_epoch: int, cfg: SchedulerConfig, plateau_mult: float = 1.0
) -> float:
    """The lr multiplier at optimizer step ``step`` (0-based) for scheduler config ``cfg``, warmup included.

    Conventions (tested in ``tests/test_schedules.py``):

    - the multiplier at ``step == total_steps`` (the end of the run) is the schedule's final value, e.g. ``eta_min``
      for cosine; the last optimizer step, ``total_steps - 1``, is one step before it;
    - warmup rises linearly from ``warmup_lr`` at step 0 to 1 at step ``warmup_steps`` and multiplies the schedule;
    - ``cosine`` / ``cosine_warmup`` / ``linear`` (``decays_after_warmup``) start their decay after the warmup, so
      they still end at ``eta_min``;
    - ``step`` / ``multistep`` count epochs from the start of the run (warmup included), ``onecycle`` has its own
      rise and the warmup (if any) multiplies it, ``plateau`` uses ``plateau_mult`` from :class:`PlateauState`.
    """
    warmup_steps = warmup_steps_for(cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    fn = SCHEDULES.get(cfg.name)
    kwargs = schedule_kwargs(fn, cfg, plateau_mult=plateau_mult)
    if SCHEDULES.meta(cfg.name).get("decays_after_warmup", False):
        # decay over the steps after the warmup so the curve still reaches eta_min at the end
        mult = fn(max(0.0, step - warmup_steps), max(1.0, total_steps - warmup_steps), steps_per_epoch, **kwargs)
    else:
        mult = fn(step, total_steps, steps_per_epoch, **kwargs)
    if warmup_steps > 0 and step < warmup_steps:
        t = step / warmup_steps
        return mult * (cfg.warmup_lr + (1.0 - cfg.warmup_lr) * t)
    return mult


def lr_curve(cfg: SchedulerConfig, *, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The multiplier at every optimizer step ``0 .. total_steps - 1`` (``plateau`` drawn as if never reduced)."""
    return [
        lr_multiplier(s, total_steps=total_steps, steps_per_epoch=steps_per_epoch, cfg=cfg) for s in range(total_steps)
    ]


@dataclass
class PlateauState:
    """State of reduce-on-plateau: multiply the lr by ``gamma`` once more than ``patience`` epochs in a row brought no
    improvement (the rule of ``torch.optim.lr_scheduler.ReduceLROnPlateau``), then start counting again.

    ``mode`` is ``max`` for accuracy, ``min`` for a loss. Call :meth:`update` once per epoch with the validation value;
    the runner passes the metric early stopping monitors (``training.early_stopping.monitor``, measured on the EMA
    weights when ``training.ema.use_for_best``), and the lr decays by ``training.scheduler.gamma`` after
    ``training.scheduler.patience`` + 1 epochs without improvement.
    """

    gamma: float = 0.1
    patience: int = 5
    mode: str = "max"
    best: float | None = None
    bad_epochs: int = 0
    mult: float = 1.0

    def update(self, value: float) -> float:
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.mult *= self.gamma
                self.bad_epochs = 0
        return self.mult

    def state_dict(self) -> dict[str, float | int | None]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "mult": self.mult}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.mult = state["best"], state["bad_epochs"], state["mult"]
