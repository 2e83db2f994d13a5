"""Studies: every registered variant is a valid config; the reading's noise logic; tiny studies end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from imgcls.config import ConfigError, parse_override, to_dict, validate_config
from imgcls.engine.build import check_config
from imgcls.studies.definitions import (
    DATASETS,
    STUDIES,
    StudyDefinition,
    Variant,
    get_study,
    list_studies,
    register_study,
)
from imgcls.studies.metrics import METRICS
from imgcls.studies.plan import find_finished_run, variant_config
from imgcls.studies.reading import make_reading
from imgcls.studies.runner import collect_markdown, rewrite_report, run_study
from imgcls.studies.stats import aggregate, within_noise

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.subset=200"]

STUDY_CASES = [(s, d) for s in list_studies() for d in DATASETS]


def test_registry_has_the_classic_studies():
    expected = {
        "freeze-layers",
        "augmentation",
        "cutmix-alpha",
        "mixup-vs-cutmix",
        "randaugment",
        "optimizers",
        "schedulers",
        "lr-sweep",
        "weight-decay",
        "batch-size",
        "amp",
        "grad-accumulation",
        "label-smoothing",
        "early-stopping",
        "class-imbalance",
        "architectures",
        "distillation",
        "ensemble",
        "tta",
        "activations",
        "ema",
    }
    assert expected <= set(STUDIES)
    with pytest.raises(KeyError, match="Did you mean"):
        get_study("optimizer")


def test_register_study_refuses_duplicates():
    with pytest.raises(KeyError, match="already registered"):
        register_study(StudyDefinition(name="optimizers", title="t", shows="", concept="x", variants=(Variant("a"),)))
    twice = (Variant("a"), Variant("a"))
    with pytest.raises(ValueError, match="duplicate variant names"):
        register_study(StudyDefinition(name="dup-variants", title="t", shows="", concept="x", variants=twice))
    assert "dup-variants" not in STUDIES


@pytest.mark.parametrize("name, dataset", STUDY_CASES, ids=[f"{s}-{d}" for s, d in STUDY_CASES])
def test_every_variant_is_a_valid_config(name, dataset):
    study = get_study(name)
    assert study.metric in METRICS and all(m in METRICS for m in study.also)
    assert study.seeds >= 1 and len(study.variants) >= 2
    assert set(study.ranked) <= set(study.names)
    if study.plot == "line":
        assert all(v.x is not None for v in study.variants), "a sweep needs Variant.x on every variant"
    for v in study.variants:
        for ref in v.references():
            assert ref in study.names, f"{v.name} uses {{ckpt:{ref}}}, which is no variant of {name}"
            assert study.names.index(ref) < study.names.index(v.name), f"{v.name} uses {ref}, defined later"
        assert v.tta >= 1 and v.ensemble >= 1
        for text in study.overrides_for(v, dataset):
            parse_override(text)
        cfg = variant_config(study, v, dataset)
        validate_config(cfg)
        check_config(cfg)  # registry names (model, dataset, loss, optimizer, schedule) and the model's options too
        if cfg.data.loader == "device":
            from imgcls.data.device_loader import check_device_augmentations

            check_device_augmentations(cfg.augmentation.train)
        if name == "freeze-layers":
            from imgcls.models import create_model

            model = create_model(cfg.model.name, num_classes=10, in_chans=1, image_size=16)
            assert len(model.stage_groups()) >= max(int(v.x) for v in study.variants)


def test_no_machine_paths_in_the_package():
    """Data locations are the config's (data.root, the cache folder), never a folder of one machine."""
    for path in sorted((REPO / "src" / "imgcls").rglob("*")):
        if path.suffix in (".py", ".yaml", ".yml"):
            text = path.read_text()
            assert "/work/" not in text and "shared/data" not in text, f"a machine path in {path}"


def test_cifar10_base_reads_the_normal_data_location():
    study = get_study("optimizers")
    cfg = variant_config(study, study.variants[0], "cifar10")
    assert cfg.data.name == "cifar10" and cfg.data.root is None and cfg.data.download
    local = variant_config(study, study.variants[0], "cifar10", extra=["data.root=/data/cifar10_jpg.tar.gz"])
    assert local.data.root == "/data/cifar10_jpg.tar.gz"


def test_finished_run_is_found_up_to_incidental_keys(tmp_path):
    study = get_study("optimizers")
    earlier = variant_config(study, study.variants[0], "digits", extra=["data.download=false", "run.name=old"])
    run = tmp_path / "sgd-s0-20250101-000000"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(earlier)))))
    (run / "summary.json").write_text("{}")
    assert find_finished_run(tmp_path, variant_config(study, study.variants[0], "digits")) == run
    assert find_finished_run(tmp_path, variant_config(study, study.variants[1], "digits")) is None


def test_collected_command_names_no_local_folder(tmp_path):
    rows = [{**r, "study": "optimizers", "dataset": "cifar10"} for r in _rows({"sgd": [0.5], "adam": [0.6]})]
    (tmp_path / "study.json").write_text(
        json.dumps(
            {
                "study": "optimizers",
                "dataset": "cifar10",
                "seeds": 1,
                "seconds": 60.0,
                "rows": rows,
                "overrides": ["data.root=/data/me/cifar10_jpg.tar.gz", "training.epochs=1"],
            }
        )
    )
    md = collect_markdown([tmp_path])
    assert "`imgcls study optimizers data.root=/path/to/cifar10_jpg.tar.gz training.epochs=1 --dataset cifar10" in md
    assert "/data/me" not in md


@pytest.mark.parametrize("name", list_studies())
def test_every_study_has_a_concept_page(name):
    page = REPO / "docs" / "concepts" / f"{get_study(name).concept}.md"
    assert page.is_file(), f"missing {page}"


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"variant": n, "seed": i, "test_acc": v, "train_s": 1.0 + i, "test_n": 1000}
        for n, vs in values.items()
        for i, v in enumerate(vs)
    ]


def test_within_noise_uses_two_seed_stds():
    a = {"mean": 0.90, "std": 0.01, "n": 3}
    b = {"mean": 0.91, "std": 0.01, "n": 3}
    within, noise, _ = within_noise("test_acc", a, b)
    assert within is True and noise == pytest.approx(0.02)
    within, _, _ = within_noise("test_acc", a, {"mean": 0.95, "std": 0.01, "n": 3})
    assert within is False
    # one seed: the binomial standard error of the test set is the floor (2 * sqrt(0.9 * 0.1 / 1000) = 1.9 pts)
    within, noise, source = within_noise(
        "test_acc", {"mean": 0.90, "std": math.nan, "n": 1}, {"mean": 0.91, "std": math.nan, "n": 1}, 1000
    )
    assert within is True and noise == pytest.approx(0.019, abs=1e-3) and "binomial" in source
    assert (
        within_noise("train_s", {"mean": 1.0, "std": math.nan, "n": 1}, {"mean": 2.0, "std": math.nan, "n": 1}, 1000)[0]
        is None
    )


def test_reading_names_winner_gap_and_noise():
    study = StudyDefinition(
        name="t",
        title="t",
        shows="",
        concept="x",
        expect="Expect things.",
        variants=(Variant("a"), Variant("b"), Variant("c")),
    )
    rows = _rows({"a": [0.90, 0.92, 0.91], "b": [0.915, 0.925, 0.92], "c": [0.80, 0.81, 0.79]})
    summary = aggregate(rows, study.names)
    assert summary["a"]["test_acc"]["mean"] == pytest.approx(0.91) and summary["a"]["test_acc"]["n"] == 3
    text = make_reading(study, summary, rows)
    assert text.startswith("**b** has the best test accuracy")
    assert "over 3 seeds" in text and "+1.0 pts" in text and "within noise" in text
    assert "Last: **c**" in text and "c -11.0 pts (beyond noise)" in text and "Expect things." in text


def _study_figure(monkeypatch, study, rows):
    import imgcls.studies.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    plots.plot_results(study, aggregate(rows, study.names), rows, Path("study.png"), "digits")
    return drawn[0]


def _legend_labels(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_study_plot_one_seed_tie_has_no_error_bars_and_no_winner(monkeypatch):
    """One seed: the title says so and no error bars are drawn; equal means are all marked tied best (none bold
    alone); the train-time bars start at zero."""
    from matplotlib.container import ErrorbarContainer

    study = StudyDefinition(name="t", title="T", shows="", concept="x", variants=(Variant("a"), Variant("b")))
    fig = _study_figure(monkeypatch, study, _rows({"a": [0.10], "b": [0.10]}))
    main_ax, time_ax = fig.axes
    title = fig._suptitle.get_text()
    assert "(digits, 1 seed)" in title and "no error bars" in title and "tied best: a, b" in title
    assert "± std" not in title
    assert not [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert "tied best" in _legend_labels(main_ax) and "best" not in _legend_labels(main_ax)
    assert [t.get_fontweight() for t in main_ax.get_xticklabels()] == ["bold", "bold"]
    # the 1-seed noise band is the test-set sampling floor (2 binomial s.e. on 1000 images: 1.9 pts)
    assert any(label.startswith("noise around the best (± 1.9 pts") for label in _legend_labels(main_ax))
    assert time_ax.get_ylim()[0] == 0.0 and time_ax.get_ylabel() == "train time (s)"


def test_study_plot_several_seeds_dots_error_bars_and_noise_band(monkeypatch):
    from matplotlib.container import ErrorbarContainer

    study = StudyDefinition(
        name="t", title="T", shows="", concept="x", variants=(Variant("a"), Variant("b"), Variant("c"))
    )
    rows = _rows({"a": [0.91, 0.92, 0.915], "b": [0.915, 0.925, 0.92], "c": [0.80, 0.81, 0.79]})
    fig = _study_figure(monkeypatch, study, rows)
    main_ax = fig.axes[0]
    assert (
        "(digits, 3 seeds)" in fig._suptitle.get_text()
        and "best: b (a within noise of it);" in fig._suptitle.get_text()
    )
    bars = [c for c in main_ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and not [p for p in main_ax.patches if p.get_width() == 0.8]  # dots, not bars
    spans = [seg[1][1] - seg[0][1] for seg in bars[0].lines[2][0].get_segments()]
    assert spans == pytest.approx([1.0, 1.0, 2.0])  # ± 1 std of each variant's seeds, in points
    assert [t.get_fontweight() for t in main_ax.get_xticklabels()] == ["normal", "bold", "normal"]
    band = [p for p in main_ax.patches if p.get_label().startswith("noise around the best")]
    assert len(band) == 1  # best b (92.0%) ± 2 std of its seeds (0.5 pts), at least the floor on 1000 images
    lo, hi = band[0].get_y(), band[0].get_y() + band[0].get_height()
    assert (lo, hi) == (pytest.approx(91.0), pytest.approx(93.0))
    assert "best" in _legend_labels(main_ax)
    assert 0 < main_ax.get_ylim()[0] and main_ax.get_ylim()[1] <= 100  # a dot plot may zoom; percentages stay in range
    assert fig.axes[1].get_ylim()[0] == 0.0


def test_study_plot_sweep_is_a_line_with_the_same_honesty(monkeypatch):
    study = StudyDefinition(
        name="t",
        title="T",
        shows="",
        concept="x",
        plot="line",
        x_log=True,
        x_label="lr",
        variants=(Variant("lr 0.01", x=0.01), Variant("lr 0.1", x=0.1), Variant("lr 1", x=1.0)),
    )
    fig = _study_figure(monkeypatch, study, _rows({"lr 0.01": [0.5], "lr 0.1": [0.6], "lr 1": [0.6]}))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "lr" and len(ax.lines) == 1
    assert "1 seed" in fig._suptitle.get_text() and "tied best: lr 0.1, lr 1" in fig._suptitle.get_text()


def test_reading_of_a_tie_names_no_winner_and_no_last():
    study = StudyDefinition(
        name="t", title="t", shows="", concept="x", variants=(Variant("a"), Variant("b"), Variant("c"))
    )
    rows = [{**r, "train_s": 2.0} for r in _rows({"a": [0.5], "b": [0.5], "c": [0.5]})]
    text = make_reading(study, aggregate(rows, study.names), rows)
    assert text.startswith("**a**, **b**, **c** tie on test accuracy at 50.0% (1 seed).")
    assert "Last:" not in text and "has the best" not in text
    assert "Train time (s): all tie at 2.0." in text
    rows = _rows({"a": [0.5], "b": [0.5], "c": [0.4]})
    text = make_reading(study, aggregate(rows, study.names), rows)
    assert text.startswith("**a**, **b** tie on test accuracy") and "Last: **c**" in text


def test_study_bad_input():
    with pytest.raises(ConfigError, match="unknown study"):
        run_study("optimizer")
    with pytest.raises(ConfigError, match="unknown config key"):
        run_study("optimizers", overrides=["training.epoch=1"])
    with pytest.raises(ConfigError, match="dataset"):
        run_study("optimizers", dataset="mnist")


def test_optimizers_study_end_to_end(tmp_path):
    out = tmp_path / "optimizers"
    result = run_study("optimizers", epochs=1, seeds=1, overrides=TINY, out_dir=out, quiet=True)
    assert result.trained == 3 and result.reused == 0
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert [r["variant"] for r in rows] == ["sgd", "adam", "adamw"]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 and float(r["train_s"]) > 0 and r["ece"] != "" for r in rows)
    md = (out / "study.md").read_text()
    assert "| variant | seeds | test accuracy | vs baseline |" in md and "## Reading" in md
    assert "has the best test accuracy" in md or " tie on " in md
    for name in ("study.png", "curves.png", "study.json"):
        assert (out / name).stat().st_size > 0
    # a second call reuses the finished runs (resumable, nothing retrained)
    again = run_study("optimizers", epochs=1, seeds=1, overrides=TINY, out_dir=out, quiet=True)
    assert again.trained == 0 and again.reused == 3
    assert [r["test_acc"] for r in again.rows] == [r["test_acc"] for r in result.rows]
    # the report can be rebuilt from study.json alone, and collected as Markdown
    (out / "study.md").unlink()
    rebuilt = rewrite_report(out)
    assert rebuilt.reading == again.reading and (out / "study.md").is_file()
    assert collect_markdown([out]).startswith("## optimizers")


def test_tta_ensemble_and_teacher_reference(tmp_path):
    """Variants that differ only at test time share a run; ensemble members get their own initialisations; a
    ``{ckpt:NAME}`` override gets the named variant's best checkpoint of the same seed."""
    study = StudyDefinition(
        name="mini",
        title="mini",
        shows="",
        concept="x",
        seeds=1,
        lr_curves=True,
        variants=(
            Variant("base"),
            Variant("tta 2", tta=2),
            Variant("ens 2", ensemble=2),
            Variant("kd", ("training.distill.teacher={ckpt:base}",)),
        ),
    )
    result = run_study(study, epochs=1, overrides=TINY, out_dir=tmp_path / "mini", quiet=True)
    # base = member 0 (shared with tta 2 and ens 2), ensemble member 1, the distilled student
    assert result.trained == 3
    by = {r["variant"]: r for r in result.rows}
    assert by["tta 2"]["run_dir"] == by["base"]["run_dir"]
    assert by["ens 2"]["params"] == 2 * by["base"]["params"]
    kd_cfg = yaml.safe_load((Path(by["kd"]["run_dir"]) / "config.yaml").read_text())
    assert kd_cfg["training"]["distill"]["teacher"] == str(Path(by["base"]["run_dir"]) / "checkpoints" / "best.pt")
    members = sorted((tmp_path / "mini" / "inits").glob("*.pt"))
    assert len(members) == 2
    assert (tmp_path / "mini" / "lr.png").is_file()
