"""Progress a person can follow: on a terminal the bar moves on its own clock and shows speed and ETAs; without a
terminal, plain lines at a steady interval; nothing when switched off."""

from __future__ import annotations

import io
import re
import time

import pytest

from imgcls.config import build_config
from imgcls.engine.progress import TrainProgress, format_duration
from imgcls.engine.train import train


def test_terminal_bar_moves_between_steps_and_shows_speed_and_etas():
    out = io.StringIO()
    p = TrainProgress(True, total_epochs=3, steps_per_epoch=20, images_per_step=32, stream=out, tty=True)
    p.start_epoch(0)
    for i in range(1, 21):
        time.sleep(0.03)  # slow steps: the bar's own thread redraws (8/s) between them
        p.step(i)
        if i == 5:
            p.loss(1.2345)
    p.stop()
    text = out.getvalue()
    counts = {int(m) for m in re.findall(r"(\d+)/20", text)}
    assert len(counts) >= 4, f"the bar was drawn at too few points: {sorted(counts)}"
    assert "epoch 1/3" in text and "img/s" in text and "epoch ETA" in text and "run ETA" in text
    assert "loss 1.2345" in text


def test_eta_counts_the_remaining_epochs():
    p = TrainProgress(True, total_epochs=4, steps_per_epoch=10, images_per_step=8, stream=io.StringIO(), tty=False)
    p.start_epoch(0)
    p.epoch_t0 -= 1.0  # 1 s for 5 steps: 0.2 s per step
    p.step(5)
    images_per_s, epoch_left, run_left = p.rates()
    assert images_per_s == pytest.approx(40, rel=0.05)
    assert epoch_left == pytest.approx(1.0, rel=0.05)
    assert run_left == pytest.approx(1.0 + 3 * 2.0, rel=0.05)


def test_plain_lines_at_a_steady_interval_without_a_terminal(tiny_overrides, capsys):
    cfg = build_config("quickstart", [*tiny_overrides, "run.progress=true", "run.progress_interval=0.05"])
    train(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " step " in ln]
    assert lines, "no progress lines"
    assert all(
        re.match(r"epoch \d+/2 step \d+/\d+ \(\d+%\) \| .*img/s \| epoch ETA \S+ \| run ETA \S+", ln) for ln in lines
    )
    assert "\r" not in "".join(lines) and "\x1b[" not in "".join(lines)  # no terminal control codes in a log


def test_progress_off_prints_no_progress_lines(tiny_overrides, capsys):
    train(build_config("quickstart", [*tiny_overrides, "run.progress=false", "run.progress_interval=0.01"]))
    assert " step " not in capsys.readouterr().out


@pytest.mark.parametrize("seconds,text", [(5, "0:05"), (75, "1:15"), (3725, "1:02:05"), (float("nan"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
