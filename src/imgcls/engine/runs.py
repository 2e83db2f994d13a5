"""Run folders: create one, lock it while training, find one to resume, its metrics log, and read it back for
compare and studies.

A run folder ``<run.dir>/<name>-<stamp>/`` holds ``config.yaml``, ``metrics.csv`` (one row per epoch),
``checkpoints/{best,last}.pt``, ``run.lock`` while a process trains in it, and, once the run finished,
``summary.json``.

The lock records the process (PID and host) and a heartbeat it refreshes while it lives. A folder is *live* when its
lock's process still runs on this host, or (another host, e.g. a shared file system) when the heartbeat is recent. A
process that is killed leaves its lock behind; the dead PID (or the stale heartbeat) marks the run as resumable.
``run.resume=auto`` never picks a live run, and resuming a live run by path is refused.

Under torchrun (elastic restarts, several nodes) two rules keep every rank on the same run: rank 0 alone picks the
run to resume and tells the others (it locks the folder as soon as it trains, so a rank looking a moment later
would see it "in use"), and a lock left by an earlier worker group of the same elastic job (``TORCHELASTIC_RUN_ID``)
is stale wherever it was taken, since torchrun stops a whole group, on every node, before it starts the next one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from imgcls.config import Config, ConfigError, flatten, from_dict, parse_override, set_value, to_dict
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.distributed import (
    decided_by_rank0,
    device_type_for,
    elastic_job_id,
    init_distributed,
    launched_by_torchrun,
)

METRIC_FIELDS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",
    "ema_val_loss",
    "ema_val_acc",
    "lr",
    "seconds",
    "images_per_s",
]


class RunFolderError(ValueError):
    """A folder that is not a run folder, or a runs folder that does not exist."""


def run_name(cfg: Config) -> str:
    """The folder prefix of a run: ``run.name``, else the preset, else the model."""
    return cfg.run.name or cfg.preset or cfg.model.name.replace(":", "_")


def check_run_paths(cfg: Config) -> None:
    """The paths a run needs, when it starts: ``run.dir`` can hold a new run folder (the nearest folder on its path
    that exists is a folder, and writable) and ``training.distill.teacher`` exists.

    Raises:
        ConfigError: before any work, naming the key and the path that is missing, a file or read-only.
    """
    teacher = cfg.training.distill.teacher
    if teacher and not Path(teacher).expanduser().exists():
        raise ConfigError(f"bad value '{teacher}' for 'training.distill.teacher': no such checkpoint or run folder")
    path = existing = Path(cfg.run.dir).expanduser()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"bad value '{cfg.run.dir}' for 'run.dir': {existing} is a file, not a folder; set run.dir=FOLDER"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its nearest existing folder, {existing})"
        raise ConfigError(
            f"bad value '{cfg.run.dir}' for 'run.dir': cannot write into it{where}: read-only or no permission; set "
            "run.dir= to a folder you can write"
        )


#: errno values of a failed write that :func:`writing` names the file of
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an :class:`OSError` raised while writing it (a full disk, a read-only or forbidden folder):
    the errors of ``write()`` and of ``torch.save`` carry no file name, and the CLI's one-line message says which file
    could not be written. Other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno in WRITE_ERRNOS:
            e.filename = str(path)
        raise


def new_run_dir(cfg: Config) -> Path:
    name = run_name(cfg)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.run.dir) / f"{name}-{stamp}"
    i = 1
    while path.exists():
        path = Path(cfg.run.dir) / f"{name}-{stamp}-{i}"
        i += 1
    (path / "checkpoints").mkdir(parents=True)
    return path


# --------------------------------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------------------------------

LOCK_FILE = "run.lock"
#: seconds between heartbeats of a live run
HEARTBEAT_S = 30.0
#: a lock from another host whose heartbeat is older than this is stale (the process is gone)
STALE_AFTER_S = 300.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def read_lock(run_dir: str | Path) -> dict[str, Any] | None:
    """The lock's record (``pid``, ``host``, ``started``, ``heartbeat``), or None without a readable lock."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def lock_is_live(info: dict[str, Any] | None, *, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether a lock record belongs to a process that is still training (see the module docstring)."""
    if not info:
        return False
    job = elastic_job_id()
    if job is not None and info.get("job") == job and info.get("pid") != os.getpid():
        return False  # an earlier worker group of this elastic job: torchrun stopped it before starting ours
    if info.get("host") == socket.gethostname():
        return _pid_alive(int(info.get("pid", -1)))
    return time.time() - float(info.get("heartbeat", 0)) < stale_after_s


def describe_lock(info: dict[str, Any]) -> str:
    age = time.time() - float(info.get("heartbeat", 0))
    return f"pid {info.get('pid')} on {info.get('host')}, heartbeat {age:.0f}s ago"


class RunLock:
    """``run.lock`` of the process training in ``run_dir``: written on :meth:`acquire`, refreshed by a daemon thread
    every ``heartbeat_s`` seconds, removed on :meth:`release` (a killed process leaves it behind, with a dead PID).

    Raises:
        ConfigError: on :meth:`acquire`, when another live process holds the folder.
    """

    def __init__(self, run_dir: str | Path, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "job": elastic_job_id(),  # torchrun's job id: a later worker group of the same job may take the folder
        }

    def _write(self) -> None:
        tmp = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self._record, "heartbeat": time.time()}))
        os.replace(tmp, self.path)  # atomic: a reader sees the old or the new record, never half of one

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError:  # a full disk or a vanished folder must not kill training; the lock just ages
                pass

    def acquire(self) -> RunLock:
        holder = read_lock(self.path.parent)
        if holder and holder.get("pid") != os.getpid() and lock_is_live(holder):
            raise ConfigError(
                f"run folder {self.path.parent} is in use ({describe_lock(holder)}): wait for that run, or resume "
                "another one"
            )
        self._write()
        self._thread = threading.Thread(target=self._beat, name="imgcls-run-lock", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (read_lock(self.path.parent) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------------------------


def find_resume_checkpoint(resume: str, cfg: Config) -> Path | None:
    """``auto``: last.pt of the newest unfinished run with this name that no live process holds (one line says which
    it picked, or that there is none); a run folder: its last.pt; or a checkpoint file.

    Raises:
        ConfigError: a run folder (or a checkpoint in one) that a live process is training.
    """
    if resume == "auto":
        return _auto_resume(cfg)
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    holder = read_lock(path.parent.parent)
    if holder and holder.get("pid") != os.getpid() and lock_is_live(holder):
        raise ConfigError(
            f"run.resume={resume}: that run is still training ({describe_lock(holder)}); resuming it would mix two "
            "processes in one folder"
        )
    return path


def _auto_resume(cfg: Config) -> Path | None:
    name = run_name(cfg)
    candidates = sorted(
        (p for p in Path(cfg.run.dir).glob(f"{name}-*") if (p / "checkpoints" / "last.pt").is_file()),
        key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime,
    )
    unfinished = [p for p in candidates if not (p / "summary.json").is_file()]
    live = [p for p in unfinished if lock_is_live(read_lock(p))]
    resumable = [p for p in unfinished if p not in live]
    skipped = f" (skipped {len(live)} live: {', '.join(p.name for p in live)})" if live else ""
    if not resumable:
        print(f"run.resume=auto: no unfinished '{name}' run in {cfg.run.dir} to resume{skipped}; starting a new run")
        return None
    print(f"run.resume=auto: resuming {resumable[-1]}{skipped}", flush=True)
    return resumable[-1] / "checkpoints" / "last.pt"


def resume_config(cli_cfg: Config, overrides: Sequence[str]) -> tuple[Config, Path | None]:
    """For ``run.resume``: the checkpoint's saved config with this command line's explicit overrides re-applied.

    So ``imgcls train run.resume=auto`` alone continues the run as it was configured, and adding
    ``training.epochs=30`` extends it.
    """
    if not cli_cfg.run.resume:
        return cli_cfg, None
    if launched_by_torchrun():  # rank 0 decides for all (see the module docstring); every rank reads its choice
        info = init_distributed(device_type_for(cli_cfg.run.device))
        path = decided_by_rank0(lambda: find_resume_checkpoint(cli_cfg.run.resume, cli_cfg), info)
    else:
        path = find_resume_checkpoint(cli_cfg.run.resume, cli_cfg)
    if path is None:
        cli_cfg.run.resume = None
        return cli_cfg, None
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    cfg.run.resume = str(path)
    return cfg, path


RESUMES_FILE = "resumes.json"


def record_resume(run_dir: str | Path, cfg: Config, *, from_epoch: int) -> dict[str, Any]:
    """Append to ``resumes.json`` what a resumed session changed against the run's original ``config.yaml`` (which
    stays as it was): ``{"at": ISO time, "from_epoch": N, "changes": {dotted key: new value}}``. Returns the entry."""
    run_dir = Path(run_dir)
    original = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    now = flatten(to_dict(cfg))
    changes = {k: v for k, v in now.items() if k != "run.resume" and original.get(k) != v}
    entry = {"at": datetime.now().isoformat(timespec="seconds"), "from_epoch": from_epoch, "changes": changes}
    path = run_dir / RESUMES_FILE
    entries = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*entries, entry], indent=2))
    return entry


class CsvLog:
    """A CSV file appended row by row, so that a resumed run continues the same file.

    ``keep``: on a resume, the rows whose ``key`` is beyond the checkpoint's are dropped (they will be redone)."""

    fields: list[str] = []
    key = ""
    float_format = "{:.6g}"

    def __init__(self, path: Path, keep: int | None = None) -> None:
        self.path = path
        if keep is not None and path.is_file():
            rows = [r for r in self.read() if int(r[self.key]) <= keep]
            self._write_all(rows)

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        with writing(self.path), self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with writing(self.path), self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            fmt = self.float_format.format
            w.writerow({k: (fmt(v) if isinstance(v, float) else v) for k, v in row.items() if k in self.fields})


class MetricsLog(CsvLog):
    """metrics.csv: one row per epoch."""

    fields = METRIC_FIELDS
    key = "epoch"


class StepLog(CsvLog):
    """steps.csv: the loss and lr every ``run.log_interval`` optimizer steps, at full precision (a loss curve finer
    than epochs; a resumed run's rows equal an uninterrupted run's)."""

    fields = ["step", "epoch", "loss", "lr"]
    key = "step"
    float_format = "{!r}"


@dataclass
class RunRecord:
    """One run folder, read back.

    Attributes:
        path: the run folder.
        name: the folder name (used as the run's label).
        config: the flattened config (dotted key -> value).
        metrics: ``metrics.csv`` rows, numbers parsed (empty cells are None).
        summary: ``summary.json`` (empty when the run did not finish).
    """

    path: Path
    name: str
    config: dict[str, Any]
    metrics: list[dict[str, float | None]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def column(self, key: str) -> list[float]:
        """The non-empty values of one metrics.csv column, in epoch order."""
        return [r[key] for r in self.metrics if r.get(key) is not None]  # type: ignore[misc]

    @property
    def finished(self) -> bool:
        return bool(self.summary)


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_metrics_csv(path: Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` as a list of rows with float values (None for empty cells); [] if missing."""
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def is_run_dir(path: Path) -> bool:
    """A run folder has a ``config.yaml`` and a ``metrics.csv``."""
    return (path / "config.yaml").is_file() and (path / "metrics.csv").is_file()


def load_run(path: str | Path) -> RunRecord:
    """Read one run folder.

    Raises:
        RunFolderError: the folder has no ``config.yaml`` / ``metrics.csv``.
    """
    p = Path(path)
    if not is_run_dir(p):
        raise RunFolderError(f"{p} is not a run folder (no config.yaml and metrics.csv in it)")
    config = flatten(yaml.safe_load((p / "config.yaml").read_text()) or {})
    summary_path = p / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return RunRecord(path=p, name=p.name, config=config, metrics=read_metrics_csv(p / "metrics.csv"), summary=summary)


def summary_near(model_path: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of the run a checkpoint or exported model belongs to, or {} when there is none.

    Looked for in a run folder given as such, beside the file, and, for a file in a run's ``checkpoints/`` (where
    training writes checkpoints and ``imgcls export`` writes next to them), in the run folder above it. An unreadable
    or malformed summary counts as none: a server reading it for its page must still start.
    """
    p = Path(model_path)
    folder = p if p.is_dir() else p.parent
    candidates = [folder / "summary.json"]
    if folder.name == "checkpoints":
        candidates.append(folder.parent / "summary.json")
    for candidate in candidates:
        try:
            summary = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            return summary
    return {}


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Every run folder under ``runs_dir`` (searched recursively, so study and tune folders are included), oldest
    first by folder name."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunFolderError(f"runs folder {root} does not exist")
    return sorted({p.parent for p in root.rglob("config.yaml") if is_run_dir(p.parent)}, key=lambda p: str(p))
