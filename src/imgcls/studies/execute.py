"""Training and evaluating a study's runs: each variant x seed through :func:`~imgcls.engine.train.train` (or a
finished run reused), ensemble members with their own initial weights, teachers before their students, then the
test split through :func:`~imgcls.evaluate.run_eval.run_eval`; one ``study.csv`` row per variant x seed."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.config import Config, to_dict, validate_config
from imgcls.data.build import build_splits
from imgcls.engine.build import build_model_for
from imgcls.engine.runs import RunRecord, load_run
from imgcls.engine.train import train
from imgcls.evaluate.run_eval import run_eval
from imgcls.studies.definitions import StudyDefinition, Variant
from imgcls.studies.plan import config_key, find_finished_run, slug, variant_config


@dataclass
class TrainedRun:
    """A finished training run (trained now or reused)."""

    run_dir: Path
    record: RunRecord
    reused: bool

    @property
    def best_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"


class StudyRuns:
    """The training runs of one study in ``<out>/runs``: trains a config once, or reuses the finished run of an
    earlier call (unless ``fresh``), and counts both.

    Args:
        study: the definition.
        dataset: a key of :data:`~imgcls.studies.definitions.DATASETS`.
        out: the study's output folder.
        extra: overrides for every run (command line).
        fresh: retrain even when a finished run with the same config exists.
        train_fn: substitute for :func:`imgcls.engine.train.train` (tests).
        log: progress lines.
    """

    def __init__(
        self,
        study: StudyDefinition,
        dataset: str,
        out: Path,
        extra: Sequence[str],
        fresh: bool,
        train_fn: Callable[..., Any] | None,
        log: Callable[[str], None],
    ) -> None:
        self.study, self.dataset, self.out, self.extra = study, dataset, out, list(extra)
        self.runs_dir = out / "runs"
        self.fresh = fresh
        self.train_fn = train_fn or train
        self.log = log
        self.cache: dict[str, TrainedRun] = {}  # config_key -> run
        self.trained = self.reused = 0

    def train(self, cfg: Config, label: str) -> TrainedRun:
        """The finished run of ``cfg``: from this call's cache, a finished run in ``runs_dir``, or trained now."""
        key = config_key(cfg)
        if key in self.cache:
            return self.cache[key]
        found = None if self.fresh else find_finished_run(self.runs_dir, cfg)
        if found is not None:
            self.log(f"  {label}: reusing {found}")
            run = TrainedRun(found, load_run(found), reused=True)
            self.reused += 1
        else:
            cfg.run.dir = str(self.runs_dir)
            cfg.run.name = slug(label)
            cfg.run.resume = None
            self.log(f"  {label}: training")
            result = self.train_fn(cfg)
            run = TrainedRun(Path(result.run_dir), load_run(result.run_dir), reused=False)
            self.trained += 1
        self.cache[key] = run
        return run

    def init_file(self, cfg: Config, init_seed: int) -> Path:
        """A random-init state dict for ``cfg``'s model drawn with ``init_seed`` (ensemble members)."""
        model_key = json.dumps({"model": to_dict(cfg)["model"], "data": to_dict(cfg)["data"]}, sort_keys=True)
        digest = hashlib.sha1(model_key.encode()).hexdigest()[:10]
        path = self.out / "inits" / f"{slug(cfg.model.name)}-{digest}-seed{init_seed}.pt"
        if path.is_file():
            return path
        splits = build_splits(cfg)
        native = splits.train.source.image_size
        torch.manual_seed(init_seed)
        model = build_model_for(
            cfg,
            splits.num_classes,
            cfg.data.in_chans or splits.in_chans,
            cfg.data.image_size or (native[0] if native else None),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        return path

    def members(self, variant: Variant, seed: int, ckpts: dict[str, str]) -> list[TrainedRun]:
        """The runs of one variant x seed: one model, or the members of an ensemble (``ckpts``: for references)."""
        cfg = variant_config(self.study, variant, self.dataset, seed=seed, extra=self.extra, ckpts=ckpts)
        validate_config(cfg)
        # in a study with ensembles every single model is member 0, so that "1 model" is the first member of "k"
        if not any(v.ensemble > 1 for v in self.study.variants):
            return [self.train(cfg, f"{variant.name}-s{seed}")]
        runs = []
        for i in range(max(1, variant.ensemble)):
            member = variant_config(self.study, variant, self.dataset, seed=seed, extra=self.extra, ckpts=ckpts)
            member.model.pretrained = str(self.init_file(member, init_seed=1000 * (seed + 1) + i))
            runs.append(self.train(member, f"member{i}-s{seed}"))
        return runs

    def of_seed(self, seed: int) -> Callable[[Variant], list[TrainedRun]]:
        """``runs_of(variant)`` for one seed: the variant's runs, training the variants it references first."""
        done: dict[str, list[TrainedRun]] = {}

        def runs_of(v: Variant) -> list[TrainedRun]:
            if v.name not in done:
                for ref in v.references():  # teachers first
                    runs_of(self.study.variant(ref))
                ckpts = {ref: str(done[ref][0].best_ckpt) for ref in v.references()}
                done[v.name] = self.members(v, seed, ckpts)
            return done[v.name]

        return runs_of


def evaluate_variant(runs: list[TrainedRun], variant: Variant) -> dict[str, Any]:
    """Test-split metrics of the first run's best checkpoint, with the variant's TTA and the other runs as ensemble
    members (written to ``<first run>/eval-<variant>``)."""
    first = runs[0]
    out = first.run_dir / f"eval-{slug(variant.name)}"
    _, metrics = run_eval(
        first.best_ckpt,
        split="test",
        tta=variant.tta,
        ensemble=[str(r.best_ckpt) for r in runs[1:]],
        report=False,
        quiet=True,
        out_dir=out,
    )
    return metrics


def row_for(
    study: StudyDefinition, dataset: str, variant: Variant, seed: int, runs: list[TrainedRun], metrics: dict[str, Any]
) -> dict[str, Any]:
    """One ``study.csv`` row from the member runs and the test-set metrics."""
    first = runs[0].record
    val_acc = first.column("val_acc")
    per_class = metrics.get("per_class_accuracy") or {}
    seconds = [sum(r.record.column("seconds")) for r in runs]
    ips = first.column("images_per_s")
    s = first.summary
    return {
        "study": study.name,
        "dataset": dataset,
        "variant": variant.name,
        "seed": seed,
        "test_acc": metrics.get("accuracy", s.get("test_acc")),
        "best_val_acc": max(val_acc) if val_acc else None,
        "final_val_acc": val_acc[-1] if val_acc else None,
        "ece": metrics.get("ece"),
        "nll": metrics.get("nll"),
        "f1_macro": metrics.get("f1_macro"),
        "map_macro": metrics.get("map_macro"),  # multi-label runs only (None otherwise)
        "subset_acc": metrics.get("subset_accuracy"),
        "hamming_loss": metrics.get("hamming_loss"),
        "min_class_acc": min(per_class.values()) if per_class else None,
        "train_s": sum(seconds),
        "total_s": sum(float(r.record.summary.get("seconds") or 0.0) for r in runs),
        "images_per_s": statistics.fmean(ips) if ips else None,
        "epochs_run": s.get("epochs_run", len(first.metrics)),
        "params": sum(int(r.record.summary.get("params") or 0) for r in runs),
        "trainable_params": sum(int(r.record.summary.get("trainable_params") or 0) for r in runs),
        "test_n": metrics.get("num_samples"),
        "run_dir": str(runs[0].run_dir),
    }


def run_all(runs: StudyRuns, n_seeds: int) -> list[dict[str, Any]]:
    """Every variant x seed, seed by seed: trained (or reused), evaluated on the test split; the ``study.csv`` rows."""
    study, total = runs.study, n_seeds * len(runs.study.variants)
    rows: list[dict[str, Any]] = []
    for seed in range(n_seeds):
        runs_of = runs.of_seed(seed)
        for v in study.variants:
            runs.log(f"[{len(rows) + 1}/{total}] study {study.name} ({runs.dataset}): {v.name}, seed {seed}")
            members = runs_of(v)
            rows.append(row_for(study, runs.dataset, v, seed, members, evaluate_variant(members, v)))
            runs.log(f"  test accuracy {rows[-1]['test_acc']:.4f}, train {rows[-1]['train_s']:.1f}s")
    return rows


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch intra-op threads set to ``threads`` inside the block and restored after it (None or 0: unchanged)."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(old)
