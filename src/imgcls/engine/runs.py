"""Run folders: create one, find one to resume, its metrics log, and read it back for compare and studies.

A run folder ``<run.dir>/<name>-<stamp>/`` holds ``config.yaml``, ``metrics.csv`` (one row per epoch),
``checkpoints/{best,last}.pt`` and, once the run finished, ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from imgcls.config import Config, flatten, from_dict, parse_override, set_value
from imgcls.engine.checkpoint import load_checkpoint

log = logging.getLogger("imgcls")

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


def find_resume_checkpoint(resume: str, cfg: Config) -> Path | None:
    """``auto``: last.pt of the newest unfinished run with this name; a run folder: its last.pt; or a file."""
    if resume == "auto":
        name = run_name(cfg)
        candidates = sorted(
            (p for p in Path(cfg.run.dir).glob(f"{name}-*") if (p / "checkpoints" / "last.pt").is_file()),
            key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime,
        )
        unfinished = [p for p in candidates if not (p / "summary.json").is_file()]
        return unfinished[-1] / "checkpoints" / "last.pt" if unfinished else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    return path


def resume_config(cli_cfg: Config, overrides: Sequence[str]) -> tuple[Config, Path | None]:
    """For ``run.resume``: the checkpoint's saved config with this command line's explicit overrides re-applied.

    So ``imgcls train run.resume=auto`` alone continues the run as it was configured, and adding
    ``training.epochs=30`` extends it.
    """
    if not cli_cfg.run.resume:
        return cli_cfg, None
    path = find_resume_checkpoint(cli_cfg.run.resume, cli_cfg)
    if path is None:
        log.info("run.resume=auto: no unfinished run to resume; starting a new one")
        cli_cfg.run.resume = None
        return cli_cfg, None
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    cfg.run.resume = str(path)
    return cfg, path


class MetricsLog:
    """metrics.csv (one row per epoch, appended so a resumed run continues the same file)."""

    def __init__(self, path: Path, keep_epochs: int | None = None) -> None:
        self.path = path
        if keep_epochs is not None and path.is_file():
            # a resume after a crash: drop rows of epochs after the checkpoint (they will be redone)
            rows = [r for r in self.read() if int(r["epoch"]) <= keep_epochs]
            self._write_all(rows)

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in METRIC_FIELDS})


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


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Every run folder under ``runs_dir`` (searched recursively, so study and tune folders are included), oldest
    first by folder name."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunFolderError(f"runs folder {root} does not exist")
    return sorted({p.parent for p in root.rglob("config.yaml") if is_run_dir(p.parent)}, key=lambda p: str(p))
