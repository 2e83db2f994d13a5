"""``imgcls compare``: the differences-only table, curves and HTML page on two tiny runs."""

from __future__ import annotations

import pytest

from imgcls.cli import main
from imgcls.config import build_config, flatten
from imgcls.tune.compare import CompareError, compare, compare_runs, config_differences


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from imgcls.engine.train import train

    runs = tmp_path_factory.mktemp("compare") / "runs"
    common = ["data.subset=200", "model.name=simple_cnn_tiny", "training.epochs=2", "data.loader=device",
              "run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={runs}"]  # fmt: skip
    a = train(build_config("quickstart", [*common, "run.name=a"])).run_dir
    b = train(build_config("quickstart", [*common, "run.name=b", "training.optimizer.lr=0.1",
                                          "training.optimizer.name=adamw"])).run_dir  # fmt: skip
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
