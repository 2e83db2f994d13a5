"""``imgcls export --format web``: the static folder, opened from file:// in headless Chromium, classifies the bundled
test images and uploaded ones (other sizes, RGB, transparency) with the probabilities ``imgcls predict`` gives.

onnxruntime-web comes from the npm registry with ``npm pack`` (npm keeps the tarball in its cache, so only the first
run on a machine downloads it; CI reaches the registry). A screenshot of the page goes to tests/artifacts/web/.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
sync_api = pytest.importorskip("playwright.sync_api")

from conftest import CHROMIUM, CHROMIUM_ARGS, TINY  # noqa: E402

from imgcls.cli import main  # noqa: E402
from imgcls.config import build_config  # noqa: E402
from imgcls.engine.train import train  # noqa: E402
from imgcls.evaluate.infer import Predictor  # noqa: E402
from imgcls.export import web  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts" / "web"
#: largest |probability difference| allowed between the page and imgcls predict (measured: 3.2e-7 over 9 images, so
#: the page's uint8 pixels equal imgcls's): float32 kernels in WebAssembly and on x86 differ in the last bits, and a
#: pixel rounded the other way in the resize would move a probability by about 1e-5
PROB_ATOL = 1e-4
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """simple_cnn_tiny trained on digits for a few seconds: confident, distinct predictions to compare."""
    runs = tmp_path_factory.mktemp("web") / "runs"
    overrides = [*TINY, "data.subset=1000", "training.epochs=6", f"run.dir={runs}"]
    return train(build_config("quickstart", overrides)).run_dir


@pytest.fixture(scope="module")
def site(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "web"
    assert main(["export", str(run_dir), "--format", "web", "--out", str(out), "--samples", "6"]) == 0
    return out


def uploads(folder: Path) -> list[Path]:
    """Images unlike the model's 16x16 grey input: a 40x30 RGB digit, a 23x23 RGBA one with a transparent border,
    an 8x8 grey one (upsampled), so the page's channel handling, compositing and resize are all exercised."""
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (size, mode) in enumerate([((40, 30), "RGB"), ((23, 23), "RGBA"), ((8, 8), "L")]):
        grey = Image.fromarray((digits.images[100 + k] * 16).clip(0, 255).astype(np.uint8), "L")
        im = grey.resize(size, Image.BILINEAR)
        if mode == "RGB":
            tint = np.asarray(im, dtype=np.float32)[:, :, None] * np.array([1.0, 0.8, 0.6])
            im = Image.fromarray(tint.astype(np.uint8), "RGB")
        elif mode == "RGBA":
            rgba = np.dstack([np.asarray(im)] * 3 + [np.full(im.size[::-1], 255, np.uint8)])
            rgba[:3, :, 3] = 0  # transparent top rows: composited on white
            rgba[3:5, :, 3] = 128
            im = Image.fromarray(rgba, "RGBA")
        path = folder / f"upload{k}-{mode}.png"
        im.save(path)
        out.append(path)
    return out


def test_export_writes_a_self_contained_folder(site, run_dir):
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    needed = {"index.html", "app.js", "imgcls.js", "imgcls.json", "model.js", "model.onnx", "ort/ort.wasm.min.js"}
    assert needed | {"ort/ort-wasm.js", "ort/package.json", "ort/SOURCE.json"} <= names
    info = json.loads((site / "imgcls.json").read_text())
    assert info["classes"] == [str(i) for i in range(10)] and info["preprocess"]["image_size"] == 16
    assert info["onnxruntime_web"]["version"] == web.ORT_WEB_VERSION and info["onnxruntime_web"]["integrity"]
    assert len(info["samples"]) == 6 and len({s["label"] for s in info["samples"]}) == 6  # one per class first
    page = (site / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no CDN, no server: every script is a file of the folder


def test_page_from_file_url_matches_imgcls_predict(site, run_dir, tmp_path, capsys):
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    files = uploads(tmp_path / "up")
    info = json.loads((site / "imgcls.json").read_text())
    samples = [site / s["file"] for s in info["samples"]]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((site / "index.html").as_uri())
            status = page.locator("#status")
            sync_api.expect(status).to_have_attribute("data-samples", "done", timeout=TIMEOUT_MS)
            page.locator("#pick").set_input_files([str(f) for f in files])
            cards = page.locator(".card.done")
            sync_api.expect(cards).to_have_count(len(samples) + len(files), timeout=TIMEOUT_MS)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-export.png"), full_page=True)
            shown = {
                c.locator("h3").inner_text(): (c.get_attribute("data-top1"), json.loads(c.get_attribute("data-probs")))
                for c in cards.all()
            }
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.split(":")[0] in ("file", "blob", "data") for u in requests), requests  # offline: nothing fetched
    predictor = Predictor.from_checkpoint(run_dir)  # what imgcls predict runs
    worst = 0.0
    for path in [*samples, *files]:
        ref = predictor.predict_proba(predictor.load_image(path)[None])[0].numpy()
        top1, probs = shown[path.name]
        worst = max(worst, float(np.abs(np.asarray(probs) - ref).max()))
        assert top1 == predictor.classes[int(ref.argmax())], path.name
    assert worst <= PROB_ATOL, worst
    assert max(max(p) for _, p in shown.values()) > 0.5  # a trained model: the comparison is not of flat outputs
    capsys.readouterr()
    assert main(["predict", str(run_dir), *map(str, samples + files), "--topk", "1"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[1].split()[0] for line in printed] == [shown[f.name][0] for f in samples + files]


def test_page_from_a_static_host_on_a_phone(site, run_dir):
    """The same folder served by a plain static file server (loopback), in a phone-sized viewport: the samples are
    classified as from file://, only the folder's own files are requested, nothing is wider than the screen."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
                errors, requests = [], []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("request", lambda r: requests.append(r.url))
                page.goto(base + "index.html")
                sync_api.expect(page.locator("#status")).to_have_attribute("data-samples", "done", timeout=TIMEOUT_MS)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "web-export-phone.png"), full_page=True)
                width = page.evaluate("document.documentElement.scrollWidth")
                top1 = {c.locator("h3").inner_text(): c.get_attribute("data-top1") for c in page.locator(".card").all()}
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
    assert not errors, errors
    assert all(u.startswith((base, "blob:", "data:")) for u in requests), requests
    assert width <= 390
    predictor = Predictor.from_checkpoint(run_dir)
    info = json.loads((site / "imgcls.json").read_text())
    for s in info["samples"]:
        ref = predictor.predict_proba(predictor.load_image(site / s["file"])[None])[0]
        assert top1[s["name"]] == predictor.classes[int(ref.argmax())]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002 - no access log in the test output
        pass


def test_npm_missing_or_failing_is_one_clear_line(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert main(["export", str(run_dir), "--format", "web", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "npm was not found" in err and "apt-get install npm" in err
    assert not (tmp_path / "w").exists()  # refused before any work
    with pytest.raises(web.WebExportError, match="is the npm registry reachable"):
        web.ort_web_files("0.0.0-no-such-version", npm=str(_fake_npm(tmp_path)))
    assert main(["export", str(run_dir), "--format", "web"]) == 2
    assert "--out DIR" in capsys.readouterr().err


def _fake_npm(tmp_path: Path) -> Path:
    """An npm that fails as npm does when the registry cannot be reached."""
    npm = tmp_path / "npm"
    npm.write_text(
        "#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\necho 'npm error network request failed' >&2\nexit 1\n"
    )
    npm.chmod(0o755)
    return npm
