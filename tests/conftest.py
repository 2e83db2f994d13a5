"""Shared fixtures: tiny, fast configs on the bundled digits dataset."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

# One intra-op thread for the whole suite: the models here are tiny, several tests start subprocesses (DDP, SIGKILL,
# torchrun), and on a busy 2-core machine two spin-waiting OpenMP threads per process were measured 5-50x slower.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # what imgcls's thread choice honours (run.threads unset), here and in subprocesses

#: Debian's chromium (CI installs it with apt-get; never a browser download) and the flags every headless test uses
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TINY = [
    "data.name=digits",
    "data.subset=300",
    "data.batch_size=32",
    "model.name=simple_cnn_tiny",
    "training.epochs=2",
    "training.optimizer.lr=0.05",
    "run.progress=false",
    "run.tracker=none",
    "run.report=false",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides for a run of a few seconds, writing into a temporary runs folder."""
    return [*TINY, f"run.dir={tmp_path / 'runs'}"]


@pytest.fixture(autouse=True)
def _default_sigchld():
    """Give SIGCHLD back its default after each test. A DataLoader with workers installs a Python SIGCHLD handler in
    this process and never removes it; with it in place, the full suite (one process, many native libraries loaded)
    died silently with SIGSEGV at the next child exit (measured twice, while test_serve_load waited for its stopped
    server: the signal arrived in nanosleep, so it was the kernel failing to deliver SIGCHLD to the handler, not a
    fault in code). torch installs the handler again for the next DataLoader with workers (the flag reset below), so
    a test that needs its worker-failure check still has it."""
    yield
    if signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        from torch.utils.data._utils import signal_handling  # deferred: private torch module, read only here

        signal_handling._SIGCHLD_handler_set = False


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-archive caches out of the user's home during tests."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
