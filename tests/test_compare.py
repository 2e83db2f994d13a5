"""``imgcls compare``: the differences-only table, curves and HTML page on two tiny runs."""

from __future__ import annotations

import pytest

from imgcls.cli import main
from imgcls.config import build_config, flatten
from imgcls.plotting import run_colors
from imgcls.tune.compare import METRIC_COLUMNS, CompareError, Comparison, compare, compare_runs, config_differences
from imgcls.tune.table import format_comparison, select_columns


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from imgcls.engine.train import train

    runs = tmp_path_factory.mktemp("compare") / "runs"
    common = [
        "data.subset=200",
        "model.name=simple_cnn_tiny",
        "training.epochs=2",
        "data.loader=device",
        "run.progress=false",
        "run.tracker=none",
        "run.report=false",
        f"run.dir={runs}",
    ]
    a = train(build_config("quickstart", [*common, "run.name=a"])).run_dir
    b = train(
        build_config(
            "quickstart", [*common, "run.name=b", "training.optimizer.lr=0.1", "training.optimizer.name=adamw"]
        )
    ).run_dir
    return runs, a, b


def test_flatten_and_differences():
    tree = {"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}}
    assert flatten(tree) == {"a.b": 1, "a.c": [1, 2], "d": "x", "e": {}}
    configs = [{"x": 1, "y": 2, "run.dir": "p"}, {"x": 1, "y": 3, "run.dir": "q"}, {"x": 1, "y": 2, "z": 0}]
    assert config_differences(configs) == ["y", "z"]
    assert config_differences(configs, keep_all=True) == ["run.dir", "y", "z"]


def test_compare_two_runs_shows_only_differences(two_runs, tmp_path):
    runs, a, b = two_runs
    comparison, out = compare([a, b], out_dir=tmp_path / "cmp")
    assert comparison.diff_keys == ["run.name", "training.optimizer.lr", "training.optimizer.name"]
    assert [r["run"] for r in comparison.rows] == [a.name, b.name]
    row = comparison.rows[1]
    assert row["training.optimizer.name"] == "adamw" and row["epochs"] == 2
    assert row["params"] > 0 and 0.0 <= row["best_val_acc"] <= 1.0 and row["train_s"] > 0
    md = out.markdown.read_text()
    assert "training.optimizer.lr" in md and "model.name" not in md and "data.subset" not in md
    assert out.curves is not None and out.curves.stat().st_size > 1000
    page = out.html.read_text()
    assert "data:image/png;base64," in page and "training.optimizer.name" in page
    # a scrolling table (sticky header and run column), each run's colour beside its name, as in curves.png
    assert "<div class='table-wrap'>" in page and ".table-wrap{overflow:auto" in page and "position:sticky" in page
    for color in run_colors(2):
        assert page.count(f"class='swatch' style='background:{color}'") == 1
    header = out.csv.read_text().splitlines()[0].split(",")
    assert header[:4] == ["run", "run.name", "training.optimizer.lr", "training.optimizer.name"]


def test_compare_cli_all(two_runs, tmp_path, capsys):
    runs, a, b = two_runs
    assert main(["compare", "--all", "--runs-dir", str(runs), "--out", str(tmp_path / "all")]) == 0
    assert "training.optimizer.lr" in capsys.readouterr().out
    assert (tmp_path / "all" / "index.html").is_file()


def test_compare_errors(tmp_path):
    with pytest.raises(CompareError, match="not a run folder"):
        compare_runs([tmp_path])
    (tmp_path / "runs").mkdir()
    assert main(["compare", "--all", "--runs-dir", str(tmp_path / "runs")]) == 2


def _many(n: int, *, name_len: int = 60) -> Comparison:
    """A comparison of ``n`` made-up runs with long names and the usual columns (no training needed)."""
    keys = ["data.batch_size", "run.name", "training.optimizer.lr", "training.optimizer.name"]
    rows = []
    for i in range(n):
        name = f"lr{0.01 * (i + 1):g}-" + "x" * (name_len - 30) + f"-run-{i:02d}"
        rows.append(
            {
                "run": f"{name}-20261202-0143{i:02d}",
                "data.batch_size": 16 * (1 + i % 2),
                "run.name": name,
                "training.optimizer.lr": 0.01 * (i + 1),
                "training.optimizer.name": ["sgd", "adamw", "adam"][i % 3],
                "best_val_acc": 0.5 + i / 100,
                "final_val_acc": 0.4 + i / 100,
                "test_acc": 0.45 + i / 100,
                "epochs": 3,
                "train_s": 1.5 + i,
                "total_s": 2.5 + i,
                "params": 4370,
                "status": "finished",
            }
        )
    return Comparison(runs=[None] * n, diff_keys=keys, rows=rows)


@pytest.mark.parametrize("width", [80, 100, 120])
def test_terminal_table_fits_the_width_and_keeps_every_run_and_number(width):
    comparison = _many(12)
    text = format_comparison(comparison, width=width)
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    for r in comparison.rows:  # every run is there (its start, shortened in the middle), every number in full
        assert sum(line.startswith(f"│ {r['run'][:5]}") and "…" in line for line in lines) >= 1
        assert f"{r['test_acc']:.4g}" in text and f"{r['train_s']:.4g}" in text
    assert len([line for line in lines if line.startswith("│ lr")]) % 12 == 0  # 12 rows per part
    # run.name is what the folder names start with: not repeated; constant metrics go under the table
    assert "run.name" not in text and "same in every run: epochs 3, params 4370, status finished" in text
    assert "lr = training.optimizer.lr" in text and "optimizer.name = training.optimizer.name" in text


def test_terminal_table_transposes_few_runs_with_many_columns_and_chooses_columns():
    comparison = _many(3)
    text = format_comparison(comparison, width=80, columns=["*"])
    assert "transposed: one column per run" in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    labels = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert labels == comparison.columns[1:]  # one row per column, the full name
    # one row per run when asked, in parts that each fit, the run column in every part
    parts = format_comparison(comparison, width=80, columns=["*"], transpose=False)
    assert "part 1 of" in parts and max(len(line.rstrip()) for line in parts.splitlines()) <= 80
    # --columns: names and patterns, in the order asked; run always first
    assert select_columns(comparison, ["test_acc", "training.*"]) == [
        "run",
        "test_acc",
        "training.optimizer.lr",
        "training.optimizer.name",
    ]
    narrow = format_comparison(comparison, width=100, columns=["*acc"])
    header = next(line for line in narrow.splitlines() if "run" in line and "┃" in line)
    table = narrow.split("same in every run")[0]
    assert "lr" not in header and "status" not in table and "val acc" in header and "0.47" in table
    with pytest.raises(CompareError, match="no column matches 'nope'"):
        select_columns(comparison, ["nope"])
    assert set(METRIC_COLUMNS) <= set(comparison.columns)


def test_compare_cli_columns_and_width(two_runs, tmp_path, capsys):
    runs, a, b = two_runs
    args = ["compare", str(a), str(b), "--out", str(tmp_path / "c"), "--width", "80", "--columns", "test_acc,*.lr"]
    assert main(args) == 0
    out = capsys.readouterr().out.split("written:")[0]
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    assert "lr = training.optimizer.lr" in out and "best" not in out
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "d"), "--columns", "bogus"]) == 2


def test_run_colours_stay_distinct_for_many_runs():
    for n in (2, 10, 12, 20, 30):
        colors = run_colors(n)
        assert len(colors) == n and len(set(colors)) == n


def test_curves_png_many_runs_distinct_lines_integer_epochs(tmp_path, monkeypatch):
    import imgcls.plotting as plotting

    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    histories = [[{"epoch": e, "val_acc": 0.1 * e + i / 100} for e in (1, 2, 3)] for i in range(12)]
    labels = [f"run-with-a-very-long-name-{i:02d}-20261202-014300" for i in range(12)]
    plotting.plot_curves(histories, tmp_path / "c.png", labels=labels, curves=[("val_acc", "val accuracy")])
    fig = drawn[0]
    ax = fig.axes[0]
    assert len({line.get_color() for line in ax.lines}) == 12
    assert [t for t in ax.get_xticks() if 1 <= t <= 3] == [1, 2, 3]
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 12 and all(len(t) <= 40 and "…" in t for t in texts) and texts[3].endswith("014300")
    one = [[{"epoch": 1, "val_acc": 0.5}]]
    plotting.plot_curves(one, tmp_path / "d.png", labels=["a"], curves=[("val_acc", "val accuracy")])
    assert [t for t in drawn[1].axes[0].get_xticks() if 0.5 <= t <= 1.5] == [1]
