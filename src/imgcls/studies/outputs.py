"""A study's files and text: ``study.csv``, ``study.json``, ``study.md`` (setup, table, reading, figures), the
console summary, and the Markdown of several finished studies (the body of ``docs/studies.md``)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imgcls
from imgcls.studies.definitions import DATASETS, StudyDefinition, get_study, list_studies
from imgcls.studies.metrics import CSV_FIELDS, fmt_gap, fmt_value, metric_info
from imgcls.studies.plots import plot_lr_curves, plot_results, plot_seed_curves
from imgcls.studies.reading import make_reading
from imgcls.studies.stats import Summary, aggregate, mean_test_n, within_noise


@dataclass
class StudyResult:
    """What :func:`~imgcls.studies.runner.run_study` produced.

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
    summary: Summary
    reading: str
    files: dict[str, Path] = field(default_factory=dict)
    trained: int = 0
    reused: int = 0


def results_table(study: StudyDefinition, summary: Summary, rows: list[dict[str, Any]] | None = None) -> str:
    """The Markdown table: variant, seeds, the deciding metric, its change vs the baseline, the other metrics."""
    metric = study.metric
    cols = list(dict.fromkeys([metric, *[m for m in ("test_acc", *study.also) if m != metric]]))
    n_test = mean_test_n(rows)
    labels = [metric_info(c).label for c in cols]
    header = ["variant", "seeds", labels[0], "vs baseline", *labels[1:]]
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
        cells = [
            name,
            str(int(s[metric]["n"])),
            fmt_value(metric, s[metric]["mean"], s[metric]["std"]),
            delta,
            *[fmt_value(c, s[c]["mean"], s[c]["std"]) for c in cols[1:]],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """``study.csv``: the :data:`~imgcls.studies.metrics.CSV_FIELDS` of every row (empty cells for None)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return path


#: the concept pages of a source checkout (src/imgcls/../../docs/concepts); absent when imgcls runs from a wheel
CONCEPTS_DIR = Path(imgcls.__file__).resolve().parents[2] / "docs" / "concepts"


def concept_link(concept: str, out_dir: Path) -> str:
    """A Markdown link from ``out_dir`` (a study's folder, wherever it is) to the concept page: relative when the
    page exists here (a source checkout), as its absolute file URI when no relative path leads there (another drive),
    and the page's name alone, unlinked, when imgcls runs without its docs (a dead link is worse than none)."""
    page = CONCEPTS_DIR / f"{concept}.md"
    label = f"docs/concepts/{concept}.md"
    if not page.is_file():
        return f"`{label}` (in the imgcls source repository)"
    try:
        target = Path(os.path.relpath(page, Path(out_dir).resolve())).as_posix()
    except ValueError:  # no relative path between two Windows drives
        target = page.as_uri()
    return f"[{label}]({target})"


def study_markdown(
    result: StudyResult, *, extra: Sequence[str], n_seeds: int, seconds: float, files: Mapping[str, Path]
) -> str:
    """``study.md``: what was run (base, seeds, command, concept), the variants, the table, the reading, and the
    PNG figures among ``files`` (name -> path)."""
    study = result.study
    variants = "\n".join(
        f"- **{v.name}**: `{' '.join(study.overrides_for(v, result.dataset)) or '(study base)'}`"
        + (f", TTA {v.tta} views" if v.tta > 1 else "")
        + (f", ensemble of {v.ensemble}" if v.ensemble > 1 else "")
        for v in study.variants
    )
    cmd = " ".join(["imgcls study", study.name, f"--dataset {result.dataset}", f"--seeds {n_seeds}", *extra])
    figures = "\n".join(f"![{k}]({p.name})" for k, p in files.items() if p.suffix == ".png")
    md = [
        f"# Study: {study.title} ({result.dataset})",
        "",
        study.shows,
        "",
        f"- base: {DATASETS[result.dataset].description}"
        + (f"; study overrides `{' '.join(study.base)}`" if study.base else ""),
        f"- seeds: {n_seeds} (each seed re-draws the split, the initialisation and the data order); "
        f"deciding metric: {metric_info(study.metric).label}",
        f"- command: `{cmd}`; {result.trained} runs trained, {result.reused} reused, {seconds:.0f} s",
        f"- concept: {concept_link(study.concept, result.out_dir)}",
        "",
        "## Variants",
        "",
        variants,
        "",
        "## Results",
        "",
        results_table(study, result.summary, result.rows),
        "",
        "`(noise)`: the change is below 2 standard deviations of the seeds (or, with one seed, of the test-set "
        "sampling error).",
        "",
        "## Reading",
        "",
        result.reading,
        "",
        figures,
        "",
    ]
    return "\n".join(md)


def write_json(result: StudyResult, path: Path, *, extra: Sequence[str], n_seeds: int, seconds: float) -> Path:
    """``study.json``: everything :func:`~imgcls.studies.runner.rewrite_report` needs to rebuild the report."""
    path.write_text(
        json.dumps(
            {
                "study": result.study.name,
                "dataset": result.dataset,
                "seeds": n_seeds,
                "overrides": list(extra),
                "metric": result.study.metric,
                "summary": result.summary,
                "rows": result.rows,
                "reading": result.reading,
                "seconds": seconds,
                "trained": result.trained,
                "reused": result.reused,
            },
            indent=2,
            default=str,
        )
    )
    return path


def write_outputs(result: StudyResult, *, extra: Sequence[str], n_seeds: int, seconds: float) -> dict[str, Path]:
    """``study.csv``, ``study.json``, ``study.png``, ``curves.png``, ``lr.png`` (when asked) and ``study.md``."""
    study, out = result.study, result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"csv": write_csv(result.rows, out / "study.csv")}
    files["plot"] = plot_results(study, result.summary, result.rows, out / "study.png", result.dataset)
    curves = plot_seed_curves(study, result.dataset, result.rows, out / "curves.png")
    if curves is not None:
        files["curves"] = curves
    if study.lr_curves:
        files["lr"] = plot_lr_curves(study, result.dataset, extra, out / "lr.png")
    md = study_markdown(result, extra=extra, n_seeds=n_seeds, seconds=seconds, files=files)
    files["markdown"] = out / "study.md"
    files["markdown"].write_text(md)
    files["json"] = write_json(result, out / "study.json", extra=extra, n_seeds=n_seeds, seconds=seconds)
    return files


def print_result(result: StudyResult, file: Any = None) -> None:
    """The table and the reading on the console."""
    out = file or sys.stdout
    print(f"\n{result.study.title} ({result.dataset})\n", file=out)
    print(results_table(result.study, result.summary, result.rows), file=out)
    print("\n" + result.reading + "\n", file=out)
    print(f"files: {', '.join(str(p) for p in result.files.values())}", file=out)


def _public_override(text: str) -> str:
    """An override as docs show it: a ``data.root`` of this machine becomes ``data.root=/path/to/<file name>``."""
    key, _, value = text.partition("=")
    return f"{key}=/path/to/{Path(value).name}" if key == "data.root" and value else text


def _collected_section(j: dict[str, Any], heading: str) -> str:
    """One finished study (its ``study.json``) as a Markdown section: setup, table, reading."""
    study = get_study(j["study"])
    dataset = j["dataset"]
    summary = aggregate(j["rows"], study.names)  # recomputed: the report code may be newer than the results
    flags = " ".join(_public_override(o) for o in j.get("overrides", []))
    study_overrides = study.base + study.per_dataset.get(dataset, ())
    return (
        f"{heading} {study.name}" + ("" if dataset == "digits" else f" ({dataset})") + "\n\n"
        f"{study.title}. {study.shows} Concept: [{study.concept}](concepts/{study.concept}.md).\n\n"
        f"Base: {DATASETS[dataset].description}"
        + (f"; study overrides `{' '.join(study_overrides)}`" if study_overrides else "")
        + f". Command: `imgcls study {study.name} {(flags + ' ') if flags else ''}--dataset {dataset} "
        f"--seeds {j['seeds']}` ({j['seconds'] / 60:.1f} min).\n\n"
        f"{results_table(study, summary, j['rows'])}\n\n{make_reading(study, summary, j['rows'])}\n"
    )


def collect_markdown(study_dirs: Sequence[str | Path], *, heading_level: int = 2) -> str:
    """One Markdown section per study folder (its ``study.json``): setup, results table and reading, in registry
    order - the body of ``docs/studies.md``. A ``data.root=`` override is shown as ``data.root=/path/to/<file>``
    (the docs name no folder of the machine that ran the study)."""
    loaded = []
    for d in study_dirs:
        path = Path(d) / "study.json"
        if path.is_file():
            loaded.append(json.loads(path.read_text()))
    order = {name: i for i, name in enumerate(list_studies())}
    loaded.sort(key=lambda j: (order.get(j["study"], len(order)), j["dataset"] != "digits", j["dataset"]))
    return "\n".join(_collected_section(j, "#" * heading_level) for j in loaded)
