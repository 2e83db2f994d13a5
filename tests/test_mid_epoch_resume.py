"""Mid-epoch checkpoints (run.checkpoint_every) and exact resume: a run SIGKILLed right after a mid-epoch checkpoint
and resumed ends with the same weights and the same per-step losses, bit for bit, as a run never interrupted: the
sampler order, the augmentation and mixing draws, dropout, the schedule step, the EMA and the accumulation phase
all continue where they were. Both train-loader paths: the device loader and the DataLoader (with workers)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls.cli import main
from imgcls.config import ConfigError, build_config, checkpoint_interval
from imgcls.engine.checkpoint import load_checkpoint

COMMON = [
    "data.name=digits",
    "data.subset=240",
    "data.batch_size=16",
    "model.name=simple_cnn_tiny",
    "model.dropout_rate=0.2",
    "training.epochs=2",
    "training.accum_steps=2",
    "training.ema.enabled=true",
    "training.scheduler.name=cosine",
    "augmentation.train.random_crop=true",
    "augmentation.train.crop_padding=2",
    "augmentation.train.hflip=0.5",
    "run.log_interval=1",
    "run.checkpoint_every=3",  # optimizer steps: several mid-epoch checkpoints per epoch
    "run.progress=false",
    "run.tracker=none",
    "run.report=false",
    "run.eval_test=false",
]

PATHS = {
    "device": ["data.loader=device", "augmentation.mix.mixup_alpha=0.4"],
    "dataloader": ["data.loader=torch", "data.num_workers=2", "augmentation.train.color_jitter=0.3"],
}

# Runs imgcls in a child that SIGKILLs itself right after the Nth mid-epoch checkpoint is on disk: the hard stop of a
# preempted job, at a known point (polling for the file from outside would race a run this small).
KILLER = """
import os, signal, sys
import imgcls.engine.train as t
kill_at = int(os.environ["KILL_AT_BATCH_CKPT"])
seen = 0
original = t.save_checkpoint
def save_then_maybe_die(ckpt, path):
    global seen
    original(ckpt, path)
    if ckpt.get("batch"):
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
t.save_checkpoint = save_then_maybe_die
from imgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _steps(run: Path) -> list[dict[str, str]]:
    with (run / "steps.csv").open() as f:
        return list(csv.DictReader(f))


def _train_loss(run: Path) -> list[str]:
    with (run / "metrics.csv").open() as f:
        return [(r["train_loss"], r["train_acc"], r["val_loss"]) for r in csv.DictReader(f)]


def _only_run(folder: Path) -> Path:
    (run,) = list(folder.iterdir())
    return run


@pytest.mark.parametrize("path", list(PATHS))
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_is_bit_identical(tmp_path, path):
    args = ["train", "quickstart", *COMMON, *PATHS[path]]
    assert main([*args, f"run.dir={tmp_path / 'straight'}"]) == 0
    straight = _only_run(tmp_path / "straight")

    env = {**os.environ, "KILL_AT_BATCH_CKPT": "3", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *args, f"run.dir={tmp_path / 'killed'}"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    run = _only_run(tmp_path / "killed")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["batch"] > 0 and ckpt["batch"] % 2 == 0  # inside an epoch, at the end of an accumulation group
    assert not (run / "summary.json").exists()

    assert main([*args, f"run.dir={tmp_path / 'killed'}", "run.resume=auto"]) == 0
    assert _steps(run) == _steps(straight)  # every step's loss and lr, at full precision
    assert _train_loss(run) == _train_loss(straight)  # the interrupted epoch's mean counts the whole epoch
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == len(_steps(run))  # one row per optimizer step (run.log_interval=1)
    _assert_equal_tensors(a["model"], b["model"])
    _assert_equal_tensors(a["ema"], b["ema"])
    _assert_equal_tensors(a["optimizer"]["state"], b["optimizer"]["state"])


def _assert_equal_tensors(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal_tensors(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


def test_checkpoint_every_in_time_writes_mid_epoch_checkpoints(tmp_path, capsys):
    args = ["train", "quickstart", *COMMON[:-5], "run.checkpoint_every=0.001s", "training.epochs=1"]
    assert main([*args, "data.loader=device", f"run.dir={tmp_path}", "run.progress=false", "run.report=false"]) == 0
    run = _only_run(tmp_path)
    assert load_checkpoint(run / "checkpoints" / "last.pt").get("batch", 0) == 0  # the epoch's end replaced it


@pytest.mark.parametrize(
    "value,expected",
    [("500", ("steps", 500)), ("20steps", ("steps", 20)), ("90s", ("seconds", 90)), ("10min", ("seconds", 600))],
)
def test_checkpoint_every_values(value, expected):
    assert checkpoint_interval(value) == expected


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "ten", "3days", "inf"])
def test_bad_checkpoint_every_is_a_config_error(value):
    with pytest.raises(ConfigError, match="run.checkpoint_every"):
        from imgcls.engine.build import check_config

        check_config(build_config("quickstart", [f"run.checkpoint_every={value}"]))


def _torchrun(script: list[str], args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_ddp_mid_epoch_resume_is_bit_identical(tmp_path):
    """Two gloo ranks: each rank's RNG and partial-epoch sums are gathered into the mid-epoch checkpoint and each
    rank gets its own back, so the resumed DDP run equals the uninterrupted one."""
    args = ["train", "quickstart", *COMMON, *PATHS["device"], "run.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = _torchrun(["-m", "imgcls"], [*args, f"run.dir={tmp_path / 'straight'}"], env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed = _torchrun([str(killer)], [*args, f"run.dir={tmp_path / 'killed'}"], {**env, "KILL_AT_BATCH_CKPT": "2"})
    assert killed.returncode != 0
    run = _only_run(tmp_path / "killed")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["batch"] > 0 and len(ckpt["ranks"]) == 2
    resumed = _torchrun(["-m", "imgcls"], [*args, f"run.dir={tmp_path / 'killed'}", "run.resume=auto"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "batch" in resumed.stdout  # "resumed from ... (step N, batch B of epoch E)"
    straight_run = _only_run(tmp_path / "straight")
    assert _steps(run) == _steps(straight_run)
    assert _train_loss(run) == _train_loss(straight_run)
    _assert_equal_tensors(
        load_checkpoint(straight_run / "checkpoints" / "last.pt")["model"],
        load_checkpoint(run / "checkpoints" / "last.pt")["model"],
    )
