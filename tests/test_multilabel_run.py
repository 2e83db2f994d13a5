"""A multi-label run end to end (issue #21): trained for a few seconds on the bundled digit_pairs, then its report
(per-class AP bars, PR curves, label co-occurrence) in headless Chromium, ``imgcls eval``, ``imgcls predict``, the
ONNX export's parity check on sigmoid outputs, the server's answer and the web page showing the labels."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.evaluate.multilabel_report import MULTILABEL_SECTIONS
from imgcls.evaluate.post_run import train_and_report

ARTIFACTS = Path(__file__).parent / "artifacts" / "page"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """simple_cnn on digit_pairs for 2 epochs (about 10 s; test mAP about 0.99), with the end-of-run report."""
    runs = tmp_path_factory.mktemp("multilabel") / "runs"
    overrides = [
        "data.name=digit_pairs",
        "training.epochs=2",
        "run.progress=false",
        "run.tracker=none",
        f"run.dir={runs}",
    ]
    return train_and_report(build_config("quickstart", overrides)).run_dir


def _pair_png(left: int, right: int) -> bytes:
    """A 16 x 16 image of two of sklearn's digits side by side, as digit_pairs composes them."""
    d = load_digits()
    pick = [int(np.flatnonzero(d.target == v)[-1]) for v in (left, right)]
    image = np.zeros((16, 16), dtype=np.uint8)
    for k, i in enumerate(pick):
        image[4:12, 8 * k : 8 * k + 8] = np.clip(d.images[i] * 255 / 16, 0, 255).round()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _sections(page: str) -> list[str]:
    import re

    return re.findall(r'<section id="([^"]+)"', page)


def test_report_and_metrics(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert summary["test_map_macro"] >= 0.95
    assert metrics["map_macro"] == pytest.approx(summary["test_map_macro"])  # one evaluation for both
    assert metrics["thresholds_tuned"] and metrics["cooccurrence"][3][3] == metrics["per_class"]["3"]["support"]
    page = (run_dir / "eval" / "report.html").read_text()
    assert _sections(page) == list(MULTILABEL_SECTIONS)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(run_dir, tmp_path):
    flags = [CHROMIUM, "--headless", *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'profile'}"]
    report = (run_dir / "eval" / "report.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", report], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0 and 'data-broken-images="0"' in dom.stdout
    assert "Uncaught" not in dom.stderr


def test_eval_cli_matches_sklearn(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "Hamming loss" in out
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # the AP of each class as scikit-learn computes it from the same PR curve points' ranking
    from imgcls.data.build import build_eval_loader
    from imgcls.engine.build import load_split
    from imgcls.engine.loop import evaluate

    model, ckpt, view, tf = load_split(run_dir / "checkpoints" / "best.pt")
    r = evaluate(
        model,
        build_eval_loader(view, tf, batch_size=256),
        device="cpu",
        num_classes=10,
        multilabel=True,
        return_outputs=True,
    )
    probs, y = r.log_probs.exp().numpy(), r.targets.numpy()
    assert m["map_macro"] == pytest.approx(average_precision_score(y, probs, average="macro"), abs=1e-9)


def test_predict_returns_the_labels_above_threshold(run_dir, tmp_path, capsys):
    image = tmp_path / "pair.png"
    image.write_bytes(_pair_png(3, 7))
    assert main(["predict", str(run_dir), str(image)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{image}: labels ")
    assert {part.split()[0] for part in line.split("labels ", 1)[1].split(", ")} == {"3", "7"}


def test_onnx_export_parity_on_sigmoid_outputs(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from imgcls.export.onnx import OnnxClassifier, export_checkpoint

    result = export_checkpoint(run_dir, fmt="onnx", out=tmp_path / "m.onnx", dynamic_batch=True)
    assert result.report.passed and result.report.top1_agreement == 1.0
    assert all(c.acc_reference == c.acc_exported for c in result.report.checks)
    meta = OnnxClassifier(result.path).metadata
    assert meta["multilabel"] is True and len(meta["thresholds"]) == 10
    # INT8: calibrated and compared through evaluate() on sigmoid outputs (subset accuracy of FP32 and INT8)
    from imgcls.export.quantize import quantize

    q = quantize(result.path, tmp_path / "m.int8.onnx", num_calibration=64, eval_limit=200, timing_seconds=0.05)
    assert q.acc_fp32 > 0.5 and abs(q.acc_int8 - q.acc_fp32) < 0.1
    assert OnnxClassifier(q.int8_path).metadata["multilabel"] is True


def test_server_answers_with_labels(run_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.serve.app import create_app

    with TestClient(create_app(run_dir)) as c:
        meta = c.get("/metadata").json()
        assert meta["multilabel"] is True and len(meta["thresholds"]) == 10
        assert meta["run"]["test_map_macro"] >= 0.95
        r = c.post("/predict", files={"file": ("pair.png", _pair_png(2, 9), "image/png")}).json()
        assert {lab["label"] for lab in r["labels"]} == {"2", "9"}
        assert all(lab["probability"] >= lab["threshold"] for lab in r["labels"])
        assert len(r["predictions"]) == 5  # the top-k of the independent probabilities, as before
        cam = c.post("/gradcam", files={"file": ("pair.png", _pair_png(2, 9), "image/png")}).json()
        assert {lab["label"] for lab in cam["labels"]} == {"2", "9"}


@pytest.mark.slow
def test_page_shows_the_labels_in_chromium(run_dir, tmp_path):
    """The web page in headless Chromium: a two-digit upload shows "labels: 4 (..), 6 (..)" above its bars."""
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from test_serve_page import _serving

    from imgcls.serve.app import create_app

    image = tmp_path / "pair-4-6.png"
    image.write_bytes(_pair_png(4, 6))
    with _serving(create_app(run_dir)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            sync_api.expect(page.locator("#facts")).to_contain_text("multi-label")
            sync_api.expect(page.locator("#facts")).to_contain_text("test mAP")
            page.locator("#file").set_input_files(str(image))
            labels = page.locator(".card .labels")
            sync_api.expect(labels).to_contain_text("labels:", timeout=30_000)
            text = labels.inner_text()
            assert "4 (" in text and "6 (" in text
            assert page.locator(".card .pred.top").count() == 2  # the two labels' bars are highlighted
            sync_api.expect(page.locator(".card figure.fig-cam img")).to_be_visible(timeout=30_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "multilabel-desktop.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
