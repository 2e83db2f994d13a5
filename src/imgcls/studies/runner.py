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
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgcls.config import Config, ConfigError, build_config, from_dict, to_dict, validate_config
from imgcls.engine.runs import RunRecord, load_run
from imgcls.plotting import plot_curves, pyplot, save_figure
from imgcls.studies.definitions import CKPT_REF, DATASETS, StudyDefinition, Variant, get_study

#: config keys that do not change what is trained (ignored when looking for a finished run to reuse)
_INCIDENTAL = {"run": ("dir", "name", "progress", "tracker", "report", "resume", "log_interval"), "": ("preset",)}


@dataclass(frozen=True)
class MetricInfo:
    """How to show and rank one metric.

    Attributes:
        label: human name.
        higher: True if higher is better, False if lower is, None if it is not ranked (parameter counts).
        percent: shown in percent (differences in percentage points).
    """

    label: str
    higher: bool | None
    percent: bool = False


METRICS: dict[str, MetricInfo] = {
    "test_acc": MetricInfo("test accuracy", True, True),
    "best_val_acc": MetricInfo("best val accuracy", True, True),
    "final_val_acc": MetricInfo("final val accuracy", True, True),
    "ece": MetricInfo("ECE", False, True),
    "nll": MetricInfo("test NLL", False),
    "f1_macro": MetricInfo("macro F1", True, True),
    "min_class_acc": MetricInfo("worst-class accuracy", True, True),
    "train_s": MetricInfo("train time (s)", False),
    "total_s": MetricInfo("wall time (s)", False),
    "images_per_s": MetricInfo("train images/s", True),
    "epochs_run": MetricInfo("epochs run", None),
    "params": MetricInfo("parameters", None),
    "trainable_params": MetricInfo("trainable parameters", None),
}

CSV_FIELDS = ["study", "dataset", "variant", "seed", *METRICS, "test_n", "run_dir"]


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A file-name-safe version of a variant name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "variant"


def substitute_refs(overrides: Sequence[str], ckpts: dict[str, str]) -> list[str]:
    """Replace ``{ckpt:NAME}`` by the path in ``ckpts[NAME]``.

    Raises:
        KeyError: a referenced variant has no checkpoint in ``ckpts``.
    """
    return [CKPT_REF.sub(lambda m: ckpts[m.group(1)], o) for o in overrides]


def variant_overrides(study: StudyDefinition, variant: Variant, dataset: str, *, seed: int,
                      extra: Sequence[str] = (), ckpts: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """Every override of one run, in order: dataset base, study, variant, ``extra`` (command line), ``run.seed``.

    ``ckpts`` maps variant names to checkpoint paths for ``{ckpt:NAME}``; without it the references are left as
    they are (fine for display).
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown study dataset '{dataset}'. Valid: {', '.join(DATASETS)}")
    overrides = [*DATASETS[dataset].overrides, *study.overrides_for(variant, dataset), *extra, f"run.seed={seed}"]
    return substitute_refs(overrides, ckpts) if ckpts is not None else overrides


def variant_config(study: StudyDefinition, variant: Variant, dataset: str, *, seed: int = 0,
                   extra: Sequence[str] = (), ckpts: dict[str, str] | None = None) -> Config:  # fmt: skip
    """The config of one run (see :func:`variant_overrides`); references without a path get a placeholder."""
    refs = {name: f"<best checkpoint of '{name}'>" for name in variant.references()}
    refs.update(ckpts or {})
    overrides = variant_overrides(study, variant, dataset, seed=seed, extra=extra, ckpts=refs)
    return build_config(DATASETS[dataset].preset, overrides)


def _normalized(tree: dict[str, Any]) -> dict[str, Any]:
    tree = json.loads(json.dumps(tree))  # deep copy, tuples -> lists
    for section, keys in _INCIDENTAL.items():
        node = tree.get(section, {}) if section else tree
        for k in keys:
            node.pop(k, None)
    return tree


def find_finished_run(runs_dir: Path, cfg: Config) -> Path | None:
    """A finished run (``summary.json`` present) in ``runs_dir`` whose config equals ``cfg`` up to incidental keys
    (and up to keys added to the config tree since, which take their default values)."""
    if not runs_dir.is_dir():
        return None
    want = _normalized(to_dict(cfg))
    for d in sorted(runs_dir.iterdir()):
        if not ((d / "summary.json").is_file() and (d / "config.yaml").is_file()):
            continue
        try:  # through from_dict: keys added to the config tree since that run get their defaults
            have = _normalized(to_dict(from_dict(yaml.safe_load((d / "config.yaml").read_text()) or {})))
        except (yaml.YAMLError, ConfigError):
            continue
        if have == want:
            return d
    return None


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainedRun:
    """A finished training run (trained now or reused)."""

    run_dir: Path
    record: RunRecord
    reused: bool

    @property
    def best_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"


@dataclass
class StudyResult:
    """What :func:`run_study` produced.

    Attributes:
        study: the definition.
        dataset: the dataset the study ran on.
        out_dir: the output folder.
        rows: one dict per variant x seed (the ``study.csv`` rows).
        summary: per variant: metric -> {mean, std, n}.
        reading: the generated reading (Markdown).
        files: the files written (name -> path).
        trained: runs trained by this call; reused: runs reused from an earlier call.
    """

    study: StudyDefinition
    dataset: str
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    reading: str
    files: dict[str, Path] = field(default_factory=dict)
    trained: int = 0
    reused: int = 0


class _Runner:
    def __init__(self, study: StudyDefinition, dataset: str, out: Path, extra: Sequence[str], fresh: bool,
                 train_fn: Callable[..., Any] | None, log: Callable[[str], None]) -> None:  # fmt: skip
        self.study, self.dataset, self.out, self.extra = study, dataset, out, list(extra)
        self.runs_dir = out / "runs"
        self.fresh = fresh
        self.train_fn = train_fn
        self.log = log
        self.cache: dict[str, TrainedRun] = {}  # normalised config json -> run
        self.trained = self.reused = 0

    # -- one training run ------------------------------------------------------------------------------------------
    def train(self, cfg: Config, label: str) -> TrainedRun:
        from imgcls.engine.train import train

        key = json.dumps(_normalized(to_dict(cfg)), sort_keys=True)
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
            result = (self.train_fn or train)(cfg)
            run = TrainedRun(Path(result.run_dir), load_run(result.run_dir), reused=False)
            self.trained += 1
        self.cache[key] = run
        return run

    def init_file(self, cfg: Config, init_seed: int) -> Path:
        """A random-init state dict for ``cfg``'s model drawn with ``init_seed`` (ensemble members)."""
        import torch

        from imgcls.data.build import build_splits
        from imgcls.engine.build import build_model_for

        model_key = json.dumps({"model": to_dict(cfg)["model"], "data": to_dict(cfg)["data"]}, sort_keys=True)
        digest = hashlib.sha1(model_key.encode()).hexdigest()[:10]
        path = self.out / "inits" / f"{slug(cfg.model.name)}-{digest}-seed{init_seed}.pt"
        if path.is_file():
            return path
        splits = build_splits(cfg)
        native = splits.train.source.image_size
        torch.manual_seed(init_seed)
        model = build_model_for(cfg, splits.num_classes, cfg.data.in_chans or splits.in_chans,
                                cfg.data.image_size or (native[0] if native else None))  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        return path

    # -- one variant x seed ----------------------------------------------------------------------------------------
    def members(self, variant: Variant, seed: int, ckpts: dict[str, str]) -> list[TrainedRun]:
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


def _evaluate(runs: list[TrainedRun], variant: Variant) -> dict[str, Any]:
    from imgcls.evaluate.run_eval import run_eval

    first = runs[0]
    out = first.run_dir / f"eval-{slug(variant.name)}"
    _, metrics = run_eval(first.best_ckpt, split="test", tta=variant.tta,
                          ensemble=[str(r.best_ckpt) for r in runs[1:]], report=False, quiet=True,
                          out_dir=out)  # fmt: skip
    return metrics


def row_for(study: StudyDefinition, dataset: str, variant: Variant, seed: int, runs: list[TrainedRun],
            metrics: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One ``study.csv`` row from the member runs and the test-set metrics."""
    first = runs[0].record
    val_acc = first.column("val_acc")
    per_class = metrics.get("per_class_accuracy") or {}
    seconds = [sum(r.record.column("seconds")) for r in runs]
    ips = first.column("images_per_s")
    s = first.summary
    return {
        "study": study.name, "dataset": dataset, "variant": variant.name, "seed": seed,
        "test_acc": metrics.get("accuracy", s.get("test_acc")), "best_val_acc": max(val_acc) if val_acc else None,
        "final_val_acc": val_acc[-1] if val_acc else None, "ece": metrics.get("ece"), "nll": metrics.get("nll"),
        "f1_macro": metrics.get("f1_macro"), "min_class_acc": min(per_class.values()) if per_class else None,
        "train_s": sum(seconds), "total_s": sum(float(r.record.summary.get("seconds") or 0.0) for r in runs),
        "images_per_s": statistics.fmean(ips) if ips else None, "epochs_run": s.get("epochs_run", len(first.metrics)),
        "params": sum(int(r.record.summary.get("params") or 0) for r in runs),
        "trainable_params": sum(int(r.record.summary.get("trainable_params") or 0) for r in runs),
        "test_n": metrics.get("num_samples"), "run_dir": str(runs[0].run_dir),
    }  # fmt: skip


def run_study(
    name: str | StudyDefinition,
    *,
    dataset: str = "digits",
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
        dataset: ``digits`` or ``cifar10`` (a base config from :data:`~imgcls.studies.definitions.DATASETS`).
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
        A :class:`StudyResult`.

    Raises:
        ConfigError: a bad override, dataset or study name (before any training).
    """
    import torch

    try:
        study = name if isinstance(name, StudyDefinition) else get_study(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    extra = [*overrides, *([f"training.epochs={epochs}"] if epochs is not None else [])]
    n_seeds = seeds if seeds is not None else study.seeds
    if n_seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    out = Path(out_dir) if out_dir else Path(runs_dir) / "studies" / f"{study.name}-{dataset}"
    for v in study.variants:  # every config must be valid before the first run starts
        validate_config(variant_config(study, v, dataset, extra=extra))

    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    runner = _Runner(study, dataset, out, extra, fresh, train_fn, log)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        total = n_seeds * len(study.variants)
        for seed in range(n_seeds):
            done: dict[str, list[TrainedRun]] = {}

            def runs_of(v: Variant, seed: int = seed, done: dict[str, list[TrainedRun]] = done) -> list[TrainedRun]:
                if v.name not in done:
                    for ref in v.references():  # teachers first
                        runs_of(study.variant(ref))
                    ckpts = {ref: str(done[ref][0].best_ckpt) for ref in v.references()}
                    done[v.name] = runner.members(v, seed, ckpts)
                return done[v.name]

            for v in study.variants:
                log(f"[{len(rows) + 1}/{total}] study {study.name} ({dataset}): {v.name}, seed {seed}")
                runs = runs_of(v)
                metrics = _evaluate(runs, v)
                rows.append(row_for(study, dataset, v, seed, runs, metrics))
                log(f"  test accuracy {rows[-1]['test_acc']:.4f}, train {rows[-1]['train_s']:.1f}s")
    finally:
        if threads:
            torch.set_num_threads(old_threads)
    summary = aggregate(rows, study.names)
    reading = make_reading(study, summary, rows)
    result = StudyResult(study=study, dataset=dataset, out_dir=out, rows=rows, summary=summary, reading=reading,
                         trained=runner.trained, reused=runner.reused)  # fmt: skip
    result.files = write_outputs(result, extra=extra, n_seeds=n_seeds, seconds=time.perf_counter() - t0)
    log(f"study {study.name} ({dataset}): {runner.trained} runs trained, {runner.reused} reused; "
        f"report: {result.files['markdown']}")  # fmt: skip
    return result


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and the reading
# --------------------------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
            "n": len(vals)}  # fmt: skip


def aggregate(rows: list[dict[str, Any]], order: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant (in ``order``) and metric: mean, sample std (NaN for one seed) and count."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in order:
        mine = [r for r in rows if r["variant"] == name]
        if mine:
            out[name] = {m: _stats([r.get(m) for r in mine]) for m in METRICS}
            out[name]["test_n"] = _stats([r.get("test_n") for r in mine])
    return out


def fmt_value(metric: str, value: float | None, std: float | None = None) -> str:
    """``97.2% ± 0.4`` for percentages, ``12.3 ± 0.5`` for times, ``1.23M`` for parameter counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    info = METRICS.get(metric, MetricInfo(metric, None))
    has_std = std is not None and not math.isnan(std)
    if info.percent:
        return f"{100 * value:.1f}%" + (f" ± {100 * std:.1f}" if has_std else "")
    if metric in ("params", "trainable_params"):
        return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"
    if metric == "epochs_run":
        return f"{value:.1f}".rstrip("0").rstrip(".") + (f" ± {std:.1f}" if has_std else "")
    if metric in ("train_s", "total_s"):
        digits = 1
    elif metric == "images_per_s":
        digits = 0
    else:
        digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if has_std else "")


def fmt_gap(metric: str, gap: float) -> str:
    """A difference: percentage points for percentages."""
    info = METRICS.get(metric, MetricInfo(metric, None))
    if info.percent:
        return f"{100 * gap:+.1f} pts"
    digits = 1 if metric in ("train_s", "total_s", "images_per_s") or abs(gap) >= 10 else 3
    return f"{gap:+.{digits}f}"


def _binomial_floor(metric: str, p: float, n_test: float | None, n_seeds: int) -> float | None:
    """2 binomial standard errors of a mean of ``n_seeds`` accuracies each measured on ``n_test`` images."""
    if metric not in ("test_acc", "min_class_acc", "f1_macro") or not n_test or math.isnan(n_test) or math.isnan(p):
        return None
    if metric == "min_class_acc":
        n_test = n_test / 10  # roughly one class's share of a 10-class test set
    return 2 * math.sqrt(max(p * (1 - p), 1e-4) / (n_test * max(1, n_seeds)))


def within_noise(metric: str, a: dict[str, float], b: dict[str, float], n_test: float | None = None
                 ) -> tuple[bool | None, float | None, str]:  # fmt: skip
    """Whether the gap between two variants' means is below their noise level.

    The noise level is 2 x the pooled standard deviation of the seeds, sqrt((sd_a^2 + sd_b^2) / 2), when both
    variants have at least two seeds. Two or three seeds can agree by chance (an accuracy on 360 images moves in
    steps of 0.28 points), so for accuracy-like metrics it is never taken below the test-set sampling floor: 2
    binomial standard errors of a mean of n accuracies measured on ``n_test`` images each. With one seed that floor
    is the only estimate; for other metrics with one seed the noise is unknown.

    Returns:
        (within noise? (None if unknown), the noise level, where it comes from).
    """
    gap = abs(a["mean"] - b["mean"])
    n = int(min(a["n"], b["n"]))
    floor = _binomial_floor(metric, (a["mean"] + b["mean"]) / 2, n_test, n)
    noise, source = None, ""
    if n >= 2 and not (math.isnan(a["std"]) or math.isnan(b["std"])):
        noise, source = 2 * math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2), "2 std of the seeds"
        if floor is not None and floor > noise:
            noise, source = floor, f"test-set sampling floor, 2 binomial s.e. on {int(n_test)} images x {n} seeds"
    elif floor is not None:
        noise, source = floor, f"2 binomial standard errors on {int(n_test)} test images (one seed)"
    if noise is None:
        return None, None, ""
    return gap < noise, noise, source


def _rank(summary: dict[str, dict[str, dict[str, float]]], names: Sequence[str], metric: str) -> list[str]:
    info = METRICS.get(metric, MetricInfo(metric, True))
    have = [n for n in names if n in summary and summary[n][metric]["n"] > 0]
    return sorted(have, key=lambda n: summary[n][metric]["mean"], reverse=bool(info.higher))


def make_reading(study: StudyDefinition, summary: dict[str, dict[str, dict[str, float]]],
                 rows: list[dict[str, Any]]) -> str:  # fmt: skip
    """A short Markdown reading of the results: the winner, the gap to the runner-up, noise, the baseline
    comparison, the secondary metrics and what to expect."""
    metric = study.metric
    info = METRICS.get(metric, MetricInfo(metric, True))
    ranked = _rank(summary, study.ranked, metric)
    if not ranked:
        return "No results."
    n_seeds = int(max(summary[n][metric]["n"] for n in ranked))
    n_test = statistics.fmean([r["test_n"] for r in rows if r.get("test_n")] or [0]) or None
    seeds_text = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    lines = []
    best = ranked[0]
    b = summary[best][metric]
    if len(ranked) == 1:
        lines.append(f"Only **{best}** ran: {info.label} {fmt_value(metric, b['mean'], b['std'])} ({seeds_text}).")
    else:
        second = ranked[1]
        s = summary[second][metric]
        gap = b["mean"] - s["mean"]
        within, noise, source = within_noise(metric, b, s, n_test)
        better = "higher" if info.higher else "lower"
        if abs(gap) < 1e-12:
            tied = [n for n in ranked if abs(summary[n][metric]["mean"] - b["mean"]) < 1e-12]
            sent = (f"{', '.join(f'**{n}**' for n in tied)} tie on {info.label} at "
                    f"{fmt_value(metric, b['mean'])} ({seeds_text}).")  # fmt: skip
        else:
            sent = (f"**{best}** has the best {info.label} ({better} is better): "
                    f"{fmt_value(metric, b['mean'], b['std'])} over {seeds_text}, {fmt_gap(metric, gap)} vs the "
                    f"runner-up **{second}** ({fmt_value(metric, s['mean'], s['std'])}).")  # fmt: skip
        if abs(gap) < 1e-12:
            pass
        elif within is None:
            sent += " With one seed there is no noise estimate: rerun with `--seeds 3` before trusting a small gap."
        elif within:
            sent += (f" That gap is **within noise** ({source}: {fmt_gap(metric, noise).lstrip('+')}): at this budget "
                     "the two are not distinguishable.")  # fmt: skip
        else:
            sent += f" The gap is larger than the noise ({source}: {fmt_gap(metric, noise).lstrip('+')})."
        lines.append(sent)
        worst = ranked[-1]
        if worst != second:
            w = summary[worst][metric]
            lines.append(f"Last: **{worst}** ({fmt_value(metric, w['mean'], w['std'])}, "
                         f"{fmt_gap(metric, w['mean'] - b['mean'])} vs the best).")  # fmt: skip
        base = study.ranked[0]
        if base in summary and len(ranked) > 2:
            parts = []
            for n in study.ranked[1:]:
                if n not in summary:
                    continue
                d = summary[n][metric]["mean"] - summary[base][metric]["mean"]
                w_in, _, _ = within_noise(metric, summary[n][metric], summary[base][metric], n_test)
                tag = "" if w_in is None else (" (within noise)" if w_in else " (beyond noise)")
                parts.append(f"{n} {fmt_gap(metric, d)}{tag}")
            lines.append(f"Against the baseline **{base}**: " + "; ".join(parts) + ".")
    for m in study.also:
        mi = METRICS.get(m, MetricInfo(m, None))
        names = [n for n in study.ranked if n in summary and summary[n][m]["n"] > 0]
        if not names:
            continue
        if mi.higher is None:
            lines.append(f"{mi.label.capitalize()}: " + ", ".join(f"{n} {fmt_value(m, summary[n][m]['mean'])}"
                                                                  for n in names) + ".")  # fmt: skip
            continue
        order = _rank(summary, names, m)
        top, bottom = order[0], order[-1]
        if top == bottom:
            continue
        ratio = ""
        if m in ("train_s", "total_s", "images_per_s") and summary[top][m]["mean"] > 0:
            ratio = f", {max(summary[bottom][m]['mean'], summary[top][m]['mean']) / max(1e-9, min(summary[bottom][m]['mean'], summary[top][m]['mean'])):.2f}x"  # noqa: E501
        lines.append(f"{mi.label.capitalize()}: best **{top}** ({fmt_value(m, summary[top][m]['mean'])}), worst "
                     f"**{bottom}** ({fmt_value(m, summary[bottom][m]['mean'])}{ratio}).")  # fmt: skip
    if study.expect:
        lines.append(f"What to expect: {study.expect}")
    return "\n\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


def results_table(study: StudyDefinition, summary: dict[str, dict[str, dict[str, float]]],
                  rows: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    """The Markdown table: variant, seeds, the deciding metric, its change vs the baseline, the other metrics."""
    metric = study.metric
    cols = [metric, *[m for m in ("test_acc", *study.also) if m != metric]]
    cols = list(dict.fromkeys(cols))
    n_test = None
    if rows:
        n_test = statistics.fmean([r["test_n"] for r in rows if r.get("test_n")] or [0]) or None
    header = ["variant", "seeds", *[METRICS[c].label if c in METRICS else c for c in cols[:1]], "vs baseline",
              *[METRICS[c].label if c in METRICS else c for c in cols[1:]]]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    base = study.names[0]
    for name in study.names:
        if name not in summary:
            continue
        s = summary[name]
        if name == base or base not in summary:
            delta = "-"
        else:
            d = s[metric]["mean"] - summary[base][metric]["mean"]
            w_in, _, _ = within_noise(metric, s[metric], summary[base][metric], n_test)
            delta = fmt_gap(metric, d) + ("" if w_in is None else " (noise)" if w_in else "")
        cells = [name, str(int(s[metric]["n"])), fmt_value(metric, s[metric]["mean"], s[metric]["std"]), delta,
                 *[fmt_value(c, s[c]["mean"], s[c]["std"]) for c in cols[1:]]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(study: StudyDefinition, summary: dict[str, dict[str, dict[str, float]]], rows: list[dict[str, Any]],
                 path: Path, dataset: str) -> Path:  # fmt: skip
    """Bars (or a sweep line) of the deciding metric with std error bars and the seeds as dots; a second panel for
    train time when the study reports it."""
    plt = pyplot()
    metric = study.metric
    ranked_also = [m for m in study.also if m != metric and METRICS.get(m, MetricInfo(m, None)).higher is not None]
    panels = [metric, *ranked_also[:1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    names = [n for n in study.names if n in summary]
    for ax, m in zip(axes[0], panels, strict=True):
        info = METRICS.get(m, MetricInfo(m, None))
        scale = 100.0 if info.percent else 1.0
        means = [summary[n][m]["mean"] * scale for n in names]
        stds = [0.0 if math.isnan(summary[n][m]["std"]) else summary[n][m]["std"] * scale for n in names]
        xs_sweep = {n: study.variant(n).x for n in names}
        if study.plot == "line" and all(x is not None for x in xs_sweep.values()):
            on_line = [n for n in names]
            xs = [xs_sweep[n] for n in on_line]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4)
            for n, x in zip(on_line, xs, strict=True):
                pts = [r[m] * scale for r in rows if r["variant"] == n and r.get(m) is not None]
                ax.scatter([x] * len(pts), pts, s=10, color="gray", alpha=0.6, zorder=3)
            if study.x_log:
                ax.set_xscale("log")
            ax.set_xlabel(study.x_label or "")
        else:
            pos = list(range(len(names)))
            ax.bar(pos, means, yerr=stds, capsize=4, color="#4c72b0", alpha=0.85)
            for i, n in enumerate(names):
                pts = [r[m] * scale for r in rows if r["variant"] == n and r.get(m) is not None]
                ax.scatter([i] * len(pts), pts, s=12, color="black", alpha=0.6, zorder=3)
            ax.set_xticks(pos)
            ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
            finite = [v for v in means if not math.isnan(v)]
            if finite and info.percent and m != "ece":
                lo = min(v - s for v, s in zip(means, stds, strict=True) if not math.isnan(v))
                hi = max(v + s for v, s in zip(means, stds, strict=True) if not math.isnan(v))
                ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1.0)), min(100.5, hi + 1.0))
        ax.set_ylabel(info.label + (" (%)" if info.percent else ""))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{study.title} ({dataset})\nmean ± std over seeds, dots = seeds", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_lr_curves(study: StudyDefinition, dataset: str, extra: Sequence[str], path: Path) -> Path | None:
    """Each variant's learning rate against the epoch (the schedule is a pure function of the step)."""
    try:
        from imgcls.engine.lr_tools import default_steps_per_epoch, schedule_lrs
    except ImportError:  # pragma: no cover - lr tools not available
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for v in study.variants:
        cfg = variant_config(study, v, dataset, extra=extra)
        spe = default_steps_per_epoch(cfg)
        lrs = schedule_lrs(cfg, spe)
        ax.plot([i / spe for i in range(len(lrs))], lrs, label=v.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{study.title}: learning-rate curves ({dataset})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_outputs(result: StudyResult, *, extra: Sequence[str], n_seeds: int, seconds: float) -> dict[str, Path]:
    """``study.csv``, ``study.json``, ``study.png``, ``curves.png``, ``lr.png`` (when asked) and ``study.md``."""
    study, out = result.study, result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["csv"] = out / "study.csv"
    with files["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in result.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    files["plot"] = plot_results(study, result.summary, result.rows, out / "study.png", result.dataset)
    seen: dict[str, list[str]] = {}
    for r in result.rows:
        if r["seed"] == 0:
            seen.setdefault(r["run_dir"], []).append(r["variant"])
    if seen:
        records = [load_run(d) for d in seen]
        curves = plot_curves([r.metrics for r in records], out / "curves.png",
                             labels=[", ".join(v) for v in seen.values()],
                             curves=(("val_acc", "val accuracy"), ("train_loss", "train loss")),
                             title=f"{study.title} ({result.dataset}, seed 0)")  # fmt: skip
        if curves is not None:
            files["curves"] = curves
    if study.lr_curves:
        lr = plot_lr_curves(study, result.dataset, extra, out / "lr.png")
        if lr is not None:
            files["lr"] = lr
    base = DATASETS[result.dataset]
    variants = "\n".join(
        f"- **{v.name}**: `{' '.join(study.overrides_for(v, result.dataset)) or '(study base)'}`"
        + (f", TTA {v.tta} views" if v.tta > 1 else "") + (f", ensemble of {v.ensemble}" if v.ensemble > 1 else "")
        for v in study.variants
    )  # fmt: skip
    cmd = " ".join(["imgcls study", study.name, f"--dataset {result.dataset}", f"--seeds {n_seeds}", *extra])
    images = "\n".join(f"![{k}]({p.name})" for k, p in files.items() if p.suffix == ".png")
    md = [
        f"# Study: {study.title} ({result.dataset})", "", study.shows, "",
        f"- base: {base.description}" + (f"; study overrides `{' '.join(study.base)}`" if study.base else ""),
        f"- seeds: {n_seeds} (each seed re-draws the split, the initialisation and the data order); "
        f"deciding metric: {METRICS.get(study.metric, MetricInfo(study.metric, None)).label}",
        f"- command: `{cmd}`; {result.trained} runs trained, {result.reused} reused, {seconds:.0f} s",
        f"- concept: [docs/concepts/{study.concept}.md](../../../docs/concepts/{study.concept}.md)", "",
        "## Variants", "", variants, "", "## Results", "", results_table(study, result.summary, result.rows), "",
        "`(noise)`: the change is below 2 standard deviations of the seeds (or, with one seed, of the test-set "
        "sampling error).", "", "## Reading", "", result.reading, "", images, "",
    ]  # fmt: skip
    files["markdown"] = out / "study.md"
    files["markdown"].write_text("\n".join(md))
    files["json"] = out / "study.json"
    files["json"].write_text(json.dumps({
        "study": study.name, "dataset": result.dataset, "seeds": n_seeds, "overrides": list(extra),
        "metric": study.metric, "summary": result.summary, "rows": result.rows, "reading": result.reading,
        "seconds": seconds, "trained": result.trained, "reused": result.reused,
    }, indent=2, default=str))  # fmt: skip
    return files


def print_result(result: StudyResult, file: Any = None) -> None:
    """The table and the reading on the console."""
    out = file or sys.stdout
    print(f"\n{result.study.title} ({result.dataset})\n", file=out)
    print(results_table(result.study, result.summary, result.rows), file=out)
    print("\n" + result.reading + "\n", file=out)
    print(f"files: {', '.join(str(p) for p in result.files.values())}", file=out)


def rewrite_report(out_dir: str | Path) -> StudyResult:
    """Recompute the summary and reading of a finished study from its ``study.json`` (no training, no evaluation)
    and rewrite ``study.md``, the plots and ``study.json`` - after a change to the report code."""
    out = Path(out_dir)
    j = json.loads((out / "study.json").read_text())
    study = get_study(j["study"])
    summary = aggregate(j["rows"], study.names)
    result = StudyResult(study=study, dataset=j["dataset"], out_dir=out, rows=j["rows"], summary=summary,
                         reading=make_reading(study, summary, j["rows"]), trained=j.get("trained", 0),
                         reused=j.get("reused", 0))  # fmt: skip
    result.files = write_outputs(result, extra=j.get("overrides", []), n_seeds=j["seeds"], seconds=j["seconds"])
    return result


def collect_markdown(study_dirs: Sequence[str | Path], *, heading_level: int = 2) -> str:
    """One Markdown section per study folder (its ``study.json``): setup, results table and reading, in registry
    order - the body of ``docs/studies.md``."""
    from imgcls.studies.definitions import list_studies

    loaded = []
    for d in study_dirs:
        path = Path(d) / "study.json"
        if path.is_file():
            loaded.append(json.loads(path.read_text()))
    order = {name: i for i, name in enumerate(list_studies())}
    loaded.sort(key=lambda j: (order.get(j["study"], len(order)), j["dataset"] != "digits", j["dataset"]))
    h = "#" * heading_level
    parts = []
    for j in loaded:
        study = get_study(j["study"])
        n_seeds = j["seeds"]
        summary = aggregate(j["rows"], study.names)  # recomputed: the report code may be newer than the results
        flags = " ".join(j.get("overrides", []))
        parts.append(
            f"{h} {study.name}" + ("" if j["dataset"] == "digits" else f" ({j['dataset']})") + "\n\n"
            f"{study.title}. {study.shows} Concept: [{study.concept}](concepts/{study.concept}.md).\n\n"
            f"Base: {DATASETS[j['dataset']].description}"
            + (
                f"; study overrides `{' '.join(study.base + study.per_dataset.get(j['dataset'], ()))}`"
                if study.base or study.per_dataset.get(j["dataset"])
                else ""
            )
            + f". Command: `imgcls study {study.name} {(flags + ' ') if flags else ''}--dataset {j['dataset']} "
            f"--seeds {n_seeds}` ({j['seconds'] / 60:.1f} min).\n\n"
            f"{results_table(study, summary, j['rows'])}\n\n{make_reading(study, summary, j['rows'])}\n"
        )
    return "\n".join(parts)
