"""Training progress a person can follow: where the run is, how fast it goes, and when it will be done.

On a terminal, a rich bar redrawn several times a second by rich's own thread (so it moves even when steps are
slow), with steps, images/s, the last logged loss, and the ETA of the epoch and of the run. Without a terminal (a
log file, CI, a batch job), one plain line every ``interval`` seconds, so the log shows life without flooding.

The training loop calls :meth:`TrainProgress.step` after every optimizer step: it only stores a counter and reads
the clock (the bar's thread does the drawing); the loss comes through :meth:`TrainProgress.loss` at the loop's
``log_interval``, where it is read from the device anyway.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``; ``?`` when unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative, inf
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class TrainProgress:
    """Progress of a run's training steps.

    Args:
        enabled: False: no output at all (``run.progress=false``, or not rank 0).
        total_epochs, steps_per_epoch: the run's length in optimizer steps.
        images_per_step: images one optimizer step consumes (batch size x accumulation), for images/s.
        interval: seconds between plain lines when not on a terminal.
        stream: where to write (default stdout); ``tty`` overrides whether it is treated as a terminal.
    """

    def __init__(
        self,
        enabled: bool,
        *,
        total_epochs: int,
        steps_per_epoch: int,
        images_per_step: int,
        interval: float = 15.0,
        stream: IO[str] | None = None,
        tty: bool | None = None,
    ) -> None:
        self.enabled = enabled
        self.total_epochs, self.steps_per_epoch, self.images_per_step = total_epochs, steps_per_epoch, images_per_step
        self.interval = interval
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.epoch = 0
        self.done = 0  # optimizer steps done in this epoch
        self.first = 0  # of those, done before this session (a mid-epoch resume)
        self.last_loss: float | None = None
        self.epoch_t0 = self.last_line = time.perf_counter()
        self.epoch_seconds: list[float] = []  # wall time of each whole epoch of this session (training + validation)
        self.whole = False  # whether the current epoch started at its first step in this session
        self.bar: Progress | None = None
        if enabled and self.tty:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream, force_terminal=True),
                refresh_per_second=8,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps_per_epoch, info="")

    # -- what the training loop reports --------------------------------------------------------------------------

    def start_epoch(self, epoch: int, done_steps: int = 0) -> None:
        """Epoch ``epoch`` (0-based) starts, ``done_steps`` of its steps already done (a mid-epoch resume)."""
        now = time.perf_counter()
        if self.whole:  # the previous epoch ran whole in this session: its wall time, validation included
            self.epoch_seconds.append(now - self.epoch_t0)
        self.epoch, self.done, self.first, self.whole = epoch, done_steps, done_steps, done_steps == 0
        self.epoch_t0 = self.last_line = now
        if self.bar is not None:
            self.bar.reset(self.task, total=self.steps_per_epoch, completed=done_steps, info="")
            self.bar.update(self.task, description=f"epoch {epoch + 1}/{self.total_epochs}")

    def step(self, done_in_epoch: int) -> None:
        """After an optimizer step: ``done_in_epoch`` steps of this epoch are done."""
        if not self.enabled:
            return
        self.done = done_in_epoch
        if self.bar is not None:
            self.bar.update(self.task, completed=done_in_epoch, info=self.info())
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval:
            self.last_line = now
            print(self.line(), file=self.stream, flush=True)

    def loss(self, value: float) -> None:
        self.last_loss = value

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    # -- what it shows -------------------------------------------------------------------------------------------

    def rates(self) -> tuple[float, float, float]:
        """(images/s, epoch ETA s, run ETA s) from this session's measured speed."""
        elapsed = time.perf_counter() - self.epoch_t0
        steps = self.done - self.first
        per_step = elapsed / steps if steps > 0 else float("nan")
        epoch_left = (self.steps_per_epoch - self.done) * per_step
        later_epochs = self.total_epochs - self.epoch - 1
        if self.epoch_seconds:  # whole epochs measured: they include validation and checkpoints
            per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        else:
            per_epoch = self.steps_per_epoch * per_step
        images_per_s = self.images_per_step / per_step if per_step == per_step and per_step > 0 else float("nan")
        return images_per_s, epoch_left, epoch_left + later_epochs * per_epoch

    def info(self) -> str:
        images_per_s, epoch_left, run_left = self.rates()
        loss = f"loss {self.last_loss:.4f} | " if self.last_loss is not None else ""
        speed = f"{images_per_s:,.0f} img/s" if images_per_s == images_per_s else "- img/s"
        return f"{loss}{speed} | epoch ETA {format_duration(epoch_left)} | run ETA {format_duration(run_left)}"

    def line(self) -> str:
        pct = 100.0 * self.done / max(self.steps_per_epoch, 1)
        return (
            f"epoch {self.epoch + 1}/{self.total_epochs} step {self.done}/{self.steps_per_epoch} ({pct:.0f}%) | "
            f"{self.info()}"
        )
