"""Learning-rate schedules as pure functions of the optimizer step.

Each schedule maps ``(step, total_steps, steps_per_epoch, **params) -> multiplier`` of the base lr; the loop sets
``group["lr"] = group["initial_lr"] * multiplier`` before every optimizer step. Linear warmup (``warmup_epochs``,
starting at ``warmup_lr`` x base) composes with every schedule. Being pure, a schedule needs no state in a checkpoint
(except ``plateau``, which reacts to validation metrics: see :class:`PlateauState`), and ``imgcls lr-plot`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from imgcls.config import SchedulerConfig
from imgcls.registry import Registry

ScheduleFn = Callable[..., float]
SCHEDULES: Registry[ScheduleFn] = Registry("scheduler")

#: ``cosine_warmup`` with ``warmup_epochs=0`` warms up over this fraction of the run's steps
DEFAULT_WARMUP_FRACTION = 0.05


@SCHEDULES.register("constant")
def constant(step: int, total_steps: int, steps_per_epoch: int, **_: float) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def cosine(step: int, total_steps: int, steps_per_epoch: int, eta_min: float = 0.0, **_: float) -> float:
    """Half-cosine from 1 down to ``eta_min`` over the whole run."""
    t = min(max(step / max(1, total_steps), 0.0), 1.0)
    return eta_min + (1.0 - eta_min) * 0.5 * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("cosine_warmup")
def cosine_warmup(step: int, total_steps: int, steps_per_epoch: int, eta_min: float = 0.0, **_: float) -> float:
    """Cosine decay after a linear warmup.

    The warmup itself is applied by :func:`lr_multiplier`, which also shifts the cosine so that it starts after the
    warmup and still ends at ``eta_min``. With ``warmup_epochs=0`` this schedule warms up over the first
    :data:`DEFAULT_WARMUP_FRACTION` of the run (plain ``cosine`` plus ``warmup_epochs`` does the same with an
    explicit length).
    """
    return cosine(step, total_steps, steps_per_epoch, eta_min=eta_min)


@SCHEDULES.register("linear")
def linear(step: int, total_steps: int, steps_per_epoch: int, eta_min: float = 0.0, **_: float) -> float:
    """Straight line from 1 down to ``eta_min`` over the run (after the warmup, like ``cosine``).

    With ``warmup_epochs`` this is the triangular schedule of the CIFAR-10 speed records (airbench, Page's ResNet).
    """
    t = min(max(step / max(1, total_steps), 0.0), 1.0)
    return 1.0 - (1.0 - eta_min) * t


@SCHEDULES.register("onecycle")
def onecycle(
    step: int, total_steps: int, steps_per_epoch: int, max_lr_mult: float = 1.0, pct_start: float = 0.25, **_: float
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
def step_decay(
    step: int, total_steps: int, steps_per_epoch: int, step_size: int = 30, gamma: float = 0.1, **_: float
) -> float:
    """Multiply by ``gamma`` every ``step_size`` epochs."""
    epoch = step // max(1, steps_per_epoch)
    return gamma ** (epoch // max(1, step_size))


@SCHEDULES.register("multistep")
def multistep(
    step: int, total_steps: int, steps_per_epoch: int, milestones: tuple[int, ...] = (30, 60, 90), gamma: float = 0.1,
    **_: float,
) -> float:  # fmt: skip
    """Multiply by ``gamma`` at each milestone epoch."""
    epoch = step // max(1, steps_per_epoch)
    return gamma ** sum(1 for m in milestones if epoch >= m)


@SCHEDULES.register("plateau")
def plateau(step: int, total_steps: int, steps_per_epoch: int, plateau_mult: float = 1.0, **_: float) -> float:
    """Reduce-on-plateau: the multiplier is kept by :class:`PlateauState`, updated once per epoch from val metrics."""
    return plateau_mult


def warmup_steps_for(cfg: SchedulerConfig, *, total_steps: int, steps_per_epoch: int) -> float:
    """Length of the linear warmup in optimizer steps (may be fractional)."""
    if cfg.warmup_epochs > 0:
        return min(float(cfg.warmup_epochs * steps_per_epoch), float(total_steps))
    if cfg.name == "cosine_warmup":
        return DEFAULT_WARMUP_FRACTION * total_steps
    return 0.0


def lr_multiplier(step: int, *, total_steps: int, steps_per_epoch: int, cfg: SchedulerConfig, plateau_mult: float = 1.0
                  ) -> float:  # fmt: skip
    """The lr multiplier at optimizer step ``step`` (0-based) for scheduler config ``cfg``, warmup included.

    Conventions (tested in ``tests/test_schedules.py``):

    - the multiplier at ``step == total_steps`` (the end of the run) is the schedule's final value, e.g. ``eta_min``
      for cosine; the last optimizer step, ``total_steps - 1``, is one step before it;
    - warmup rises linearly from ``warmup_lr`` at step 0 to 1 at step ``warmup_steps`` and multiplies the schedule;
    - ``cosine`` / ``cosine_warmup`` / ``linear`` start their decay after the warmup, so they still end at ``eta_min``;
    - ``step`` / ``multistep`` count epochs from the start of the run (warmup included), ``onecycle`` has its own
      rise and the warmup (if any) multiplies it, ``plateau`` uses ``plateau_mult`` from :class:`PlateauState`.
    """
    warmup_steps = warmup_steps_for(cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    fn = SCHEDULES.get(cfg.name)
    if cfg.name in ("cosine", "cosine_warmup", "linear"):
        # decay over the steps after the warmup so the curve still reaches eta_min at the end
        mult = fn(max(0.0, step - warmup_steps), max(1.0, total_steps - warmup_steps), steps_per_epoch,
                  eta_min=cfg.eta_min)  # fmt: skip
    else:
        mult = fn(
            step, total_steps, steps_per_epoch, eta_min=cfg.eta_min, max_lr_mult=cfg.max_lr_mult,
            pct_start=cfg.pct_start, step_size=cfg.step_size, gamma=cfg.gamma, milestones=tuple(cfg.milestones),
            plateau_mult=plateau_mult,
        )  # fmt: skip
    if warmup_steps > 0 and step < warmup_steps:
        t = step / warmup_steps
        return mult * (cfg.warmup_lr + (1.0 - cfg.warmup_lr) * t)
    return mult


def lr_curve(cfg: SchedulerConfig, *, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The multiplier at every optimizer step ``0 .. total_steps - 1`` (``plateau`` drawn as if never reduced)."""
    return [lr_multiplier(s, total_steps=total_steps, steps_per_epoch=steps_per_epoch, cfg=cfg)
            for s in range(total_steps)]  # fmt: skip


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
