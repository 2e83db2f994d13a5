"""``imgcls tune``: hyperparameter search with Optuna over ordinary :func:`~imgcls.engine.train.train` runs.

A search space is a list of ``--param KEY=SPEC`` strings, one per config key:

- ``log:LOW:HIGH`` - float on a log scale (learning rates, weight decay);
- ``float:LOW:HIGH[:STEP]`` - float, uniform;
- ``int:LOW:HIGH[:STEP]`` - integer, uniform;
- ``choice:A,B,C`` - one of the values (each parsed as YAML: ``true``, ``0.1``, ``sgd``).

Each trial is a normal run in ``<run.dir>/tune-<study>/trials/`` (so ``imgcls compare`` works on them). The metric
(``val_acc`` by default) is reported to Optuna after every epoch through the ``on_epoch_end`` hook of ``train``, and
the median pruner stops trials that are below the median of earlier trials at the same epoch (the hook raises
``optuna.TrialPruned``). A trial's value is the best value of the metric over its epochs.

Storage and crashes. By default the study lives in ``<run.dir>/tune-<study>/study.db``, an SQLite database opened
through ``optuna.storages.RDBStorage`` with ``connect_args={"timeout": 60}`` (writers wait for SQLite's file lock
instead of failing) and a heartbeat. ``storage`` (``--storage``) puts it elsewhere, for workers on several machines:
any SQLAlchemy URL Optuna's RDBStorage takes (``postgresql+psycopg2://user:password@host/db``,
``mysql+pymysql://...``, ``sqlite:///path``), or ``journal:PATH`` for Optuna's journal file storage (an append-only
log on a shared file system, no database server). Several ``imgcls tune --study-name X --resume`` processes share
one study (parallel workers). ``--resume`` reopens the study: finished trials (complete or pruned) count towards
``--trials`` and are never repeated. A running trial sends a heartbeat every ``heartbeat_s`` seconds (Optuna's own
for database URLs; a ``heartbeat`` user attribute in a journal); a trial whose worker died is marked FAIL by any
other worker once its heartbeat is :data:`GRACE_BEATS` beats old (at once when the worker was on this machine and is
gone), and, like trials that failed with an error, queued again once with the same parameters. ``--trials N`` is the
number of finished trials the study should reach: a worker starts a trial only while finished plus running trials
are fewer than N, and waits for the others' running trials (they may finish, or die and be failed) before it quits.

The best trial's full config is written to ``<run.dir>/tune-<study>/best.yaml``, a preset file:
``imgcls train runs/tune-<study>/best.yaml`` trains it.
"""

from __future__ import annotations

import csv
import inspect
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.table import Table

from imgcls.config import Config, ConfigError, build_config, parse_override, set_value, to_dict
from imgcls.engine.build import check_config
from imgcls.engine.train import train

if TYPE_CHECKING:
    import optuna  # optional: the [tune] extra

log = logging.getLogger("imgcls")

#: seconds between heartbeats of a running trial (``--heartbeat``)
HEARTBEAT_INTERVAL_S = 60
#: heartbeats a trial may miss before another worker fails it: the grace period is this many intervals
GRACE_BEATS = 5
GRACE_PERIOD_S = GRACE_BEATS * HEARTBEAT_INTERVAL_S
#: the ``--storage`` prefix of Optuna's journal file storage
JOURNAL_PREFIX = "journal:"
#: how often one failed trial is queued again (with the same parameters) by ``--resume``
MAX_RETRIES = 2
#: a RUNNING trial that never recorded its worker is orphaned once it is this old (seconds)
NO_WORKER_GRACE_S = 60
#: trial ids this process is running right now: a RUNNING trial recorded for this process but not in this set was
#: left behind by an interrupted ``tune()`` call
_ACTIVE_TRIALS: set[int] = set()
_ACTIVE_LOCK = threading.Lock()

KINDS = ("log", "float", "int", "choice")


class TuneError(ConfigError):
    """A bad search space, or a study that exists (or not) against what was asked."""


# --------------------------------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of the search space: a config key and how to sample it.

    Attributes:
        key: the dotted config key (e.g. ``training.optimizer.lr``).
        kind: log, float, int or choice.
        low: lower bound (log/float/int).
        high: upper bound, inclusive (log/float/int).
        step: grid step (float/int), or None.
        choices: the values (choice).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this parameter for ``trial``."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))  # type: ignore[arg-type]
        return trial.suggest_float(
            self.key,
            float(self.low),
            float(self.high),
            log=self.kind == "log",  # type: ignore[arg-type]
            step=self.step,
        )

    def to_text(self) -> str:
        """Back to the ``KEY=SPEC`` form."""
        if self.kind == "choice":
            return f"{self.key}=choice:" + ",".join(
                yaml.safe_dump(c, default_flow_style=True).strip().removesuffix("\n...").strip() for c in self.choices
            )
        parts = [self.kind, _num(self.low), _num(self.high)] + ([_num(self.step)] if self.step is not None else [])
        return f"{self.key}=" + ":".join(parts)


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1 else repr(float(x))


def _parse_number(text: str, what: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TuneError(f"--param {spec}: {what} '{text}' is not a number") from None


def parse_param(text: str) -> ParamSpec:
    """Parse ``KEY=KIND:ARGS`` (see the module docstring) and check the key exists and takes the values.

    Raises:
        TuneError: malformed spec, unknown key, bounds out of order, or values of the wrong type for the key.
    """
    if "=" not in text:
        raise TuneError(f"--param '{text}' is not of the form key=kind:args, e.g. training.optimizer.lr=log:1e-4:1e-1")
    key, spec = (s.strip() for s in text.split("=", 1))
    kind, _, args = spec.partition(":")
    if kind not in KINDS:
        raise TuneError(
            f"--param {text}: unknown kind '{kind}'. Valid: log:LOW:HIGH, float:LOW:HIGH[:STEP], "
            "int:LOW:HIGH[:STEP], choice:A,B,C"
        )
    if kind == "choice":
        raw = [a for a in args.split(",") if a.strip() != ""]
        if not raw:
            raise TuneError(f"--param {text}: choice needs at least one value, e.g. choice:sgd,adamw")
        choices = tuple(parse_override(f"x={a.strip()}")[1] for a in raw)
        for c in choices:
            if not (c is None or isinstance(c, bool | int | float | str)):
                raise TuneError(f"--param {text}: choice values must be plain values, got {c!r}")
        param = ParamSpec(key=key, kind=kind, choices=choices)
        samples: list[Any] = list(choices)
    else:
        nums = args.split(":")
        if len(nums) not in (2, 3):
            raise TuneError(f"--param {text}: {kind} takes LOW:HIGH" + ("" if kind == "log" else "[:STEP]"))
        if kind == "log" and len(nums) == 3:
            raise TuneError(f"--param {text}: log takes LOW:HIGH (no step)")
        low, high = (_parse_number(n, b, text) for n, b in zip(nums[:2], ("low", "high"), strict=True))
        step = _parse_number(nums[2], "step", text) if len(nums) == 3 else None
        if not low <= high:
            raise TuneError(f"--param {text}: low {low} is above high {high}")
        if kind == "log" and low <= 0:
            raise TuneError(f"--param {text}: log bounds must be > 0")
        if kind == "int" and not (low.is_integer() and high.is_integer() and (step is None or step.is_integer())):
            raise TuneError(f"--param {text}: int bounds and step must be integers")
        if step is not None and step <= 0:
            raise TuneError(f"--param {text}: step must be > 0")
        param = ParamSpec(key=key, kind=kind, low=low, high=high, step=step)
        samples = [int(low), int(high)] if kind == "int" else [low, high]
    probe = Config()
    for value in samples:  # unknown keys and ill-typed values fail here, before any trial
        set_value(probe, key, value)
    return param


def parse_params(texts: Sequence[str]) -> list[ParamSpec]:
    """Parse several ``--param`` strings; the same key twice is an error."""
    params = [parse_param(t) for t in texts]
    keys = [p.key for p in params]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise TuneError(f"--param given twice for {', '.join(dup)}")
    return params


def metric_direction(metric: str) -> str:
    """``minimize`` for losses and errors, ``maximize`` otherwise."""
    return "minimize" if ("loss" in metric or "error" in metric) else "maximize"


def trial_config(preset: str | None, overrides: Sequence[str], params: dict[str, Any]) -> Config:
    """The config of one trial: preset, then the fixed overrides, then the sampled values."""
    cfg = build_config(preset, overrides)
    for key, value in params.items():
        set_value(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Storage, crash recovery
# --------------------------------------------------------------------------------------------------------------------


def study_dir(runs_dir: str | Path, study_name: str) -> Path:
    """``<runs>/tune-<study>``."""
    return Path(runs_dir) / f"tune-{study_name}"


def open_storage(
    db_path: Path, storage: str | None = None, *, heartbeat_s: int = HEARTBEAT_INTERVAL_S
) -> optuna.storages.BaseStorage:
    """The study's storage: ``storage`` (a SQLAlchemy URL, or ``journal:PATH``), else SQLite at ``db_path`` (writers
    wait up to 60 s for its file lock). Database storages get Optuna's heartbeat: every ``heartbeat_s`` seconds, and a
    trial :data:`GRACE_BEATS` beats late is failed by the next worker that looks, then queued again
    (:func:`on_stale_trial`).

    Raises:
        TuneError: a URL SQLAlchemy cannot parse, a database driver that is not installed, a server that cannot be
            reached, a journal folder that does not exist.
    """
    import optuna  # optional: the [tune] extra
    import sqlalchemy.exc  # optional: comes with optuna

    if storage is not None and storage.startswith(JOURNAL_PREFIX):
        log_path = Path(storage.removeprefix(JOURNAL_PREFIX)).expanduser()
        if not log_path.parent.is_dir():
            raise TuneError(f"--storage {storage}: no folder {log_path.parent} for the journal file; create it first")
        backend = optuna.storages.journal.JournalFileBackend(str(log_path))
        return optuna.storages.JournalStorage(backend)
    if storage is None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        url, engine_kwargs = f"sqlite:///{db_path.resolve()}", {"connect_args": {"timeout": 60}}
    else:
        url, engine_kwargs = storage, None
        try:
            sqlalchemy.engine.make_url(url)
        except sqlalchemy.exc.ArgumentError:
            raise TuneError(
                f"--storage {storage!r} is not a database URL: use e.g. postgresql+psycopg2://user:password@host/db, "
                "sqlite:///path/study.db, or journal:/shared/path/study.log"
            ) from None
    callback = "heartbeat_stale_trial_callback"  # its name since Optuna 4.9 (failed_trial_callback before)
    if callback not in inspect.signature(optuna.storages.RDBStorage).parameters:
        callback = "failed_trial_callback"
    try:
        with _quiet_experimental():
            return optuna.storages.RDBStorage(
                url=url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=GRACE_BEATS * heartbeat_s,
                **{callback: on_stale_trial},
            )
    except ModuleNotFoundError as e:
        raise TuneError(
            f"--storage {_safe_url(url)}: the database driver {e.name!r} is not installed"
            + (' (pip install -e ".[postgres]")' if e.name == "psycopg2" else f" (pip install {e.name})")
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(e.orig if getattr(e, "orig", None) is not None else e).strip().splitlines()[0]
        raise TuneError(f"--storage {_safe_url(url)}: cannot open the study database: {first}") from None


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    import sqlalchemy  # optional: comes with optuna

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for a message
        return url


def describe_storage(storage: str | None, db_path: Path) -> str:
    """Where the study is, for messages."""
    return str(db_path) if storage is None else _safe_url(storage)


def on_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat callback: a trial whose worker stopped beating was just marked FAIL; say so and queue it
    again with the same parameters (see :func:`requeue`)."""
    print(
        f"trial {trial.number} (worker {trial.user_attrs.get('worker', '?')}): no heartbeat for the grace period, "
        "marked FAIL" + ("; queued again" if requeue(study, trial) else ""),
        flush=True,
    )


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphaned(trial: optuna.trial.FrozenTrial, *, grace_s: float = GRACE_PERIOD_S) -> bool:
    """Whether a RUNNING trial has no live worker that we can see.

    A trial records ``worker = host:pid``. On this host it is orphaned when that process is gone, or when it is
    this process but the trial is not one this process is running (an interrupted ``tune()`` call). A trial from
    another host is left to the heartbeat (Optuna fails it once the heartbeat is older than the grace period; in a
    journal, imgcls's ``heartbeat`` attribute older than ``grace_s`` makes it orphaned here). A
    RUNNING trial without a worker that started more than :data:`NO_WORKER_GRACE_S` ago never reached the
    objective, so it is orphaned too.
    """
    beat = trial.user_attrs.get("heartbeat")  # imgcls's own, where the storage has no heartbeat (a journal)
    if beat is not None and time.time() - float(beat) > grace_s:
        return True
    worker = trial.user_attrs.get("worker")
    if not worker:
        # between ask() and the objective's first line a live worker's trial has no worker yet: give it a minute
        started = trial.datetime_start
        return started is None or (datetime.now() - started).total_seconds() > NO_WORKER_GRACE_S
    host, _, pid_text = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return trial._trial_id not in _ACTIVE_TRIALS
    return not _pid_alive(pid)


def fail_orphans(study: optuna.Study, *, grace_s: float = GRACE_PERIOD_S) -> tuple[list[int], list[int]]:
    """Mark FAIL the RUNNING trials whose worker is gone: heartbeat-stale ones (Optuna's check, which calls
    :func:`on_stale_trial`: said and queued again) and :func:`is_orphaned` ones. Returns the numbers of the trials
    this call failed, (stale, orphaned)."""
    import optuna  # optional: the [tune] extra
    from optuna.trial import TrialState  # optional: the [tune] extra

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with _quiet_experimental():
        optuna.storages.fail_stale_trials(study)  # heartbeat-stale trials of any host
    stale = sorted(running - {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))})
    orphaned = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_orphaned(t, grace_s=grace_s):
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            orphaned.append(t.number)
    return stale, orphaned


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, max_retries: int = MAX_RETRIES) -> bool:
    """Queue a failed trial again with the same parameters, unless it was already queued again or its chain of
    retries has had ``max_retries`` attempts. The retry records ``failed_trial`` (the first attempt) and
    ``retry_history`` in its system attributes (the convention of Optuna's RetryFailedTrialCallback). Returns
    whether it queued one."""
    import optuna  # optional: the [tune] extra
    from optuna.trial import TrialState  # optional: the [tune] extra

    retried = {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if trial.number in retried or not trial.params or len(history) > max_retries:
        return False
    drop = ("worker", "run_dir", "error", "heartbeat")
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in drop},
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )
    return True


def recover_trials(
    study: optuna.Study, *, max_retries: int = MAX_RETRIES, grace_s: float = GRACE_PERIOD_S
) -> dict[str, list[int]]:
    """Mark orphaned RUNNING trials FAIL and queue failed trials again with the same parameters (:func:`requeue`:
    each at most once, a chain of retries at most ``max_retries`` attempts).

    Returns:
        ``{"failed": [trial numbers marked FAIL], "requeued": [numbers of the failed trials queued again]}``.
    """
    from optuna.trial import TrialState  # optional: the [tune] extra

    stale, orphaned = fail_orphans(study, grace_s=grace_s)
    failed = sorted(stale + orphaned)
    requeued = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if requeue(study, t, max_retries=max_retries)
    ]
    return {"failed": failed, "requeued": requeued}


class _quiet_experimental:  # noqa: N801 - used like a function
    """Silence Optuna's ExperimentalWarning for the calls inside."""

    def __enter__(self) -> None:

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message=".*experimental.*")
        try:
            from optuna.exceptions import ExperimentalWarning  # optional: the [tune] extra

            warnings.simplefilter("ignore", ExperimentalWarning)
        except ImportError:  # pragma: no cover
            pass

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


# --------------------------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What :func:`tune` did.

    Attributes:
        study_name: the study.
        study_dir: ``<runs>/tune-<study>`` (database, trials, best.yaml, trials.csv).
        best_value: the best trial's value (None when no trial completed).
        best_params: its sampled parameters.
        best_config_path: ``best.yaml`` (None when no trial completed).
        trials: one dict per trial (number, state, value, params, run_dir).
        recovered: what ``--resume`` repaired (see :func:`recover_trials`).
        ran: trials run by this call.
        storage: where the study lives (the SQLite file, or the ``--storage`` URL without its password).
    """

    study_name: str
    study_dir: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_config_path: Path | None
    trials: list[dict[str, Any]]
    recovered: dict[str, list[int]] = field(default_factory=dict)
    ran: int = 0
    storage: str = ""


def _finished_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState  # optional: the [tune] extra

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _find_run_dir(trials_dir: Path, run_name: str) -> Path | None:
    found = sorted(trials_dir.glob(f"{run_name}-*"))
    return found[-1] if found else None


class _Heartbeat:
    """A daemon thread that sets the trial's ``heartbeat`` user attribute (time.time()) every ``interval_s``: the
    heartbeat Optuna does not keep in a journal storage (:func:`is_orphaned` reads it)."""

    def __init__(self, trial: optuna.Trial, interval_s: float) -> None:
        self._trial, self._interval, self._stop = trial, interval_s, threading.Event()
        trial.set_user_attr("heartbeat", time.time())
        self._thread = threading.Thread(target=self._beat, name="imgcls-trial-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 - a finished trial or a storage hiccup must not kill the run
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def make_objective(
    *,
    preset: str | None,
    overrides: Sequence[str],
    params: Sequence[ParamSpec],
    metric: str,
    trials_dir: Path,
    train_fn: Callable[..., Any] | None = None,
    heartbeat_s: float | None = None,
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: sample, train with a pruning hook, return the best metric value over the epochs.

    Args:
        preset: the preset (or None for defaults).
        overrides: fixed ``key=value`` overrides.
        params: the search space.
        metric: the metrics.csv column reported every epoch (e.g. ``val_acc``, ``val_loss``, ``ema_val_acc``).
        trials_dir: where the trial runs go (``run.dir``).
        train_fn: the training function (default :func:`imgcls.engine.train.train`; tests substitute it).
        heartbeat_s: record a ``heartbeat`` user attribute this often while a trial runs (storages without
            Optuna's heartbeat, i.e. a journal); None: not needed.
    """
    import optuna  # optional: the [tune] extra

    maximize = metric_direction(metric) == "maximize"

    def objective(trial: optuna.Trial) -> float:

        with _ACTIVE_LOCK:
            _ACTIVE_TRIALS.add(trial._trial_id)
        beating = _Heartbeat(trial, heartbeat_s) if heartbeat_s else None
        try:
            trial.set_user_attr("worker", _worker_id())
            sampled = {p.key: p.suggest(trial) for p in params}
            cfg = trial_config(preset, overrides, sampled)
            run_name = f"trial-{trial.number:04d}"
            cfg.run.dir = str(trials_dir)
            cfg.run.name = run_name
            cfg.run.resume = None
            check_config(cfg)
            best: list[float] = []

            def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
                value = row.get(metric)
                if value is None or value == "":
                    have = ", ".join(k for k, v in row.items() if v != "")
                    raise ConfigError(
                        f"tune metric '{metric}' is not in the epoch metrics (have: {have}); check --metric"
                    )
                value = float(value)
                best.append(value if not best else (max if maximize else min)(best[-1], value))
                trial.report(value, step=epoch + 1)
                if trial.should_prune():
                    run_dir = _find_run_dir(trials_dir, run_name)
                    if run_dir is not None:
                        trial.set_user_attr("run_dir", str(run_dir))
                    raise optuna.TrialPruned(f"{metric}={value:.4f} at epoch {epoch + 1} is below the median")

            result = (train_fn or train)(cfg, hooks={"on_epoch_end": on_epoch_end})
            trial.set_user_attr("run_dir", str(result.run_dir))
            if result.test is not None:
                trial.set_user_attr("test_acc", float(result.test.acc))
            if not best:
                raise ConfigError("the trial ran no epoch")
            if not math.isfinite(best[-1]):
                raise FloatingPointError(f"{metric} is not finite")
            return best[-1]
        finally:
            if beating is not None:
                beating.stop()
            with _ACTIVE_LOCK:
                _ACTIVE_TRIALS.discard(trial._trial_id)

    return objective


def _base_of(
    study: optuna.Study, preset: str | None, overrides: Sequence[str], params: Sequence[str], metric: str
) -> tuple[str | None, list[str], list[str], str]:
    """Reconcile this command line with what the study recorded when it was created (empty pieces are taken from
    the study; given pieces must match)."""
    attrs = study.user_attrs
    # a worker that just created the study writes its definition one attribute at a time, "params" last: a worker
    # joining in those milliseconds waits for the whole of it rather than compare against half of it
    deadline = time.monotonic() + 10
    while attrs and "params" not in attrs and time.monotonic() < deadline:
        time.sleep(0.05)
        attrs = study.user_attrs
    if not attrs:
        return preset, list(overrides), list(params), metric
    stored = (
        attrs.get("preset"),
        list(attrs.get("overrides", [])),
        list(attrs.get("params", [])),
        attrs.get("metric", metric),
    )
    given_params = [parse_param(p).to_text() for p in params]
    if given_params and given_params != stored[2]:
        raise TuneError(
            f"study '{study.study_name}' searches {' '.join(stored[2])}; this command asks for "
            f"{' '.join(given_params)}. Use another --study-name for another search space."
        )
    if (preset is not None or overrides) and (preset, list(overrides)) != (stored[0], stored[1]):
        raise TuneError(
            f"study '{study.study_name}' was created with preset {stored[0]!r} and overrides "
            f"{stored[1]}; this command gives {preset!r} {list(overrides)}. Resume without them, or use "
            "another --study-name."
        )
    return stored[0], stored[1], stored[2], stored[3]


def tune(
    preset: str | None = None,
    overrides: Sequence[str] = (),
    *,
    params: Sequence[str] = (),
    trials: int = 20,
    study_name: str | None = None,
    resume: bool = False,
    metric: str = "val_acc",
    runs_dir: str | Path | None = None,
    prune: bool = True,
    startup_trials: int = 3,
    seed: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
    heartbeat_s: int = HEARTBEAT_INTERVAL_S,
    train_fn: Callable[..., Any] | None = None,
    quiet: bool = False,
) -> TuneResult:
    """Run (or continue) an Optuna search and write ``best.yaml`` and ``trials.csv``.

    Args:
        preset: preset name or YAML path (default: quickstart for a new study).
        overrides: fixed ``key=value`` overrides for every trial.
        params: ``KEY=SPEC`` search space (see the module docstring); on ``resume`` may be omitted.
        trials: number of finished (complete or pruned) trials the study should reach.
        study_name: default: the preset's name.
        resume: continue an existing study (required when it exists; see the module docstring for crash recovery).
        metric: metrics.csv column to optimise (``*loss*`` is minimised, anything else maximised).
        runs_dir: default: the config's ``run.dir``.
        prune: use the median pruner.
        startup_trials: trials that are never pruned and that set the first medians.
        seed: sampler seed (TPE); None = random.
        timeout_s: stop starting new trials after this many seconds.
        storage: where the study lives (see the module docstring): a SQLAlchemy URL or ``journal:PATH``; None:
            SQLite in ``<runs>/tune-<study>/study.db``. Trial runs, ``best.yaml`` and ``trials.csv`` stay in
            ``<runs>/tune-<study>/`` of each worker.
        heartbeat_s: seconds between a running trial's heartbeats; a trial :data:`GRACE_BEATS` beats late is
            failed by another worker.
        train_fn: substitute for :func:`imgcls.engine.train.train` (tests).
        quiet: no console table at the end.

    Returns:
        A :class:`TuneResult`.

    Raises:
        TuneError: bad search space; the study exists without ``resume``; no parameters for a new study.
    """
    import optuna  # optional: the [tune] extra

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base_cfg = build_config(preset or "quickstart", overrides)
    runs_root = Path(runs_dir or base_cfg.run.dir)
    name = study_name or (Path(preset).stem if preset else "quickstart")
    sdir = study_dir(runs_root, name)
    if heartbeat_s < 1:
        raise TuneError(f"--heartbeat {heartbeat_s}: use a whole number of seconds >= 1")
    if storage is None:
        exists = (sdir / "study.db").is_file()
        opened = open_storage(sdir / "study.db", heartbeat_s=heartbeat_s)
    else:
        opened = open_storage(sdir / "study.db", storage, heartbeat_s=heartbeat_s)
        exists = name in optuna.get_all_study_names(opened)
    study = _open_study(
        name,
        opened,
        describe_storage(storage, sdir / "study.db"),
        exists=exists,
        resume=resume,
        params=params,
        metric=metric,
        seed=seed,
        prune=prune,
        startup_trials=startup_trials,
    )
    preset_used, overrides_used, param_texts, metric_used = _base_of(
        study, preset if exists else (preset or "quickstart"), overrides, params, metric
    )
    specs = parse_params(param_texts)
    if not study.user_attrs:  # a new study records its definition so that --resume needs no arguments
        definition = {"preset": preset_used, "overrides": list(overrides_used), "metric": metric_used}
        for k, v in {**definition, "params": [p.to_text() for p in specs]}.items():
            study.set_user_attr(k, v)
    # the fixed part must be valid before any trial starts
    check_config(trial_config(preset_used, overrides_used, {}))

    grace_s = GRACE_BEATS * heartbeat_s
    recovered = _recover(study, quiet, grace_s) if resume else {"failed": [], "requeued": []}
    objective = make_objective(
        preset=preset_used,
        overrides=overrides_used,
        params=specs,
        metric=metric_used,
        trials_dir=sdir / "trials",
        train_fn=train_fn,
        heartbeat_s=None if _has_optuna_heartbeat(opened) else heartbeat_s,
    )
    ran = _optimize(study, objective, trials=trials, timeout_s=timeout_s, heartbeat_s=heartbeat_s, grace_s=grace_s)
    result = summarize(study, sdir, preset_used, overrides_used)
    result.storage = describe_storage(storage, sdir / "study.db")
    result.recovered, result.ran = recovered, ran
    if not quiet:
        print_trials(result)
    return result


def _has_optuna_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    from optuna.storages._heartbeat import BaseHeartbeat  # optional: the [tune] extra

    return isinstance(storage, BaseHeartbeat)


def _recover(study: optuna.Study, quiet: bool, grace_s: float) -> dict[str, list[int]]:
    """Trials a crash left running are marked failed and failed ones queued again (see :func:`recover_trials`)."""
    recovered = recover_trials(study, grace_s=grace_s)
    if (recovered["failed"] or recovered["requeued"]) and not quiet:
        print(
            f"resume: trials left running by a crash marked FAIL: {recovered['failed'] or 'none'}; "
            f"failed trials queued again: {recovered['requeued'] or 'none'}"
        )
    return recovered


def _open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    where: str,
    *,
    exists: bool,
    resume: bool,
    params: Sequence[str],
    metric: str,
    seed: int | None,
    prune: bool,
    startup_trials: int,
) -> optuna.Study:
    """Load the study stored in ``storage`` (``resume``) or create it; the sampler and pruner are built per process.
    ``where``: the storage, for messages."""
    import optuna  # optional: the [tune] extra

    if exists and not resume:
        raise TuneError(
            f"study '{name}' already exists in {where}: pass --resume to continue it, or choose another --study-name"
        )
    # the sampler and pruner are not stored with the study: every process builds its own
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0, interval_steps=1)
        if prune
        else optuna.pruners.NopPruner()
    )
    if exists:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise TuneError(f"{where} holds no study named '{name}'") from None
    if not params:
        raise TuneError("a new study needs at least one --param, e.g. --param training.optimizer.lr=log:1e-4:1e-1")
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction=metric_direction(metric),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def _optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    trials: int,
    timeout_s: float | None,
    heartbeat_s: float = HEARTBEAT_INTERVAL_S,
    grace_s: float = GRACE_PERIOD_S,
) -> int:
    """Run trials until the study has ``trials`` finished ones (or the timeout); returns how many this call ran.

    Other workers may be running trials of the same study: a trial starts only while finished plus running trials
    are fewer than ``trials`` (so the workers together reach exactly that number, but for two workers asking in the
    same few milliseconds), and while the others' running trials would make up the rest, this worker waits a
    heartbeat at a time: they finish, or their worker died and their heartbeat goes stale, and then this worker
    fails them (:func:`fail_orphans`), queues them again and runs them.
    """
    from optuna.trial import TrialState  # optional: the [tune] extra

    started: list[int] = []

    def counted(trial: optuna.Trial) -> float:
        started.append(trial.number)
        return objective(trial)

    t0 = time.monotonic()
    while timeout_s is None or time.monotonic() - t0 < timeout_s:
        for number in fail_orphans(study, grace_s=grace_s)[1]:  # the heartbeat-stale ones are queued already
            failed = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            again = requeue(study, failed)
            print(f"trial {number}: its worker is gone, marked FAIL" + ("; queued again" if again else ""), flush=True)
        finished = _finished_count(study)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if finished >= trials:
            break
        if finished + running >= trials:
            time.sleep(min(heartbeat_s, 5.0))
            continue
        with _quiet_experimental():
            study.optimize(counted, n_trials=1, catch=(ConfigError, ValueError, FloatingPointError, RuntimeError))
    return len(started)


def summarize(study: optuna.Study, sdir: Path, preset: str | None, overrides: Sequence[str]) -> TuneResult:
    """Write ``trials.csv`` and (when a trial completed) ``best.yaml``; return the :class:`TuneResult`."""
    from optuna.trial import TrialState  # optional: the [tune] extra

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.values else None,
                "epochs": len(t.intermediate_values),
                "retry_of": t.system_attrs.get("failed_trial"),
                **{f"param:{k}": v for k, v in t.params.items()},
                "test_acc": t.user_attrs.get("test_acc"),
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    sdir.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with (sdir / "trials.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in keys} for r in rows])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return TuneResult(study.study_name, sdir, None, {}, None, rows)
    best = study.best_trial
    path = write_best_config(study, best, sdir / "best.yaml", preset, overrides)
    return TuneResult(study.study_name, sdir, best.value, dict(best.params), path, rows)


def write_best_config(
    study: optuna.Study, best: optuna.trial.FrozenTrial, path: Path, preset: str | None, overrides: Sequence[str]
) -> Path:
    """The best trial's resolved config as a preset file (``imgcls train <path>`` trains it).

    ``run.dir`` points back at the runs folder and ``run.name`` is ``tune-<study>-best``; the header comment records
    the study, the trial, its value and the sampled parameters.
    """
    cfg = trial_config(preset, overrides, dict(best.params))
    cfg.run.dir = str(path.parent.parent)
    cfg.run.name = f"tune-{study.study_name}-best"
    cfg.run.resume = None
    tree = to_dict(cfg)
    tree.pop("preset", None)
    metric = study.user_attrs.get("metric", "value")
    header = [
        f"# Best config of the Optuna study '{study.study_name}': trial {best.number}, {metric} = {best.value:.6g}",
        f"# from preset {preset!r} with overrides {list(overrides)} and the sampled values:",
        *(f"#   {k}: {v!r}" for k, v in best.params.items()),
        f"# train it with: imgcls train {path}",
    ]
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(tree, sort_keys=False))
    return path


def print_trials(result: TuneResult) -> None:
    """A rich table of the trials and the best one."""

    param_keys = sorted({k for r in result.trials for k in r if k.startswith("param:")})
    table = Table(title=f"study '{result.study_name}' ({len(result.trials)} trials)")
    for c in ("#", "state", "value", "epochs", *(k.removeprefix("param:") for k in param_keys)):
        table.add_column(c, justify="right" if c != "state" else "left")
    for r in result.trials:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        table.add_row(
            str(r["number"]), r["state"], value, str(r["epochs"]), *(_fmt_param(r.get(k)) for k in param_keys)
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        f"study storage: {result.storage or result.study_dir / 'study.db'}; trial runs: {result.study_dir / 'trials'}; "
        f"continue or add workers with --study-name {result.study_name} --resume"
    )
    if result.best_config_path is not None:
        console.print(f"best value {result.best_value:.4f} with {result.best_params}")
        console.print(f"best config: {result.best_config_path}  (imgcls train {result.best_config_path})")
    else:
        console.print("no trial completed yet")


def _fmt_param(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
