"""The model zoo: every recipe preset of benchmarks/zoo.py builds and passes the config check (GPU and CPU-budget
forms), the results file it writes into the package, and the CIFAR-10 column of ``imgcls models``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.engine.build import check_config
from imgcls.models import zoo_results
from imgcls.models.zoo_results import cifar10_note, read_results, write_results

_spec = importlib.util.spec_from_file_location("zoo", Path(__file__).parents[1] / "benchmarks" / "zoo.py")
zoo = importlib.util.module_from_spec(_spec)
sys.modules["zoo"] = zoo  # dataclasses look their module up there
_spec.loader.exec_module(zoo)


@pytest.mark.parametrize("entry", zoo.ZOO, ids=lambda e: e.model)
def test_every_zoo_recipe_builds_for_gpu_and_for_a_cpu_budget(entry):
    gpu = build_config(entry.preset, ["data.root=cifar10_jpg.tar.gz", *zoo.COMMON])
    check_config(gpu)  # types, ranges, registry names, the model's options (on the meta device)
    assert gpu.model.name == entry.model and gpu.data.name == "cifar10"
    assert gpu.training.epochs >= 10  # the recipe's own length (the GPU run goes to its end)
    cpu_overrides = [*zoo.COMMON, *zoo.cpu_speed(), *entry.cpu, *zoo.budget_overrides(entry.preset, 3)]
    cpu = build_config(entry.preset, [*cpu_overrides, "training.max_minutes=10"])
    check_config(cpu)
    assert cpu.training.epochs == 3 and cpu.training.max_minutes == 10
    assert cpu.training.scheduler.warmup_epochs <= 3 * gpu.training.scheduler.warmup_epochs / gpu.training.epochs + 1e-3
    assert cpu.augmentation.mix.off_last_epochs <= 3


def test_zoo_covers_the_families_of_the_issue():
    names = {e.model for e in zoo.ZOO}
    assert {
        "simple_cnn",
        "resnet_tiny",
        "resnet18",
        "resnet50",
        "efficientnet_b0",
        "efficientnet_tiny",
        "vit_tiny",
        "cnn_transformer_small",
        "airbench",
        "airbench_small",
    } <= names
    assert any(n.startswith("timm:") for n in names)


ROW = {"model": "simple_cnn", "device": "cpu", "budget_min": "10", "epochs_reached": "7.5", "test_acc": "0.7134"}


def test_results_file_merges_by_model_and_device(tmp_path):
    path = tmp_path / "zoo_results.csv"
    write_results([ROW, {**ROW, "device": "cuda", "budget_min": "", "epochs_reached": "50", "test_acc": "0.88"}], path)
    write_results([{**ROW, "test_acc": "0.75"}], path)  # a new CPU row replaces the old one
    rows = read_results(path)
    assert len(rows) == 2 and list(rows[0]) == zoo_results.ZOO_FIELDS
    assert cifar10_note("simple_cnn", rows) == "75.0% (10 min CPU, 7.5 ep); 88.0% (full recipe, CUDA, 50 ep)"
    assert cifar10_note("resnet18", rows) == ""  # no row: nothing made up


def test_models_command_shows_the_measured_accuracy_where_a_row_exists(tmp_path, monkeypatch, capsys):
    path = tmp_path / "zoo_results.csv"
    write_results([ROW], path)
    monkeypatch.setattr(zoo_results, "RESULTS_FILE", path)
    assert main(["models", "simple_cnn*"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if "simple_cnn" in line}
    assert "71.3% (10 min CPU, 7.5 ep)" in lines["simple_cnn"]
    assert "%" not in lines["simple_cnn_tiny"]
