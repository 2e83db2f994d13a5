"""Shared fixtures: tiny, fast configs on the bundled digits dataset."""

from __future__ import annotations

import os
import shutil

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
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-archive caches out of the user's home during tests."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
