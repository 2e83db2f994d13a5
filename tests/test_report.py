"""The evaluation report: written at the end of training and by ``imgcls eval``; every section; opens in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.evaluate.metrics import compute_metrics
from imgcls.evaluate.post_run import train_and_report as train
from imgcls.evaluate.report import REPORT_SECTIONS, confidently_wrong, render_report, write_report
from imgcls.evaluate.run_eval import run_eval

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
CHROMIUM = "/usr/bin/chromium"


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
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
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
