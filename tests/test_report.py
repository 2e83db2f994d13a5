"""The evaluation report: written at the end of training and by ``imgcls eval``; every section; opens in Chromium."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CHROMIUM, CHROMIUM_ARGS

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.evaluate.metrics import compute_metrics
from imgcls.evaluate.post_run import train_and_report as train
from imgcls.evaluate.report import REPORT_SECTIONS, confidently_wrong, render_report, write_report
from imgcls.evaluate.run_eval import run_eval
from imgcls.evaluate.training_curves import plot_training_curves

TINY = [
    "data.name=digits",
    "data.subset=300",
    "data.batch_size=32",
    "model.name=simple_cnn_tiny",
    "training.epochs=2",
    "training.optimizer.lr=0.05",
    "run.progress=false",
    "run.tracker=none",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny training run shared by the tests of this module (its end writes eval/report.html)."""
    tmp = tmp_path_factory.mktemp("report_runs")
    return train(build_config("quickstart", [*TINY, f"run.dir={tmp}"])).run_dir


def _sections(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z-]+)">', page)


def test_training_ends_with_the_report(run_dir):
    page = (run_dir / "eval" / "report.html").read_text()
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert _sections(page) == list(REPORT_SECTIONS)
    assert metrics["split"] == "test" and metrics["checkpoint"].endswith("best.pt")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["test_acc"])  # the same best checkpoint and split
    assert metrics["nll"] == pytest.approx(summary["test_loss"], abs=1e-5)
    # every figure is embedded: confusion, reliability, per-class, training curves, most-confused, gallery images
    assert page.count("data:image/png;base64,") >= 5 + 2
    training = page.split('<section id="training-curves">')[1].split("</section>")[0]
    assert "data:image/png;base64," in training
    gallery = page.split('<section id="confidently-wrong">')[1].split("</section>")[0]
    assert "Grad-CAM (stages.1)" in gallery and gallery.count("class='card'") == 12
    assert "<script" in page and "http://" not in page and "https://" not in page  # self-contained
    # the run's resolved config, collapsed, every section of it there
    config = page.split('<section id="config">')[1].split("</section>")[0]
    assert "<details id='resolved-config'><summary>Resolved config: simple_cnn_tiny on digits, 2 epochs" in config
    body = yaml.safe_load(html.unescape(config.split("<pre>")[1].split("</pre>")[0]))
    assert body["model"]["name"] == "simple_cnn_tiny" and body["training"]["optimizer"]["lr"] == 0.05
    assert body["data"]["subset"] == 300 and {"data", "model", "training", "augmentation", "run"} <= set(body)


def test_report_flag_off(tmp_path):
    overrides = [
        *TINY,
        "training.epochs=1",
        "data.subset=100",
        "run.eval_test=false",
        "run.report=false",
        f"run.dir={tmp_path}",
    ]
    run = train(build_config("quickstart", overrides)).run_dir
    assert (run / "summary.json").is_file() and not (run / "eval").exists()


def test_run_eval_tta_ensembles_and_metrics(run_dir, tmp_path):
    plain, m_plain = run_eval(run_dir, out_dir=tmp_path / "plain", quiet=True)
    assert (tmp_path / "plain" / "report.html").is_file()
    saved = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    keys = (
        "accuracy",
        "top5",
        "nll",
        "ece",
        "brier",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_weighted",
        "roc_auc_macro",
        "per_class",
        "per_class_accuracy",
        "calibration",
        "confusion_matrix",
        "most_confused",
        "classification_report",
        "checkpoint",
        "split",
        "tta",
    )
    for key in keys:
        assert key in saved, key
    assert saved["accuracy"] == pytest.approx(plain.acc) and saved["nll"] == pytest.approx(plain.loss)
    assert len(saved["calibration"]["counts"]) == 15
    # an ensemble of the checkpoint with itself is the checkpoint
    best = str(run_dir / "checkpoints" / "best.pt")
    pair, m_pair = run_eval(run_dir, ensemble=[best], report=False, out_dir=tmp_path / "pair", quiet=True)
    torch.testing.assert_close(pair.log_probs, plain.log_probs, atol=1e-5, rtol=0)
    assert m_pair["members"] == [best, best] and not (tmp_path / "pair" / "report.html").exists()
    # weight averaging of the run's best and last
    _, m_w = run_eval(run_dir, ensemble_mode="weights", report=False, out_dir=tmp_path / "w", quiet=True)
    assert [Path(p).name for p in m_w["members"]] == ["best.pt", "last.pt"] and m_w["ensemble_mode"] == "weights"
    tta, m_tta = run_eval(run_dir, tta=3, report=False, out_dir=tmp_path / "tta", quiet=True)
    assert m_tta["tta"] == 3 and tta.num_samples == plain.num_samples


def test_eval_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(["eval", str(run_dir), "--split", "val", "--tta", "2", "--ensemble-mode", "weights", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "macro F1" in text and "ECE" in text and "report written" in text
    assert json.loads((out / "metrics.json").read_text())["split"] == "val"
    assert main(["eval", str(run_dir), "--no-report", "--out", str(tmp_path / "nr")]) == 0
    assert not (tmp_path / "nr" / "report.html").exists()


def test_report_without_run_or_model_and_gallery_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 3, (40,), generator=g)
    probs = torch.randn(40, 3, generator=g).softmax(1)
    metrics = compute_metrics(probs, t, ["a", "b<c", "d"])  # a class name that needs escaping
    path = write_report(tmp_path / "r.html", metrics=metrics, title="toy & test")
    page = path.read_text()
    assert _sections(page) == list(REPORT_SECTIONS)
    assert "no metrics.csv" in page and "toy &amp; test" in page and "b&lt;c" in page
    assert "no config: the checkpoint and the run folder have none" in page
    assert "b<c" not in page
    idx = confidently_wrong(probs, t, k=5)
    conf = probs.max(1).values
    assert all(probs[i].argmax() != t[i] for i in idx)
    assert [float(conf[i]) for i in idx] == sorted((float(conf[i]) for i in idx), reverse=True)
    perfect = compute_metrics(torch.nn.functional.one_hot(t, 3).float(), t, ["a", "b", "d"])
    page = render_report(title="p", metrics=perfect, figures={}, gallery=[], gallery_method=None)
    assert "no wrong predictions" in page and "no mistakes" in page


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(run_dir, tmp_path):
    report = run_dir / "eval" / "report.html"
    flags = [
        CHROMIUM,
        "--headless",
        *CHROMIUM_ARGS,
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-broken-images="0"' in dom.stdout  # the page's script ran and every embedded PNG decoded
    assert _sections(dom.stdout) == list(REPORT_SECTIONS)
    assert "Uncaught" not in dom.stderr
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [*flags, "--window-size=1200,3000", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0 and shot.stat().st_size > 50_000
    from PIL import Image

    assert Image.open(shot).size == (1200, 3000)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_one_final_evaluation_shared_by_summary_and_report_and_tta_is_labelled(tmp_path, monkeypatch, capsys):
    """The test split is evaluated once at the end of training; summary.json and the report read that one pass (so
    they agree exactly), and a number that includes TTA says so wherever it is shown."""
    import imgcls.evaluate.run_eval as run_eval_module

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the report evaluated the test split again")

    monkeypatch.setattr(run_eval_module, "evaluate", no_second_pass)
    overrides = [*TINY, "training.epochs=1", "run.test_tta=2", f"run.dir={tmp_path}"]
    assert main(["train", "quickstart", *overrides]) == 0
    out = capsys.readouterr().out
    (run,) = list(tmp_path.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == summary["test_acc"] and metrics["nll"] == summary["test_loss"]
    assert summary["test_tta"] == 2 and metrics["tta"] == 2
    assert "loss" in out and ", TTA 2 views) from the best checkpoint" in out
    assert "(test, TTA 2 views: accuracy" in out and "(TTA 2 views)" in out.split("TEST ACCURACY")[1].splitlines()[0]


def _write_metrics(folder: Path, val_acc: list[float], *, ema: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc", "lr"])
        for i, acc in enumerate(val_acc):
            ema_cells = [1.1 - acc, acc - 0.01] if ema else ["", ""]
            w.writerow([i + 1, 2.0 - 0.2 * i, 0.3 + 0.1 * i, 1.0 - acc, acc, *ema_cells, 0.05 * (1 - i / len(val_acc))])
    return path


def _panel_lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_training_curves_have_a_legend_whole_epochs_and_the_best_epoch(tmp_path):
    """Each panel has a legend in words (train, val, EMA val), whole-number epoch ticks, and a dashed line at the
    epoch of the checkpoint the report evaluates, labelled with its score."""
    csv_path = _write_metrics(tmp_path / "run", [0.5, 0.7, 0.9, 0.85, 0.8])
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"best_epoch": 3, "best_val_acc": 0.9}))
    fig = plot_training_curves(csv_path)
    loss, acc, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate (end of epoch)"]
    for ax, expected in ((loss, ["train", "val", "EMA val"]), (acc, ["train", "val", "EMA val"]), (lr, ["lr"])):
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [*expected, "best epoch 3 (val_acc 0.9)"]
        marker = _panel_lines(ax)["best epoch 3 (val_acc 0.9)"]
        assert list(marker.get_xdata()) == [3, 3] and marker.get_linestyle() == "--"
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 5]
        assert ticks == [1, 2, 3, 4, 5] and ax.get_xlabel() == "epoch" and ax.get_ylabel()
    assert lr.get_ylim()[0] == 0.0 and lr.yaxis.get_major_formatter()(0.0375, 0) == "0.0375"
    # no summary.json (an unfinished run): the best of the monitored column, and the label says where it came from
    csv_path = _write_metrics(tmp_path / "unfinished", [0.5, 0.7, 0.6], ema=False)
    fig = plot_training_curves(csv_path)
    assert "best epoch 2 (val_acc 0.7, from metrics.csv)" in _panel_lines(fig.axes[1])
    assert "EMA val" not in _panel_lines(fig.axes[1])  # an empty column is not drawn
    fig = plot_training_curves(csv_path, config={"training": {"early_stopping": {"monitor": "val_loss"}}})
    assert "best epoch 2 (val_loss 0.3, from metrics.csv)" in _panel_lines(fig.axes[0])
    # chosen by the EMA model's score: the label says so
    ema = {"training": {"ema": {"enabled": True, "use_for_best": True}}}
    fig = plot_training_curves(tmp_path / "run" / "metrics.csv", config=ema)
    assert "best epoch 3 (EMA val_acc 0.9)" in _panel_lines(fig.axes[0])
