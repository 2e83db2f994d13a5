"""The terminal table of ``imgcls compare``: every run and value, in the width of the terminal.

A run folder's name (``lr0.01-adamw-...-20261202-014315``) and a dotted config key (``training.optimizer.name``) are
long; a table of a dozen runs and a dozen columns folded into 200 columns wraps every cell over four lines. Here:

- columns are chosen with ``columns`` (names or shell patterns: ``training.*``, ``*acc``); by default the config keys
  that differ and the metrics, less ``run.name`` when every folder name already starts with it;
- a config key is headed by its shortest unique dotted suffix (``optimizer.lr``; the full key is listed under the
  table), a metric by its words over at most two lines;
- text cells (the run name first) are shortened in the middle until the table fits ``width``; numbers never are;
- when it still does not fit, the table is transposed (one row per column, one column per run) if that fits, else
  split into several tables, each repeating the run column.
"""

from __future__ import annotations

import fnmatch
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from imgcls.plotting import shorten
from imgcls.tune.compare import METRIC_COLUMNS, CompareError, Comparison, cell_text

#: no text cell is shortened below this many characters (the table is transposed or split instead)
MIN_TEXT_WIDTH = 12
#: the longest text cell before any fitting
MAX_TEXT_WIDTH = 40


def terminal_width(default: int = 120) -> int:
    """The terminal's width in characters (``default`` when not a terminal, e.g. piped into a file)."""
    return shutil.get_terminal_size((default, 24)).columns


def select_columns(comparison: Comparison, columns: Sequence[str] | None = None) -> list[str]:
    """``run`` first, then the chosen columns in the order asked (each a name or a pattern such as ``training.*``).

    Default: the differing config keys and the metrics, without ``run.name`` when every run folder's name starts
    with it (the folder name already shows it).

    Raises:
        CompareError: a name or pattern that matches no column (the message lists the columns).
    """
    available = comparison.columns[1:]
    if not columns:
        redundant = all(str(r["run"]).startswith(str(r.get("run.name"))) for r in comparison.rows)
        same = set(constant_metrics(comparison))
        return ["run", *[c for c in available if not (c == "run.name" and redundant) and c not in same]]
    chosen: list[str] = []
    for pattern in columns:
        matched = [c for c in available if c == pattern] or fnmatch.filter(available, pattern)
        if not matched:
            raise CompareError(f"--columns: no column matches '{pattern}'; columns: {', '.join(available)}")
        chosen += [c for c in matched if c not in chosen]
    return ["run", *chosen]


def constant_metrics(comparison: Comparison) -> dict[str, str]:
    """The metric columns with one value in every run (of two or more): column -> that value, as shown."""
    if len(comparison.rows) < 2:
        return {}
    values = {c: {cell_text(r.get(c)) for r in comparison.rows} for c in METRIC_COLUMNS}
    return {c: v.pop() for c, v in values.items() if len(v) == 1}


def short_headers(columns: Sequence[str]) -> dict[str, str]:
    """Each column's shortest dotted suffix that no other column ends with (``training.optimizer.lr`` -> ``lr``)."""
    out = {}
    for col in columns:
        parts = col.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if not any(o != col and (o == suffix or o.endswith("." + suffix)) for o in columns):
                break
        out[col] = suffix
    return out


def _two_lines(text: str) -> str:
    """A metric's words on at most two lines, split where the longer line is shortest."""
    words = text.replace("_", " ").split()
    splits = [(" ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words))]
    splits = [(a, b) for a, b in splits if min(len(a), len(b)) >= 3]  # no line of a lone "s"
    if not splits:
        return " ".join(words)
    first, second = min(splits, key=lambda s: max(len(s[0]), len(s[1])))
    return f"{first}\n{second}"


@dataclass
class _Grid:
    """The table as strings: headers, one list of cells per row, which columns are text (shortened, left-aligned)."""

    headers: list[str]
    rows: list[list[str]]
    text: list[bool]
    full: list[list[str]]  # the cells before shortening

    def widths(self) -> list[int]:
        return [
            max([*(cell_len(line) for line in h.split("\n")), *(cell_len(r[i]) for r in self.rows)])
            for i, h in enumerate(self.headers)
        ]

    def shortened(self, limits: list[int]) -> _Grid:
        rows = [[shorten(c, limits[i]) if self.text[i] else c for i, c in enumerate(r)] for r in self.full]
        return _Grid(self.headers, rows, self.text, self.full)


def _grid(comparison: Comparison, columns: list[str], headers: dict[str, str]) -> _Grid:
    full = [[cell_text(r.get(c)) for c in columns] for r in comparison.rows]
    text = [
        c == "run" or (c not in METRIC_COLUMNS and any(not _is_number(r.get(c)) for r in comparison.rows))
        for c in columns
    ]
    heads = [_two_lines(c) if c in METRIC_COLUMNS else headers.get(c, c) for c in columns]
    grid = _Grid(heads, full, text, full)
    return grid.shortened([MAX_TEXT_WIDTH] * len(columns))


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _table(grid: _Grid, title: str | None) -> Table:
    table = Table(title=title, title_justify="left", min_width=cell_len(title or ""))
    for i, h in enumerate(grid.headers):
        table.add_column(h, justify="left" if grid.text[i] else "right", no_wrap=True, overflow="ellipsis")
    for r in grid.rows:
        table.add_row(*r)
    return table


def _render(renderables: Sequence[Any], width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, legacy_windows=False, soft_wrap=False)
    for r in renderables:
        console.print(r)
    return buf.getvalue()


def _table_width(grid: _Grid) -> int:
    return sum(w + 3 for w in grid.widths()) + 1  # a rich box: "| " + cell + " " per column, and the last border


def _fit(grid: _Grid, width: int) -> _Grid | None:
    """Shorten the widest text column, a character at a time, until the table fits (None: it cannot)."""
    limits = grid.widths()
    while _table_width(grid) > width:
        candidates = [i for i, t in enumerate(grid.text) if t and limits[i] > MIN_TEXT_WIDTH]
        if not candidates:
            return None
        i = max(candidates, key=lambda j: limits[j])
        limits[i] -= max(1, (_table_width(grid) - width) // len(candidates))
        limits[i] = max(limits[i], MIN_TEXT_WIDTH)
        grid = grid.shortened(limits)
    return grid


def _transposed(grid: _Grid, columns: list[str]) -> _Grid:
    """One row per column (its full name), one column per run (headed by its name)."""
    runs = [r[0] for r in grid.full]
    full = [[col, *(r[i] for r in grid.full)] for i, col in enumerate(columns) if i > 0]
    heads = ["", *[shorten(r, MAX_TEXT_WIDTH) for r in runs]]
    flipped = _Grid(heads, full, [True] + [False] * len(runs), full)
    return flipped.shortened([MAX_TEXT_WIDTH] * len(heads))


def _fit_transposed(grid: _Grid, columns: list[str], width: int) -> _Grid | None:
    """The transposed table in ``width``: run names and text values shortened to the room per run (None: the numbers
    would not fit)."""
    flipped = _transposed(grid, columns)
    n_runs = len(grid.full)
    numbers = [cell_len(r[j + 1]) for r in flipped.rows for j in range(n_runs) if _looks_numeric(r[j + 1])]
    per_run = (width - (flipped.widths()[0] + 3) - 1) // max(1, n_runs) - 3
    if per_run < max([8, *numbers]):
        return None
    heads = ["", *[_two_line_name(r[0], per_run) for r in grid.full]]
    rows = [[r[0], *(shorten(c, per_run) for c in r[1:])] for r in flipped.rows]
    return _Grid(heads, rows, flipped.text, flipped.full)


def _two_line_name(name: str, width: int) -> str:
    """A run name as a column header of ``width``: its start, and on a second line its end (an ellipsis between)."""
    if len(name) <= width:
        return name
    rest = name[width:]
    return name[:width] + "\n" + (rest if len(rest) <= width else "…" + rest[len(rest) - width + 1 :])


def _looks_numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).replace("e-", "").replace("-", "", 1).isdigit()


def _split(grid: _Grid, width: int) -> list[_Grid]:
    """Column groups that each fit, every one starting with the run column; text shortened to a third of ``width``."""
    limit = max(MIN_TEXT_WIDTH, min(MAX_TEXT_WIDTH, width // 3))
    grid = grid.shortened([limit] * len(grid.headers))
    widths = grid.widths()
    groups: list[list[int]] = [[]]
    used = widths[0] + 4
    for i in range(1, len(widths)):
        if groups[-1] and used + widths[i] + 3 > width:
            groups.append([])
            used = widths[0] + 4
        groups[-1].append(i)
        used += widths[i] + 3
    return [
        _Grid(
            [grid.headers[0], *(grid.headers[i] for i in g)],
            [[r[0], *(r[i] for i in g)] for r in grid.rows],
            [grid.text[0], *(grid.text[i] for i in g)],
            [[r[0], *(r[i] for i in g)] for r in grid.full],
        )
        for g in groups
    ]


def comparison_tables(
    comparison: Comparison,
    *,
    columns: Sequence[str] | None = None,
    width: int | None = None,
    transpose: bool | None = None,
) -> tuple[list[Table], str]:
    """The rich tables to print (one, or a split one's parts) and the note under them.

    Args:
        comparison: from :func:`imgcls.tune.compare.compare_runs`.
        columns: names or patterns of the columns to show (default: see :func:`select_columns`).
        width: the width to fit (default: the terminal's).
        transpose: True: one row per column; False: one row per run (split into parts when too wide); None: one
            row per run if it fits, else transposed if that fits, else split.
    """
    width = width or terminal_width()
    cols = select_columns(comparison, columns)
    headers = short_headers(comparison.columns)
    grid = _grid(comparison, cols, headers)
    title = f"{len(comparison.runs)} runs (config: differences only)"
    renamed = [f"{headers[c]} = {c}" for c in cols if c not in METRIC_COLUMNS and c != "run" and headers[c] != c]
    same = [f"{c} {v}" for c, v in constant_metrics(comparison).items() if c not in cols]
    note = "\n".join(
        ([f"columns: {', '.join(renamed)}"] if renamed else [])
        + ([f"same in every run: {', '.join(same)}"] if same else [])
    )
    fitted = None if transpose else _fit(grid, width)
    if fitted is not None:
        return [_table(fitted, title)], note
    flipped = _fit_transposed(grid, cols, width) if transpose is not False else None
    if flipped is not None or transpose:
        flipped = flipped or _transposed(grid, cols)
        return [_table(flipped, title + ", transposed: one column per run")], note if same else ""
    parts = _split(grid, width)
    return [
        _table(p, f"{title}, part {i + 1} of {len(parts)}" if i == 0 else f"part {i + 1} of {len(parts)}")
        for i, p in enumerate(parts)
    ], note


def format_comparison(comparison: Comparison, **kwargs: Any) -> str:
    """:func:`comparison_tables` as plain text (the tables, then the note)."""
    width = kwargs.get("width") or terminal_width()
    tables, note = comparison_tables(comparison, **{**kwargs, "width": width})
    return _render(tables, width) + (shorten_lines(note, width) + "\n" if note else "")


def shorten_lines(text: str, width: int) -> str:
    """Each line of ``text`` wrapped at ``, `` into lines of at most ``width`` characters (continued indented)."""
    out = []
    for paragraph in text.split("\n"):
        line = ""
        for part in paragraph.split(", "):
            candidate = f"{line}, {part}" if line else part
            if line and len(candidate) > width:
                out.append(line + ",")
                line = "  " + part
            else:
                line = candidate
        out.append(line)
    return "\n".join(out)


def print_comparison(
    comparison: Comparison,
    *,
    columns: Sequence[str] | None = None,
    width: int | None = None,
    transpose: bool | None = None,
) -> None:
    """The table(s) on the console, fitted to ``width`` (default: the terminal's)."""
    width = width or terminal_width()
    console = Console(width=width, soft_wrap=False)
    tables, note = comparison_tables(comparison, columns=columns, width=width, transpose=transpose)
    for t in tables:
        console.print(t)
    if note:
        console.print(shorten_lines(note, width), highlight=False, markup=False)
