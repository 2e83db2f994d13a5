"""Run a study: every variant x seed through :func:`~imgcls.engine.train.train`, evaluate, aggregate, report.

For each seed and variant the runner builds the config (dataset base, study overrides, variant overrides, the
command line's overrides, ``run.seed``), trains it in ``<out>/runs/`` - or reuses a finished run there with the same
config, so an interrupted study continues where it stopped and variants that differ only at test time (TTA) share
one training run - and evaluates the best checkpoint on the test split with
:func:`~imgcls.evaluate.run_eval.run_eval` (TTA views and ensemble members as the variant asks). It writes:

- ``study.csv``: one row per variant x seed (test accuracy, ECE, NLL, macro F1, worst-class accuracy, best val
  accuracy, epochs, train time, images/s, parameters, run folder);
- ``study.md``: the mean +- std table and a generated reading (which variant won, by how much, over how many seeds,
  and whether the gap is within noise: below 2 standard deviations of the seeds, or of the test-set sampling error
  when there is one seed);
- ``study.png`` (bars or a sweep line with error bars), ``curves.png`` (validation curves) and, for studies that ask,
  ``lr.png`` (each variant's learning-rate schedule); ``study.json`` with everything.

Seeds re-draw the train/val/test split as well as the initialisation and data order (``run.seed`` drives all
three), so the spread over seeds is the honest run-to-run noise. Ensemble members are the exception: they must share
the split (a member trained on another split would have seen the test images), so they share ``run.seed`` and differ
in their initial weights, drawn with their own seed and passed as ``model.pretrained=<file>``.

This module wires the steps, each in its own module: :mod:`~imgcls.studies.plan` (configs, ``{ckpt:NAME}``
references, finding a finished run to reuse), :mod:`~imgcls.studies.execute` (training and evaluating the runs),
:mod:`~imgcls.studies.stats` (mean, std, noise floors, ranking), :mod:`~imgcls.studies.reading` (the prose),
:mod:`~imgcls.studies.plots` and :mod:`~imgcls.studies.outputs` (files, console, ``--collect``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imgcls.config import ConfigError
from imgcls.engine.build import check_config
from imgcls.studies.definitions import StudyDefinition, get_study
from imgcls.studies.execute import StudyRuns, run_all, torch_threads
from imgcls.studies.outputs import StudyResult, collect_markdown, print_result, write_outputs
from imgcls.studies.plan import variant_config
from imgcls.studies.reading import make_reading
from imgcls.studies.stats import aggregate

__all__ = ["StudyResult", "collect_markdown", "print_result", "rewrite_report", "run_study"]


def run_study(
    name: str | StudyDefinition,
    *,
    dataset: str | None = None,
    epochs: int | None = None,
    seeds: int | None = None,
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    runs_dir: str | Path = "runs",
    fresh: bool = False,
    threads: int | None = None,
    train_fn: Callable[..., Any] | None = None,
    quiet: bool = False,
) -> StudyResult:
    """Run one study end to end and write its table, plots and reading.

    Args:
        name: a registered study (see :func:`imgcls.studies.definitions.list_studies`) or a definition.
        dataset: a base config of :data:`~imgcls.studies.definitions.DATASETS` the study runs on (``digits``,
            ``cifar10``, ``digit_pairs``); None: the study's first (``StudyDefinition.datasets``).
        epochs: shorthand for ``training.epochs=N``.
        seeds: number of seeds (default: the study's); seeds are 0..N-1.
        out_dir: default ``<runs_dir>/studies/<study>-<dataset>``.
        overrides: extra ``key=value`` overrides for every run (applied after the study's).
        runs_dir: the runs folder for the default ``out_dir``.
        fresh: retrain even when a finished run with the same config exists in ``<out>/runs``.
        threads: torch intra-op threads during the study (restored afterwards); None leaves the setting alone.
        train_fn: substitute for :func:`imgcls.engine.train.train` (tests).
        quiet: no progress lines.

    Returns:
        A :class:`~imgcls.studies.outputs.StudyResult`.

    Raises:
        ConfigError: a bad override, dataset or study name (before any training).
    """
    try:
        study = name if isinstance(name, StudyDefinition) else get_study(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    dataset = dataset or study.datasets[0]
    if dataset not in study.datasets:
        raise ConfigError(f"study '{study.name}' runs on {', '.join(study.datasets)}, not --dataset {dataset}")
    extra = [*overrides, *([f"training.epochs={epochs}"] if epochs is not None else [])]
    if threads:  # every run's own thread choice (run.threads; incidental: it does not change what is trained)
        extra.append(f"run.threads={threads}")
    n_seeds = seeds if seeds is not None else study.seeds
    if n_seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    out = Path(out_dir) if out_dir else Path(runs_dir) / "studies" / f"{study.name}-{dataset}"
    for v in study.variants:  # every config must be valid before the first run starts
        check_config(variant_config(study, v, dataset, extra=extra))

    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    runs = StudyRuns(study, dataset, out, extra, fresh, train_fn, log)
    t0 = time.perf_counter()
    with torch_threads(threads):
        rows = run_all(runs, n_seeds)
    summary = aggregate(rows, study.names)
    result = StudyResult(
        study=study,
        dataset=dataset,
        out_dir=out,
        rows=rows,
        summary=summary,
        reading=make_reading(study, summary, rows),
        trained=runs.trained,
        reused=runs.reused,
    )
    result.files = write_outputs(result, extra=extra, n_seeds=n_seeds, seconds=time.perf_counter() - t0)
    log(
        f"study {study.name} ({dataset}): {runs.trained} runs trained, {runs.reused} reused; "
        f"report: {result.files['markdown']}"
    )
    return result


def rewrite_report(out_dir: str | Path) -> StudyResult:
    """Recompute the summary and reading of a finished study from its ``study.json`` (no training, no evaluation)
    and rewrite ``study.md``, the plots and ``study.json`` - after a change to the report code."""
    out = Path(out_dir)
    j = json.loads((out / "study.json").read_text())
    study = get_study(j["study"])
    summary = aggregate(j["rows"], study.names)
    result = StudyResult(
        study=study,
        dataset=j["dataset"],
        out_dir=out,
        rows=j["rows"],
        summary=summary,
        reading=make_reading(study, summary, j["rows"]),
        trained=j.get("trained", 0),
        reused=j.get("reused", 0),
    )
    result.files = write_outputs(result, extra=j.get("overrides", []), n_seeds=j["seeds"], seconds=j["seconds"])
    return result
