"""Publishing a trained run: its model card (``imgcls card RUN``) and its registration as a version of a named model
in the registry (``imgcls registry register RUN --name NAME``, :mod:`imgcls.engine.model_registry`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.config import flatten
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.model_registry import CHECKPOINT_FILE, VersionInfo, register
from imgcls.engine.runs import summary_near
from imgcls.evaluate.model_card import MODEL_INDEX_METRICS, model_card
from imgcls.evaluate.run_eval import run_eval

CARD_FILE = "MODEL_CARD.md"
#: numbers of summary.json that a registered version records as MLflow metrics
SUMMARY_METRICS = ("test_acc", "test_top5", "test_loss", "best_val_acc", "best_val_loss", "epochs_run", "params")
#: files of a run folder that travel with a registered version (besides the checkpoint and the card)
RUN_FILES = ("summary.json", "config.yaml", "metrics.csv")


def run_folder_of(checkpoint_path: str | Path) -> Path:
    """The run folder of a checkpoint file: above ``checkpoints/``, else the file's own folder."""
    p = Path(checkpoint_path)
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def _same_file(a: Any, b: str | Path) -> bool:
    return a is not None and Path(str(a)).resolve() == Path(b).resolve()


def evaluation_metrics(ckpt: dict[str, Any], *, split: str = "test", device: str = "cpu") -> dict[str, Any]:
    """The plain (no TTA, no ensemble) evaluation of ``ckpt`` on ``split``: the run's ``eval/metrics.json`` when it
    is that evaluation of this very checkpoint (what training wrote at its end), else a new one (written there)."""
    saved = run_folder_of(ckpt["path"]) / "eval" / "metrics.json"
    if saved.is_file():
        metrics = json.loads(saved.read_text())
        plain = (metrics.get("tta") or 1) == 1 and not metrics.get("ensemble_mode")
        if plain and metrics.get("split") == split and _same_file(metrics.get("checkpoint"), ckpt["path"]):
            return metrics
    return run_eval(ckpt["path"], split=split, report=False, device=device, quiet=True)[1]


def write_model_card(
    checkpoint: str | Path, *, out: str | Path | None = None, split: str = "test", device: str = "cpu"
) -> Path:
    """Write the model card of a run (or checkpoint, or ``models:/`` reference) to ``out`` (default:
    ``<run>/MODEL_CARD.md``), from its evaluation on ``split`` (:func:`evaluation_metrics`). Returns the path."""
    ckpt = load_checkpoint(checkpoint)
    metrics = evaluation_metrics(ckpt, split=split, device=device)
    path = Path(out) if out is not None else run_folder_of(ckpt["path"]) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    model_card(ckpt, metrics, summary_near(ckpt["path"])).save(path)
    return path


@dataclass
class Registered:
    """What :func:`register_run` did: the new version and the files it holds."""

    version: VersionInfo
    files: dict[str, Path]


def register_run(run: str | Path, name: str, *, uri: str | None = None, device: str = "cpu") -> Registered:
    """Register a run's best checkpoint (or the checkpoint ``run`` names) as a new version of model ``name``, with its
    model card (written first if the run has none), summary, config and metrics log.

    Raises:
        RegistryError: no MLflow, or the store refuses (see :func:`imgcls.engine.model_registry.register`).
        CheckpointError: the checkpoint cannot be read.
    """
    ckpt = load_checkpoint(run)
    folder = run_folder_of(ckpt["path"])
    card = folder / CARD_FILE
    if not card.is_file():
        write_model_card(ckpt["path"], out=card, device=device)
    files = {CHECKPOINT_FILE: Path(ckpt["path"]), CARD_FILE: card}
    files |= {f: folder / f for f in RUN_FILES if (folder / f).is_file()}
    summary = summary_near(ckpt["path"])
    metrics = {k: float(summary[k]) for k in SUMMARY_METRICS if isinstance(summary.get(k), int | float)}
    evaluation = evaluation_metrics(ckpt, device=device)
    metrics |= {f"eval_{k}": float(evaluation[k]) for k, *_ in MODEL_INDEX_METRICS if evaluation.get(k) is not None}
    git = ckpt.get("git") or {}
    tags = {
        "imgcls_run": folder.name,
        "run_path": str(folder.resolve()),
        "model": ckpt["config"]["model"]["name"],
        "dataset": ckpt["config"]["data"]["name"],
        "checkpoint_sha256": ckpt.get("sha256") or "",
        "data_fingerprint": (ckpt.get("data_fingerprint") or {}).get("sha256", ""),
        "git_commit": git.get("commit", ""),
        "imgcls_version": (ckpt.get("versions") or {}).get("imgcls", ""),
        "test_acc": f"{evaluation['accuracy']:.4f}" if evaluation.get("split") == "test" else "",
    }
    version = register(
        name,
        files,
        params=flatten(ckpt["config"]),
        metrics=metrics,
        tags={k: v for k, v in tags.items() if v},
        description=card.read_text()[:5000],  # the whole card travels as an artifact; MLflow's field is bounded
        uri=uri,
    )
    return Registered(version=version, files=files)
