"""The concept pages of docs/concepts link the code that implements each concept and the notebooks and studies that
demonstrate it, and every such link resolves: the file exists and defines the function or class the link names. A
study's ``study.md`` links its concept page from wherever the study folder is."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from imgcls.studies.definitions import list_studies
from imgcls.studies.outputs import CONCEPTS_DIR, concept_link

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "concepts").glob("*.md"))
LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+)(#[^)]*)?\)")
STUDY = re.compile(r"`imgcls study ([a-z0-9-]+)")


def _defined(path: Path) -> set[str]:
    """Every top-level function and class of a module, and ``Class.method`` for their methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
    return names


def _links(page: Path) -> list[tuple[str, Path]]:
    return [(text.strip("`"), (page.parent / target).resolve()) for text, target, _ in LINK.findall(page.read_text())]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_concept_page_links_resolve(page: Path) -> None:
    links = _links(page)
    code = [(name, path) for name, path in links if path.suffix == ".py" and (ROOT / "src") in path.parents]
    assert code, f"{page.name} links no code (an **In the code.** paragraph with [`function`](../../src/...py))"
    for name, path in code:
        assert path.is_file(), f"{page.name}: {path.relative_to(ROOT)} does not exist"
        assert name in _defined(path), f"{page.name}: {path.relative_to(ROOT)} defines no function or class {name}"
    for text, path in links:
        if not text.startswith("http") and "://" not in str(path):
            assert path.exists(), f"{page.name}: the link to {text} ({path}) is dead"
    notebooks = [path for _, path in links if (ROOT / "notebooks") in path.parents]
    studies = set(STUDY.findall(page.read_text()))
    assert notebooks or studies, f"{page.name} links neither a notebook nor a study that demonstrates it"
    assert studies <= set(list_studies()), f"{page.name} names a study that does not exist"


def test_every_notebook_is_linked_from_a_concept_page() -> None:
    linked = {path.name for page in PAGES for _, path in _links(page) if path.suffix == ".py"}
    missing = [p.name for p in sorted((ROOT / "notebooks").glob("0*.py")) if p.name not in linked]
    assert not missing, f"no concept page links {missing}"


def test_study_md_concept_link_works_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for where in (tmp_path / "a" / "b" / "c" / "study", ROOT / "runs" / "studies" / "x"):
        text = concept_link("ema", where)
        target = re.search(r"\]\(([^)]+)\)", text).group(1)
        assert (where / target).resolve() == (CONCEPTS_DIR / "ema.md").resolve()
    assert os.path.isabs(CONCEPTS_DIR)
    monkeypatch.setattr("imgcls.studies.outputs.CONCEPTS_DIR", tmp_path / "none")  # imgcls without its docs
    assert concept_link("ema", tmp_path) == "`docs/concepts/ema.md` (in the imgcls source repository)"
