"""Every notebook of notebooks/ (jupytext percent-format .py files) runs top to bottom in a fresh kernel, within its
time budget, shows at least one figure, and ends with what to try next on CIFAR-10.

Each runs in its own temporary folder (its ``runs/`` land there), through jupytext (the .py file -> a notebook) and
nbclient (the kernel), so an API change that breaks a notebook fails here. The first figure of each is saved to
``tests/artifacts/notebooks/<name>.png`` (git-ignored; look at them after a run) and the run times to
``tests/artifacts/notebooks/times.json``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
ARTIFACTS = ROOT / "tests" / "artifacts" / "notebooks"
#: the budget of one notebook on 2 CPU cores (the issue's), with its kernel's start included
BUDGET_S = 120


def test_one_notebook_per_roadmap_phase():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 9)]


def _images(nb) -> list[bytes]:  # noqa: ANN001
    return [
        base64.b64decode(out["data"]["image/png"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]


def _text(nb) -> str:  # noqa: ANN001
    """What the notebook printed, cell by cell (kept beside its figure for a reader of the test's artifacts)."""
    return "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )


@pytest.mark.timeout(BUDGET_S + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = jupytext.read(path)
    # the kernel is a new process: it finds imgcls where this test does (an editable install, or PYTHONPATH=src)
    src = str(ROOT / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p))
    client = NotebookClient(
        nb, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    times = ARTIFACTS / "times.json"
    recorded = json.loads(times.read_text()) if times.is_file() else {}
    times.write_text(json.dumps({**recorded, path.stem: round(seconds, 1)}, indent=2, sort_keys=True))
    (ARTIFACTS / f"{path.stem}.txt").write_text(_text(nb))
    images = _images(nb)
    assert images, f"{path.name} shows no figure"
    (ARTIFACTS / f"{path.stem}.png").write_bytes(images[0])
    assert seconds < BUDGET_S, f"{path.name} took {seconds:.0f} s (budget {BUDGET_S} s)"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and "CIFAR-10" in last.source, "the last cell says what to try on CIFAR-10"
    assert "!" not in "".join(line[:1] for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines())
