"""Experiment tracking: TensorBoard, MLflow (SQLite store in the run folder) or Weights & Biases (offline).

``run.tracker`` picks one; the runner creates it on rank 0 only and calls ``log(row, step=epoch)`` once per epoch and
``close()`` at the end. Everything a tracker writes stays inside the run folder, so nothing needs a server or the
internet:

- ``tensorboard`` (the default): event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``). Needs the
  ``tensorboard`` package (``pip install imgcls[track]``); without it training goes on untracked after a one-line
  warning, so the default never stops a run.
- ``mlflow``: a SQLite store ``<run>/mlflow.db`` with artifacts under ``<run>/mlartifacts``
  (``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db``). Needs ``pip install mlflow``.
- ``wandb``: an offline W&B run under ``<run>/wandb`` (``wandb sync <run>/wandb/offline-run-*`` uploads it later).
  Needs ``pip install wandb``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from imgcls.config import UserFacingError, flatten

log = logging.getLogger("imgcls")

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")


class TrackerNotInstalledError(UserFacingError, ImportError):
    """The chosen tracker's package is missing; the message says what to install."""


def _not_installed(name: str) -> TrackerNotInstalledError:
    return TrackerNotInstalledError(
        f"run.tracker={name} needs the {name} package: pip install {name} (or set run.tracker=tensorboard)"
    )


def check_tracker(name: str) -> None:
    """Raise :class:`TrackerNotInstalledError` now, before any work, when ``run.tracker`` names a tracker whose package
    is not installed (mlflow, wandb; a missing tensorboard only warns, see :func:`create_tracker`)."""
    if name in ("mlflow", "wandb") and importlib.util.find_spec(name) is None:
        raise _not_installed(name)


class Tracker(Protocol):
    """What the runner needs from a tracker."""

    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (empty strings, None, NaN and the epoch counter itself dropped)."""
    out = {}
    for k, v in metrics.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, numbers.Real):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class NullTracker:
    """Tracks nothing (``run.tracker=none``)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Scalars per epoch in ``<run_dir>/tensorboard``, the config as text.

    Args:
        run_dir: the run folder.
        config: the resolved config as a nested dict.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: the [track] extra
        except ImportError as e:  # torch raises ImportError when the tensorboard package is missing
            raise TrackerNotInstalledError(
                "run.tracker=tensorboard needs the tensorboard package: pip install 'imgcls[track]' "
                "(or pip install tensorboard), or set run.tracker=none"
            ) from e

        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "```\n" + text + "\n```", global_step=0)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in numeric_metrics(metrics).items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """An MLflow run in a SQLite store inside the run folder; parameters are the flattened config.

    Args:
        run_dir: the run folder.
        config: the resolved config as a nested dict.
        experiment: the MLflow experiment name.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any], experiment: str = "imgcls") -> None:
        try:
            import mlflow  # optional: the [mlflow] extra
        except ImportError as e:
            raise _not_installed("mlflow") from e
        run_dir = Path(run_dir).resolve()
        self.db_path = run_dir / "mlflow.db"
        self.client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{self.db_path}")
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=(run_dir / "mlartifacts").as_uri()
            )
        else:
            experiment_id = found.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        # tracker params accept scalars only: lists and None become strings
        params = {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in flatten(config).items()}
        from mlflow.entities import Param  # optional: the [mlflow] extra

        # MLflow caps a parameter value at a few hundred characters: long values (model kwargs) are truncated
        batch = [Param(k, str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def log(self, metrics: dict[str, Any], step: int) -> None:

        from mlflow.entities import Metric  # optional: the [mlflow] extra

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in numeric_metrics(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """An offline Weights & Biases run under ``<run_dir>/wandb`` (never contacts a server).

    Args:
        run_dir: the run folder.
        config: the resolved config as a nested dict.
        project: the W&B project name used when the run is synced later.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any], project: str = "imgcls") -> None:
        try:
            import wandb  # optional: the [wandb] extra
        except ImportError as e:
            raise _not_installed("wandb") from e
        run_dir = Path(run_dir)
        self.run = wandb.init(
            project=project,
            name=run_dir.name,
            dir=str(run_dir),
            config=config,
            mode="offline",
            reinit=True,
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(numeric_metrics(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def create_tracker(name: str, run_dir: str | Path, config: dict[str, Any]) -> Tracker:
    """The tracker named ``name`` (see the module docstring), writing inside ``run_dir``.

    Args:
        name: none, tensorboard, mlflow or wandb.
        run_dir: the run folder.
        config: the resolved config as a nested dict (logged as parameters / text).

    Raises:
        ValueError: an unknown tracker name.
        TrackerNotInstalledError: mlflow or wandb chosen but not installed. (A missing tensorboard only warns:
            it is the default, and the default must not stop a run.)
    """
    if name == "none":
        return NullTracker()
    if name == "tensorboard":
        try:
            return TensorBoardTracker(run_dir, config)
        except TrackerNotInstalledError as e:
            log.warning("warning: %s; training without tracking", e)
            return NullTracker()
    if name == "mlflow":
        return MlflowTracker(run_dir, config)
    if name == "wandb":
        return WandbTracker(run_dir, config)
    raise ValueError(f"unknown tracker {name!r}; valid: {', '.join(TRACKERS)}")
