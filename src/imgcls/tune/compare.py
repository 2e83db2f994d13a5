"""``imgcls compare``: put run folders side by side.

Each run folder holds ``config.yaml``, ``metrics.csv`` and ``summary.json`` (see :func:`imgcls.engine.train.train`).
The comparison flattens every run's config to dotted keys and keeps only the keys whose values differ between the
runs (the rest is shared and would hide the signal), adds the best and final metrics, time and parameter count, and
overlays the training curves. Outputs: ``compare.md``, ``compare.csv``, ``curves.png`` and a self-contained
``index.html`` (the PNG embedded) in the output folder.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from imgcls.engine.runs import RunFolderError, RunRecord, find_runs, load_run
from imgcls.plotting import plot_curves, run_colors

#: config keys that say where or how a run was launched, not what it trained; they always differ between runs and
#: are left out of the differences table unless ``keep_all`` is set
INCIDENTAL_KEYS = (
    "run.dir",
    "run.resume",
    "run.progress",
    "run.progress_interval",
    "run.log_interval",
    "run.tracker",
    "run.threads",
)

#: curves of ``curves.png`` (metrics.csv column, axis title), drawn by :func:`imgcls.plotting.plot_curves`;
#: missing or empty columns are skipped
CURVES: tuple[tuple[str, str], ...] = (
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("val_acc", "val accuracy"),
    ("lr", "learning rate"),
)


class CompareError(RunFolderError):
    """Nothing to compare, or a folder that is not a run folder."""


# --------------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------------


def config_differences(configs: Sequence[dict[str, Any]], *, keep_all: bool = False) -> list[str]:
    """Sorted dotted keys whose value is not the same in every config (a key missing from some config counts as
    different). ``keep_all=False`` leaves out :data:`INCIDENTAL_KEYS`."""
    keys = sorted(set().union(*(c.keys() for c in configs))) if configs else []
    missing = object()
    out = []
    for key in keys:
        if not keep_all and key in INCIDENTAL_KEYS:
            continue
        values = [c.get(key, missing) for c in configs]
        if any(v != values[0] for v in values[1:]):
            out.append(key)
    return out


def run_metrics(run: RunRecord) -> dict[str, Any]:
    """Best and final metrics of a run: best/final val accuracy, val loss, test accuracy, epochs, time, params."""
    val_acc = run.column("val_acc")
    val_loss = run.column("val_loss")
    epoch_seconds = run.column("seconds")
    s = run.summary
    return {
        "best_val_acc": max(val_acc) if val_acc else None,
        "final_val_acc": val_acc[-1] if val_acc else None,
        "best_val_loss": min(val_loss) if val_loss else None,
        "test_acc": s.get("test_acc"),
        "epochs": len(run.metrics),
        "train_s": sum(epoch_seconds) if epoch_seconds else None,
        "total_s": s.get("seconds"),
        "params": s.get("params"),
        "status": "finished" if run.finished else "unfinished",
    }


METRIC_COLUMNS = ("best_val_acc", "final_val_acc", "test_acc", "epochs", "train_s", "total_s", "params", "status")


def cell_text(value: Any) -> str:
    """A value as the tables show it: ``-`` for None, 4 significant digits, thousands separators."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


@dataclass
class Comparison:
    """The comparison table: one row per run, the differing config keys, then the metrics."""

    runs: list[RunRecord]
    diff_keys: list[str]
    rows: list[dict[str, Any]]

    @property
    def columns(self) -> list[str]:
        return ["run", *self.diff_keys, *METRIC_COLUMNS]

    def to_markdown(self) -> str:
        header = "| " + " | ".join(self.columns) + " |"
        sep = "|" + "|".join("---" if c == "run" or c in self.diff_keys else "---:" for c in self.columns) + "|"
        body = [
            "| " + " | ".join(cell_text(r.get(c)).replace("|", "\\|") for c in self.columns) + " |" for r in self.rows
        ]
        return "\n".join([header, sep, *body])


def compare_runs(paths: Iterable[str | Path], *, keep_all: bool = False) -> Comparison:
    """Read the run folders and build the comparison (differences only).

    Args:
        paths: run folders (at least one).
        keep_all: also show :data:`INCIDENTAL_KEYS` when they differ.

    Raises:
        CompareError: no run folders, or a folder that is not a run.
    """
    try:
        runs = [load_run(p) for p in paths]
    except RunFolderError as e:  # the engine's error, as this command's own
        raise CompareError(str(e)) from None
    if not runs:
        raise CompareError("no runs to compare")
    diff = config_differences([r.config for r in runs], keep_all=keep_all)
    rows = [{"run": r.name, **{k: r.config.get(k) for k in diff}, **run_metrics(r)} for r in runs]
    return Comparison(runs=runs, diff_keys=diff, rows=rows)


# --------------------------------------------------------------------------------------------------------------------
# Curves and the HTML page
# --------------------------------------------------------------------------------------------------------------------


def png_data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:`` URI (for self-contained HTML)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], colors: Sequence[str]) -> str:
    """A scrolling HTML table: the header row and the run column stay in view, each run's colour (its line in
    ``curves.png``) beside its name, long text cut with an ellipsis (the full value on hover).

    Args:
        rows: one dict per run (``run`` and the columns).
        columns: the columns, ``run`` first.
        colors: one CSS colour per row (:func:`imgcls.plotting.run_colors`).
    """
    head = "".join(f"<th class='{'run' if c == 'run' else 'col'}'>{html.escape(c)}</th>" for c in columns)
    body = []
    for r, color in zip(rows, colors, strict=True):
        cells = []
        for c in columns:
            value = r.get(c)
            text = html.escape(cell_text(value))
            if c == "run":
                swatch = f"<span class='swatch' style='background:{color}'></span>"
                cells.append(f"<td class='run' title='{text}'>{swatch}{text}</td>")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                cells.append(f"<td class='num'>{text}</td>")
            else:
                cells.append(f"<td class='text' title='{text}'>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}code{background:#f3f3f3;padding:1px 3px}"
    "img{max-width:100%}.table-wrap{overflow:auto;max-height:70vh;max-width:100%;border:1px solid #ccc}"
    "table{border-collapse:separate;border-spacing:0;font-size:13px}"
    "th,td{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:4px 8px;white-space:nowrap}"
    "thead th{position:sticky;top:0;background:#f3f3f3;z-index:2;text-align:left}"
    "th.run,td.run{position:sticky;left:0;background:#fff;z-index:1;max-width:28em;overflow:hidden;"
    "text-overflow:ellipsis}thead th.run{z-index:3;background:#f3f3f3}"
    "td.text{max-width:20em;overflow:hidden;text-overflow:ellipsis}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}tbody tr:hover td{background:#f4f8ff}"
    ".swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.5em;vertical-align:-1px}"
)


def write_html(path: str | Path, *, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """A self-contained HTML page: ``sections`` are (heading, inner HTML) pairs."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, inner in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{inner}")
    parts.append("</body></html>")
    p = Path(path)
    p.write_text("\n".join(parts))
    return p


@dataclass
class CompareOutputs:
    """Files written by :func:`write_comparison`."""

    out_dir: Path
    markdown: Path
    csv: Path
    curves: Path | None
    html: Path


def write_comparison(comparison: Comparison, out_dir: str | Path) -> CompareOutputs:
    """Write ``compare.md``, ``compare.csv``, ``curves.png`` and ``index.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "compare.md"
    md.write_text(
        f"# Run comparison\n\n{len(comparison.runs)} runs; config keys shown only where they differ.\n\n"
        f"{comparison.to_markdown()}\n"
    )
    csv_path = out / "compare.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=comparison.columns, extrasaction="ignore")
        w.writeheader()
        for r in comparison.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in comparison.columns})
    curves = plot_curves(
        [r.metrics for r in comparison.runs],
        out / "curves.png",
        labels=[r.name for r in comparison.runs],
        curves=CURVES,
        title="training curves",
    )
    paths = "".join(f"<li><code>{html.escape(str(r.path))}</code></li>" for r in comparison.runs)
    differing = (
        f"<p>Config keys that differ: {', '.join(f'<code>{html.escape(k)}</code>' for k in comparison.diff_keys)}</p>"
        if comparison.diff_keys
        else "<p>The runs have the same config.</p>"
    )
    colors = run_colors(len(comparison.runs))
    key = "<p>Each run's colour is its line in the training curves below.</p>" if curves is not None else ""
    sections = [("Table", differing + key + html_table(comparison.rows, comparison.columns, colors))]
    if curves is not None:
        sections.append(("Training curves", f"<img src='{png_data_uri(curves)}' alt='training curves'>"))
    sections.append(("Runs", f"<ul>{paths}</ul>"))
    page = write_html(out / "index.html", title=f"imgcls: {len(comparison.runs)} runs compared", sections=sections)
    return CompareOutputs(out_dir=out, markdown=md, csv=csv_path, curves=curves, html=page)


def compare(
    runs: Sequence[str | Path] = (),
    *,
    all_runs: bool = False,
    runs_dir: str | Path = "runs",
    out_dir: str | Path | None = None,
    keep_all: bool = False,
) -> tuple[Comparison, CompareOutputs]:
    """Compare run folders and write the table, curves and HTML page.

    Args:
        runs: run folders.
        all_runs: also take every run folder under ``runs_dir``.
        runs_dir: where ``all_runs`` looks.
        out_dir: where to write (default ``<runs_dir>/compare-<timestamp>``).
        keep_all: also show incidental keys (run.dir, ...) when they differ.

    Returns:
        The comparison and the paths written.

    Raises:
        CompareError: no run found, or ``runs_dir`` (with ``all_runs``) does not exist.
    """
    paths = [Path(p) for p in runs]
    if all_runs:
        try:
            paths += [p for p in find_runs(runs_dir) if p not in paths]
        except RunFolderError as e:  # no such runs folder
            raise CompareError(str(e)) from None
    if not paths:
        raise CompareError(f"no runs given and none found under {runs_dir}: pass run folders or --all")
    comparison = compare_runs(paths, keep_all=keep_all)
    out = Path(out_dir) if out_dir else Path(runs_dir) / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return comparison, write_comparison(comparison, out)
