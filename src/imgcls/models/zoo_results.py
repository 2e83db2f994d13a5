"""Measured CIFAR-10 results of the model zoo (``benchmarks/zoo.py``), shipped with the package.

``zoo_results.csv`` holds one row per (model, device) that the zoo measured on the full CIFAR-10 data: test accuracy,
the budget it had (minutes of training on a CPU; empty: the recipe ran to its end), the epochs it reached, when and
where. ``imgcls models`` shows it beside each model; a model without a row shows nothing (no number is made up).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_FILE = Path(__file__).with_name("zoo_results.csv")

#: the zoo's columns (benchmarks/zoo.py writes them all; the package file keeps them too)
ZOO_FIELDS = [
    "model",
    "preset",
    "device",
    "budget_min",
    "train_images",
    "params",
    "macs",
    "train_img_s",
    "eager_img_s",
    "int8_img_s",
    "epochs_reached",
    "recipe_epochs",
    "train_minutes",
    "test_acc",
    "test_acc_tta",
    "tta_views",
    "command",
    "tta_command",
    "date",
    "machine",
]


def read_results(path: Path | None = None) -> list[dict[str, str]]:
    """The rows of the results file (default: the package's; [] when there is none yet)."""
    path = path or RESULTS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_results(rows: Iterable[Mapping[str, Any]], path: Path | None = None) -> None:
    """Merge ``rows`` into the results file (default: the package's): a new row replaces the one of the same model
    and device."""
    path = path or RESULTS_FILE
    merged = {(r["model"], r["device"]): dict(r) for r in read_results(path)}
    for r in rows:
        merged[(str(r["model"]), str(r["device"]))] = {k: r.get(k, "") for k in ZOO_FIELDS}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ZOO_FIELDS)
        writer.writeheader()
        writer.writerows(sorted(merged.values(), key=lambda r: (r["model"], r["device"])))


def cifar10_note(model: str, rows: list[dict[str, str]] | None = None) -> str:
    """``imgcls models``' CIFAR-10 column for ``model``: e.g. ``71.3% (10 min CPU, 4.2 ep)``, each measured device
    joined by ``; ``, or "" without a row."""
    rows = read_results() if rows is None else rows
    notes = []
    for r in rows:
        if r["model"] != model:
            continue
        budget = f"{float(r['budget_min']):g} min " if r.get("budget_min") else "full recipe, "
        epochs = f"{float(r['epochs_reached']):g} ep"
        notes.append(f"{100 * float(r['test_acc']):.1f}% ({budget}{r['device'].upper()}, {epochs})")
    return "; ".join(notes)
