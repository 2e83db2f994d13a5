"""Distributed tuning on a real PostgreSQL server: two ``imgcls tune --storage postgresql+psycopg2://...`` workers on
one study at once, one SIGKILLed in the middle of a trial; the survivor fails the dead worker's trial through the
heartbeat, queues it again and brings the study to exactly ``--trials`` finished trials; ``--resume`` continues it,
and the ``best.yaml`` it writes trains.

The server is a throwaway cluster (Debian's ``postgresql`` binaries, which ``.ci/run`` installs when missing) in a
temporary folder, listening only on a Unix socket there, run as the ``postgres`` user when the tests run as root
(PostgreSQL refuses to run as root), and stopped afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="the [postgres] extra (psycopg2-binary) is not installed")

import imgcls  # noqa: E402
from imgcls.cli import main  # noqa: E402

SRC = str(Path(imgcls.__file__).resolve().parents[1])
TINY = [
    "data.subset=200",
    "model.name=simple_cnn_tiny",
    # 12 epochs of 200 images: about 1.5 s a trial on a quiet machine (2 epochs, 0.2 s, were too short for the test
    # to catch worker B inside a trial before the two workers had finished the study)
    "training.epochs=12",
    "data.loader=device",
    "run.threads=1",
    "run.progress=false",
    "run.tracker=none",
    "run.report=false",
    "run.eval_test=false",
]
PARAMS = ["--param", "training.optimizer.lr=log:1e-2:2e-1", "--param", "training.optimizer.name=choice:sgd,adamw"]
HEARTBEAT_S = 1  # a dead worker's trial is failed 5 beats (5 s) after its last heartbeat


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own, for this module: initdb, start on a Unix socket, yield the URL, stop."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
    root = Path(tempfile.mkdtemp(prefix="imgcls-pg-"))  # under /tmp: the postgres user must be able to enter it
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"

    def pg(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "imgcls", "--no-sync")
        options = f"-k {root} -c listen_addresses='' -F"  # Unix socket only; no fsync for a throwaway cluster
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        yield f"postgresql+psycopg2://imgcls@/postgres?host={root}"
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


# Worker B pretends to run on another machine (its host name), so that worker A cannot see its process: A must find
# out from the heartbeat that B is gone, as it would across machines. Otherwise the ordinary CLI.
OTHER_HOST = """
import socket, sys
socket.gethostname = lambda: "tune-node-b"
from imgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _worker(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="pg", storage=url)


def test_two_workers_on_postgres_one_killed_mid_trial(postgres_url: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    tune = ["tune", "quickstart", *TINY, *PARAMS, "--storage", postgres_url, "--study-name", "pg", "--no-prune"]
    common = [*tune, "--trials", "4", "--heartbeat", str(HEARTBEAT_S), "--resume"]  # --resume: join or create
    a = _worker([sys.executable, "-m", "imgcls", *common, "--runs-dir", str(tmp_path / "a")], tmp_path / "a.log")
    b = _worker([sys.executable, "-c", OTHER_HOST, *common, "--runs-dir", str(tmp_path / "b")], tmp_path / "b.log")
    try:
        # kill B once it is inside a trial of its own (the trial has its worker recorded)
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and b.poll() is None:
            time.sleep(0.2)
            try:
                running = _study(postgres_url).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            except KeyError:  # not created yet
                continue
            mine = [t for t in running if t.user_attrs.get("worker") == f"tune-node-b:{b.pid}"]
            if mine:
                time.sleep(0.3)  # well inside the trial: data loaded, training
                os.kill(b.pid, signal.SIGKILL)
                killed = mine[0].number
        assert killed is not None, (tmp_path / "b.log").read_text()[-3000:]
        assert b.wait(timeout=10) == -signal.SIGKILL
        assert a.wait(timeout=180) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    out_a = (tmp_path / "a.log").read_text()
    # A failed B's trial through the heartbeat (it could not see B's process) and queued it again: inside a trial's
    # start by Optuna's stale-trial check ("no heartbeat for the grace period"), or, when A was waiting for the
    # others' running trials, by imgcls's own check of the same heartbeat ("its worker is gone"); which of the two
    # comes first depends on how fast A's own trials ran
    assert re.search(rf"^trial {killed}\b[^\n]*marked FAIL", out_a, flags=re.M), out_a[-3000:]

    trials = _study(postgres_url).trials
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) and sorted(numbers) == list(range(len(numbers)))
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params == by_number[killed].params  # the same point again
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4  # as requested: no trial past the target, though two workers ran
    assert {t.user_attrs["worker"].rpartition(":")[0] for t in trials} >= {"tune-node-b"}  # B took part

    # --resume continues the study from its stored definition (no preset, overrides or --param needed)
    runs_c = tmp_path / "c"
    # (the pruner is built per process, like the sampler: --no-prune again, so that the new trial completes)
    resume = ["tune", "--storage", postgres_url, "--study-name", "pg", "--resume", "--trials", "5", "--no-prune"]
    assert main([*resume, "--heartbeat", str(HEARTBEAT_S), "--runs-dir", str(runs_c)]) == 0
    after = _study(postgres_url).trials
    assert len(after) == len(trials) + 1 and after[-1].state == optuna.trial.TrialState.COMPLETE

    best = runs_c / "tune-pg" / "best.yaml"
    assert best.is_file()
    assert main(["train", str(best), "training.epochs=1", f"run.dir={tmp_path / 'best'}"]) == 0
    assert list((tmp_path / "best").glob("tune-pg-best-*/checkpoints/best.pt"))
    print(f"postgres tuning test: {time.perf_counter() - t0:.1f}s")
