"""run.threads: explicit, from OMP_NUM_THREADS, or the cores idle at start (measured from /proc/stat)."""

from __future__ import annotations

import itertools

import pytest
import torch

import imgcls.engine.threads as th
from imgcls.config import ConfigError, build_config
from imgcls.engine.build import check_config
from imgcls.engine.train import train


def _fake_proc_stat(monkeypatch, busy_share: float, cores: int = 2) -> None:
    """/proc/stat readings 100 jiffies apart with ``busy_share`` of them busy, on ``cores`` cores."""
    ticks = itertools.count()

    def times():
        t = next(ticks) * 100.0
        return t * busy_share, t

    monkeypatch.setattr(th, "_cpu_times", times)
    monkeypatch.setattr(th, "usable_cores", lambda: cores)
    monkeypatch.setattr(th.os, "cpu_count", lambda: cores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("busy_share,threads", [(0.0, 2), (0.5, 1), (1.0, 1), (0.2, 2)])
def test_idle_cores_decide_the_default(monkeypatch, busy_share, threads):
    _fake_proc_stat(monkeypatch, busy_share)
    got, why = th.choose_threads(None, sample_s=0)
    assert got == threads and "idle" in why


def test_explicit_and_environment_win(monkeypatch):
    _fake_proc_stat(monkeypatch, 1.0)
    assert th.choose_threads(3, sample_s=0) == (3, "run.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert th.choose_threads(None, sample_s=0) == (2, "OMP_NUM_THREADS")


def test_busy_cores_reads_the_real_proc_stat():
    busy = th.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (th.os.cpu_count() or 1) + 1e-6


def test_train_applies_and_reports_run_threads(tiny_overrides, capsys):
    old = torch.get_num_threads()
    try:
        train(build_config("quickstart", [*tiny_overrides, "training.epochs=1", "run.threads=2"]))
        assert torch.get_num_threads() == 2
        assert "(2 threads: run.threads)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(old)


def test_bad_threads_is_a_config_error():
    with pytest.raises(ConfigError, match="run.threads"):
        check_config(build_config("quickstart", ["run.threads=0"]))
