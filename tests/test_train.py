from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.engine.build import load_model
from imgcls.engine.checkpoint import CheckpointError, load_checkpoint
from imgcls.engine.runs import LOCK_FILE, RESUMES_FILE, read_lock, resume_config
from imgcls.engine.train import train


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_run_folder_contents_and_checkpoint_round_trip(tiny_overrides):
    result = train(build_config("quickstart", tiny_overrides))
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"):
        assert rows[0][key] != ""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] == pytest.approx(result.test.acc)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scaler", "epoch", "step", "rng", "config", "classes", "preprocess"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["classes"] == [str(i) for i in range(10)]
    assert ckpt["config"]["model"]["name"] == "simple_cnn_tiny"
    assert ckpt["preprocess"]["image_size"] == 16 and len(ckpt["preprocess"]["mean"]) == 1
    # the rebuilt model gives the same outputs as the trained weights
    model, _ = load_model(run / "checkpoints" / "last.pt")
    x = torch.randn(4, 1, 16, 16)
    ref = build_config("quickstart", tiny_overrides)
    del ref
    state = ckpt["model"]
    model2, _ = load_model(run)
    assert torch.equal(model(x), model2(x)) or load_checkpoint(run)["epoch"] != 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not list(run.glob("checkpoints/*.tmp"))  # atomic writes leave no temp files
    assert not (run / LOCK_FILE).exists()  # the lock goes with the process that held it


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "extra",
    [
        [],
        # the speedrun recipe's state: a data-initialised (whitening) stem, and Lookahead's slow weights and step count
        [
            "model.name=airbench_small",
            "data.image_size=16",
            "training.optimizer.lookahead=true",
            "training.optimizer.lookahead_k=3",
            "training.scheduler.name=linear",
        ],
    ],
    ids=["ema", "whitening+lookahead"],
)
def test_resume_is_exact(tiny_overrides, extra):
    overrides = [*tiny_overrides, "training.epochs=3", "training.ema.enabled=true", *extra]
    full = train(build_config("quickstart", overrides))

    def crash_after_epoch_2(epoch, row):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(
            build_config("quickstart", [*overrides, "run.name=interrupted"]),
            hooks={"on_epoch_end": crash_after_epoch_2},
        )
    cfg, path = resume_config(
        build_config("quickstart", [*overrides, "run.name=interrupted", "run.resume=auto"]),
        ["run.resume=auto", "run.name=interrupted"],
    )
    assert path is not None and path.name == "last.pt"
    resumed = train(cfg, resume_path=path)
    a, b = _rows(full.run_dir), _rows(resumed.run_dir)
    assert len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "lr"):
            assert ra[key] == rb[key], (key, ra, rb)
    assert resumed.test.acc == full.test.acc


def test_quickstart_reaches_accuracy_on_reduced_budget(tmp_path):
    # the README's main job with fewer epochs: still >= 95% test accuracy on digits
    result = train(build_config("quickstart", ["training.epochs=6", f"run.dir={tmp_path}", "run.progress=false"]))
    assert result.test.acc >= 0.95


def test_cli_train_eval_predict(tiny_overrides, tmp_path, capsys):
    assert main(["train", *tiny_overrides]) == 0
    out = capsys.readouterr().out
    run_dir = Path(out.split("RUN FOLDER ")[-1].strip())
    assert run_dir.is_dir()
    assert main(["eval", str(run_dir), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion matrix" in out
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 360 and 0 <= metrics["accuracy"] <= 1
    # predict on an image file made from a test digit
    from PIL import Image

    from imgcls.data.datasets import load_dataset

    raw = load_dataset("digits")
    Image.fromarray(raw.train.images[0, 0].numpy()).save(tmp_path / "digit.png")
    assert main(["predict", str(run_dir), str(tmp_path / "digit.png"), "--topk", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "digit.png")) and line.count(",") == 2


def test_cli_bad_checkpoints(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    assert main(["eval", str(bad)]) == 2
    assert "damaged or not a PyTorch file" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    assert main(["predict", str(tmp_path / "other.pt"), "x.png"]) == 2
    assert "not an imgcls checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_sigkill_then_resume_auto(tmp_path):
    """Kill a training process with SIGKILL after its first checkpoint; run.resume=auto continues from it."""
    args = [
        sys.executable,
        "-m",
        "imgcls.cli",
        "train",
        "data.subset=300",
        "model.name=simple_cnn_tiny",
        "training.epochs=6",
        f"run.dir={tmp_path}",
        "run.progress=false",
        "run.name=killed",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    last = None
    while time.time() < deadline:
        found = list(tmp_path.glob("killed-*/checkpoints/last.pt"))
        if found:
            last = found[0]
            break
        time.sleep(0.05)
    assert last is not None, "no checkpoint written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (last.parent.parent / "summary.json").exists():
        pytest.skip("the run finished before it could be killed")
    epoch_at_kill = load_checkpoint(last)["epoch"]
    done = subprocess.run([*args, "run.resume=auto"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {last}" in done.stdout and f"at epoch {epoch_at_kill}" in done.stdout
    rows = _rows(last.parent.parent)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert (last.parent.parent / "summary.json").is_file()


def test_amp_bf16_and_accumulation_and_clipping_run_on_cpu(tiny_overrides):
    result = train(
        build_config(
            "quickstart",
            [
                *tiny_overrides,
                "training.epochs=1",
                "training.amp=true",
                "training.accum_steps=2",
                "training.clip_grad_norm=1.0",
            ],
        )
    )
    rows = _rows(result.run_dir)
    assert float(rows[0]["train_loss"]) < 2.5 and result.test is not None


def _crashed_run(overrides: list[str], name: str) -> Path:
    """A run that stopped after its first epoch (an exception in the epoch hook): last.pt, no summary."""

    def crash(epoch, row):
        raise _Stop

    runs_dir = Path(build_config("quickstart", overrides).run.dir)
    before = set(runs_dir.glob(f"{name}-*"))
    with pytest.raises(_Stop):
        train(build_config("quickstart", [*overrides, f"run.name={name}"]), hooks={"on_epoch_end": crash})
    (run,) = set(runs_dir.glob(f"{name}-*")) - before
    return run


def _write_lock(run: Path, pid: int) -> None:
    record = {"pid": pid, "host": os.uname().nodename, "started": time.time(), "heartbeat": time.time()}
    (run / LOCK_FILE).write_text(json.dumps(record))


def _digest(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_auto_never_picks_a_live_run(tiny_overrides, capsys):
    """Y was killed (its lock names a dead process); X, newer, is still training (its lock's process is alive).
    ``run.resume=auto`` resumes Y, says so in one line, and leaves every file of X as it was; resuming X by path is
    refused in one line (exit 2)."""
    overrides = [*tiny_overrides, "training.epochs=2"]
    y = _crashed_run(overrides, "job")
    x = _crashed_run(overrides, "job")  # the same run name, as two jobs of one script would have
    os.utime(y / "checkpoints" / "last.pt", (time.time() - 60, time.time() - 60))  # X is the newest
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(y, int(dead.stdout))
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(x, alive.pid)
        before = _digest(x)
        capsys.readouterr()
        cfg, path = resume_config(
            build_config("quickstart", [*overrides, "run.name=job", "run.resume=auto"]), ["run.resume=auto"]
        )
        said = capsys.readouterr().out.strip().splitlines()
        assert path is not None and path.parent.parent == y
        assert len(said) == 1 and "resuming" in said[0] and "skipped 1 live" in said[0]
        result = train(cfg, resume_path=path)
        assert result.run_dir == y and (y / "summary.json").is_file()
        assert _digest(x) == before
        assert read_lock(x)["pid"] == alive.pid and not (y / LOCK_FILE).exists()
        status = main(["train", "quickstart", *overrides, f"run.resume={x}"])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1 and "still training" in err
        assert _digest(x) == before
    finally:
        alive.kill()
        alive.wait()


def test_resume_keeps_the_config_records_overrides_and_adds_up_time(tiny_overrides):
    """A run stopped after epoch 1 of 2, resumed with ``training.epochs=3``: config.yaml stays as first written,
    resumes.json records the change, epochs and seconds count every session."""
    overrides = [*tiny_overrides, "training.epochs=2"]
    run = _crashed_run(overrides, "grow")
    original = (run / "config.yaml").read_bytes()
    first_session = load_checkpoint(run / "checkpoints" / "last.pt")["elapsed_s"]
    assert first_session > 0
    cfg, path = resume_config(
        build_config("quickstart", [*overrides, f"run.resume={run}", "training.epochs=3"]),
        [f"run.resume={run}", "training.epochs=3"],
    )
    result = train(cfg, resume_path=path)
    assert (run / "config.yaml").read_bytes() == original
    (entry,) = json.loads((run / RESUMES_FILE).read_text())
    assert entry["from_epoch"] == 1 and entry["changes"] == {"training.epochs": 3}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 3 == len(_rows(run))
    trained = sum(float(r["seconds"]) for r in _rows(run))
    assert summary["seconds"] >= trained and summary["seconds"] > first_session
    assert result.seconds == summary["seconds"]


def test_time_budget_stops_at_a_step_then_validates_checkpoints_tests_and_resumes(tiny_overrides, capsys):
    """training.max_minutes: a budget smaller than one step ends epoch 1 after its first optimizer step; the cut epoch
    is validated, checkpointed and the best checkpoint tested; the summary says where; a resume without the budget
    trains on from epoch 2 and the training seconds add up."""
    overrides = [*tiny_overrides, "training.epochs=3", "run.name=budget"]
    result = train(build_config("quickstart", [*overrides, "training.max_minutes=1e-6"]))
    run = result.run_dir
    stop = result.summary["budget_stop"]
    batches = stop["batches_per_epoch"]
    assert batches > 1 and stop["batches"] == 1 and stop["epoch"] == 1
    assert stop["epochs_reached"] == pytest.approx(1 / batches) and stop["max_minutes"] == 1e-6
    assert "time budget: stopped" in capsys.readouterr().out
    rows = _rows(run)
    assert len(rows) == 1 and rows[0]["val_acc"] != ""
    assert result.test is not None and (run / "checkpoints" / "best.pt").is_file()
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["train_s"] == pytest.approx(stop["train_seconds"]) and ckpt["train_s"] > 0
    cfg, path = resume_config(
        build_config("quickstart", [*overrides, f"run.resume={run}", "training.max_minutes=null"]),
        [f"run.resume={run}", "training.max_minutes=null"],
    )
    resumed = train(cfg, resume_path=path)
    assert resumed.summary["budget_stop"] is None and resumed.summary["epochs_run"] == 3 == len(_rows(run))
    assert resumed.summary["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in _rows(run)), rel=1e-3)


def test_time_budget_larger_than_the_run_changes_nothing(tiny_overrides):
    result = train(build_config("quickstart", [*tiny_overrides, "training.max_minutes=60"]))
    assert result.summary["budget_stop"] is None and result.epochs_run == 2
