"""DDP on CPU (gloo): two processes train the same run; both ranks end with identical weights, and the distributed
validation metrics equal a single-process evaluation of those weights over the full split (no padded duplicates)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls.config import build_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(run_dir: Path, multilabel: bool = False) -> list[str]:
    # val_fraction 0.095 gives an odd validation split (137): an even shard split could hide padding duplicates;
    # multi-label: digit_pairs, whose 800 val images are gathered from both ranks to compute mAP
    return [
        "data.name=digit_pairs" if multilabel else "data.name=digits",
        "model.name=simple_cnn_tiny",
        "data.subset=256",
        "data.batch_size=32",
        "data.val_fraction=0.095",
        "training.epochs=2",
        "training.ema.enabled=true",
        f"run.dir={run_dir}",
        "run.progress=false",
        "run.tracker=none",
        "run.eval_test=false",
        "run.report=false",
        "run.device=cpu",
    ]


def _worker(rank: int, port: int, run_dir: str, out_dir: str, multilabel: bool) -> None:
    """One rank: the environment torchrun would set, then the ordinary runner. Saves what the test compares."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import imgcls.engine.train as runner

    models = []
    build = runner.build_model_for

    def capture(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        models.append(build(*args, **kwargs))
        return models[-1]

    runner.build_model_for = capture  # keep a handle on this rank's model
    rows: list[dict] = []
    result = runner.train(
        build_config(None, _overrides(Path(run_dir), multilabel)),
        hooks={"on_epoch_end": lambda epoch, row: rows.append(dict(row))},
    )
    torch.save(
        {
            "model": models[0].state_dict(),
            "rows": rows,
            "run_dir": str(result.run_dir),
            "world_size": result.summary["world_size"],
        },
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.parametrize("multilabel", [False, True], ids=["single-label", "multi-label"])
def test_ddp_two_cpu_processes(tmp_path: Path, multilabel: bool) -> None:
    import torch.multiprocessing as mp

    from imgcls.data.build import (
        build_loaders,  # also imports torchvision before the fork
        build_splits,
        resolve_preprocess,
    )
    from imgcls.engine.build import build_model_for
    from imgcls.engine.checkpoint import load_checkpoint
    from imgcls.engine.loop import evaluate

    run_dir = tmp_path / "runs"
    # fork (Linux) reuses the imports already made in this process: seconds saved per rank on a 2-core CI machine
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    mp.start_processes(
        _worker,
        args=(_free_port(), str(run_dir), str(tmp_path), multilabel),
        nprocs=WORLD,
        join=True,
        start_method=method,
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["world_size"] == r1["world_size"] == WORLD
    assert r0["run_dir"] == r1["run_dir"]
    assert [p.name for p in run_dir.iterdir()] == [Path(r0["run_dir"]).name]  # one run folder, written by rank 0

    # identical weights and buffers (BatchNorm statistics included) on both ranks
    assert r0["model"].keys() == r1["model"].keys()
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    # rank 0's checkpoint holds those weights; both ranks computed the same metrics
    last = load_checkpoint(Path(r0["run_dir"]) / "checkpoints" / "last.pt")
    for k, v in last["model"].items():
        assert torch.equal(v, r0["model"][k]), k
    timing = {"seconds", "images_per_s"}
    for row0, row1 in zip(r0["rows"], r1["rows"], strict=True):
        assert {k: v for k, v in row0.items() if k not in timing} == {k: v for k, v in row1.items() if k not in timing}

    # single-process evaluation of the same weights over the whole validation split gives the same metrics
    cfg = build_config(None, _overrides(run_dir, multilabel))
    splits = build_splits(cfg)
    assert len(splits.val) % 2 == (0 if multilabel else 1)
    model = build_model_for(cfg, splits.num_classes, splits.in_chans, None)
    model.load_state_dict(r0["model"])
    loaders = build_loaders(cfg, splits, resolve_preprocess(cfg, splits, model), device=torch.device("cpu"))
    res = evaluate(
        model, loaders.val, device=torch.device("cpu"), num_classes=splits.num_classes, multilabel=multilabel
    )
    final = r0["rows"][-1]
    if multilabel:  # mAP needs every score: the ranks' probabilities were gathered, in full
        assert res.extra["map_macro"] == pytest.approx(final["val_map"], abs=1e-12)
    assert res.num_samples == len(splits.val)
    assert res.acc == pytest.approx(final["val_acc"], abs=1e-12)
    assert res.loss == pytest.approx(final["val_loss"], rel=1e-5)
    # the EMA copies agree too (same initial weights on every rank)
    assert final["ema_val_acc"] == r1["rows"][-1]["ema_val_acc"]


@pytest.mark.slow
def test_torchrun_cli(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m imgcls train ...`` works unchanged (the documented command)."""
    pytest.importorskip("imgcls.cli")
    run_dir = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "imgcls",
        "train",
        *_overrides(run_dir),
        "training.epochs=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list(run_dir.iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.pt").is_file()
    assert proc.stdout.count("epoch 1/1") == 1  # progress lines come from rank 0 only
