"""The server's web page as a person sees it, in headless Chromium on a desktop and a phone-sized viewport.

A tiny model is trained for a few seconds on the bundled digits, so the page serves a real run folder: its facts come
from the run's summary.json and the uploads are real digits. Each test checks what is shown and where (bounding boxes:
nothing overlaps, nothing is wider than the viewport, no tiny text), fails on any console error or CSP violation, and
saves a full-page screenshot of each state to ``tests/artifacts/page/`` (git-ignored; look at them after a run).

Playwright's Python package drives the system chromium (never ``playwright install``). Its ``wait_for_function``
needs eval, which the page's CSP forbids, so waits are locators and ``expect``; ``locator.evaluate`` runs through
the DevTools protocol, which the page's CSP does not govern, and builds the paste and drop events below.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from conftest import CHROMIUM, CHROMIUM_ARGS, TINY  # noqa: E402

from imgcls.config import build_config  # noqa: E402
from imgcls.engine.train import train  # noqa: E402
from imgcls.serve.app import create_app  # noqa: E402

expect = sync_api.expect

ARTIFACTS = Path(__file__).parent / "artifacts" / "page"
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
#: the server's pixel limit here: a 1100 x 1100 upload is over it ("too large")
MAX_PIXELS = 1024 * 1024
#: the smallest font size allowed for any text on the page, in CSS pixels
MIN_FONT_PX = 12
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------------------------------
# A trained run, its server, a browser
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """simple_cnn_tiny trained on digits for a few seconds (about 96% test accuracy), tested with 2 TTA views."""
    runs = tmp_path_factory.mktemp("page") / "runs"
    overrides = [*TINY, "data.subset=1500", "training.epochs=8", "run.test_tta=2", f"run.dir={runs}"]
    return train(build_config("quickstart", overrides)).run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(app) -> Iterator[str]:
    """``app`` served by uvicorn in a thread -> its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(run_dir):
    """The run folder, served -> its base URL."""
    with _serving(create_app(run_dir, max_pixels=MAX_PIXELS)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """One page in one viewport: the page, the console errors seen, screenshots."""

    def __init__(self, page, name: str, width: int) -> None:
        self.page, self.name, self.width = page, name, width
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def shot(self, state: str) -> Path:
        """The whole page as ``<viewport>-<state>.png``. Taken in a viewport made as tall as the page rather than
        with ``full_page=True``: Chromium renders that capture of an emulated phone with a fine pointer, so the page
        would show its desktop text (no vh units here, so the taller viewport lays the page out the same)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{state}.png"
        size = self.page.viewport_size
        height = self.page.locator("html").evaluate("e => e.scrollHeight")
        self.page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
        try:
            self.page.screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(size)
        return path

    def assert_no_errors(self, *allowed_statuses: int) -> None:
        """No console error and no CSP violation; only the failed loads of the given HTTP statuses (the page's own
        answers to bad uploads, which Chromium logs as errors) are expected."""
        allowed = tuple(f"status of {s} " for s in allowed_statuses)
        bad = [e for e in self.errors if not (e.startswith("Failed to load resource") and any(a in e for a in allowed))]
        assert not bad, bad


@pytest.fixture(params=list(VIEWPORTS))
def visit(request, browser, server):
    name = request.param
    context = browser.new_context(**VIEWPORTS[name])
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        v = Visit(page, name, VIEWPORTS[name]["viewport"]["width"])
        response = page.goto(server + "/")
        assert "script-src 'sha256-" in response.headers["content-security-policy"]
        expect(page.locator("#facts li").first).to_be_visible()  # /metadata answered and was shown
        yield v
    finally:
        context.close()


# --------------------------------------------------------------------------------------------------------------------
# Images and geometry
# --------------------------------------------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _digit(index: int, *, side: int = 16, colour: bool = False) -> tuple[str, bytes]:
    """One of sklearn's 8 x 8 digits as a ``side`` x ``side`` PNG (grey, or white ink on a blue ground) -> (name,
    bytes)."""
    d = load_digits()
    grey = Image.fromarray(np.clip(d.images[index] * 255 / 16, 0, 255).astype(np.uint8))
    grey = np.asarray(grey.resize((side, side), Image.BILINEAR))
    if colour:
        ink = grey[..., None] / 255.0
        grey = (ink * 255 + (1 - ink) * np.array([30, 60, 140])).astype(np.uint8)
    return f"digit-{d.target[index]}{'-colour' if colour else ''}.png", _png(grey)


def _files(tmp_path: Path, items: list[tuple[str, bytes]]) -> list[str]:
    paths = []
    for name, data in items:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    return paths


def _box(locator) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not displayed"
    return box


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def _assert_layout(v: Visit) -> None:
    """Header and drop zone apart, no horizontal scrolling, every box within the viewport's width, no tiny text."""
    page = v.page
    # a phone (a coarse pointer) is told to tap, a desktop to drop or paste
    expect(page.locator(".touch-only" if v.name == "phone" else ".mouse-only").first).to_be_visible()
    expect(page.locator(".mouse-only" if v.name == "phone" else ".touch-only").first).to_be_hidden()
    assert not _overlap(_box(page.locator("#header")), _box(page.locator("#drop")))
    assert not _overlap(_box(page.locator("#expects")), _box(page.locator("#drop")))
    scroll_width = page.locator("html").evaluate("e => e.scrollWidth")
    assert scroll_width <= v.width, f"the page scrolls sideways: {scroll_width} px wide in a {v.width} px viewport"
    for selector in ("#header", "#expects", "#drop", ".card", ".pred .prob", "figure"):
        for el in page.locator(selector).all():
            box = _box(el)
            assert box["x"] >= 0 and box["x"] + box["width"] <= v.width + 0.5, f"{selector} sticks out: {box}"
    sizes = page.locator("body *:not(script):not(style)").evaluate_all(
        "els => els.filter(e => e.offsetParent !== null && e.childNodes.length && [...e.childNodes]"
        ".some(n => n.nodeType === 3 && n.textContent.trim())).map(e => [e.tagName + '.' + e.className,"
        " parseFloat(getComputedStyle(e).fontSize)])"
    )
    tiny = [(what, px) for what, px in sizes if px < MIN_FONT_PX]
    assert sizes and not tiny, tiny


def _assert_result_card(card, classes: list[str]) -> None:
    """A finished card: five bars with class names and percentages, in falling order, none empty; the image, the
    model's input and the Grad-CAM overlay side by side, none of them on top of another or of the bars."""
    expect(card.locator(".fig-cam img[src^='data:image/png']")).to_be_visible(timeout=TIMEOUT_MS)
    expect(card.locator(".fig-model img[src^='data:image/png']")).to_be_visible()
    rows = card.locator(".pred")
    expect(rows).to_have_count(5)
    labels = card.locator(".pred .label").all_text_contents()
    assert all(label in classes for label in labels) and len(set(labels)) == 5
    probs = [float(t.rstrip("%").lstrip("<")) for t in card.locator(".pred .prob").all_text_contents()]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 100
    widths = [_box(b)["width"] for b in card.locator(".bar").all()]
    track = _box(card.locator(".track").first)["width"]
    assert all(w >= 2 for w in widths) and abs(widths[0] - track * probs[0] / 100) <= 3
    for label in card.locator(".pred .label").all():  # class names are short: none is cut off
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), label.text_content()
    for img in card.locator("img").all():
        assert img.evaluate("e => e.complete && e.naturalWidth > 0"), img.get_attribute("alt")
    parts = [_box(card.locator(s)) for s in (".fig-input", ".fig-model", ".fig-cam", ".preds")]
    assert not any(_overlap(a, b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    expect(card.locator(".card-error")).to_be_hidden()


# --------------------------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------------------------


def test_page_shows_the_model_before_any_upload(visit, run_dir):
    """The header has the model's facts from the run, the expectations are spelled out, the results are hidden."""
    page = visit.page
    summary = json.loads((run_dir / "summary.json").read_text())
    expect(page.locator("#model-name")).to_have_text("simple_cnn_tiny")
    facts = page.locator("#facts")
    expect(facts).to_contain_text("dataset digits")
    expect(facts).to_contain_text(f"test accuracy {100 * summary['test_acc']:.1f}% with TTA (2 views)")
    expect(facts).to_contain_text("Grad-CAM on")
    expect(page.locator("#expects-input")).to_have_text(
        "16×16 grayscale images, 10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    )
    expect(page.locator("#expects-note")).to_contain_text("1.0 megapixels")
    expect(page.locator("#drop")).to_be_visible()
    for hidden in ("#results", "#notice"):
        expect(page.locator(hidden)).to_be_hidden()
    # the file input is there for the keyboard and screen readers: focusable, but a transparent pixel
    box = _box(page.locator("#file"))
    assert box["width"] <= 1 and box["height"] <= 1
    assert page.locator("#file").evaluate("e => getComputedStyle(e).opacity") == "0"
    _assert_layout(visit)
    visit.shot("1-before-upload")
    visit.assert_no_errors()


def test_several_images_one_card_each(visit, tmp_path):
    """Three images through the file picker: three cards, each with five bars and a Grad-CAM overlay."""
    page = visit.page
    files = _files(tmp_path, [_digit(1700), _digit(1701), _digit(1702, side=48, colour=True)])
    page.set_input_files("#file", files)
    expect(page.locator("#results")).to_be_visible()
    cards = page.locator(".card")
    expect(cards).to_have_count(3)
    expect(page.locator("#count")).to_have_text("(3)")
    for card, path in zip(cards.all(), files, strict=True):
        expect(card.locator(".name")).to_have_text(Path(path).name)
        _assert_result_card(card, [str(i) for i in range(10)])
    # a trained model: most of these real test digits are read right
    right = sum(
        c.locator(".pred .label").first.text_content() == Path(f).stem.split("-")[1]
        for c, f in zip(cards.all(), files, strict=True)
    )
    assert right >= 2
    _assert_layout(visit)
    visit.shot("2-after-upload")
    page.locator("#clear").click()
    expect(page.locator("#results")).to_be_hidden()
    expect(cards).to_have_count(0)
    visit.assert_no_errors()


def test_bad_uploads_say_what_is_wrong(visit, tmp_path):
    """A text file named .png and an image over the pixel limit each get a visible error with the server's reason;
    the good image beside them is classified as usual."""
    page = visit.page
    big = _png(np.full((1100, 1100), 200, dtype=np.uint8))
    items = [_digit(1703), ("notes.png", b"these are my notes, not a picture\n"), ("huge.png", big)]
    page.set_input_files("#file", _files(tmp_path, items))
    cards = page.locator(".card")
    expect(cards).to_have_count(3)
    _assert_result_card(cards.nth(0), [str(i) for i in range(10)])
    for card, title, detail in (
        (cards.nth(1), "Not an image", "notes.png: not a supported image file (HTTP 415)"),
        (cards.nth(2), "Too large", "huge.png: image has 1100x1100 = 1,210,000 pixels, more than 1,048,576"),
    ):
        error = card.locator(".card-error")
        expect(error).to_be_visible()
        expect(error.locator("strong")).to_have_text(title)
        expect(error).to_contain_text(detail)
        expect(card.locator(".pred")).to_have_count(0)
        expect(card.locator(".fig-cam")).to_have_count(0)
    expect(cards.nth(1).locator(".fig-input .frame")).to_have_text("no preview")
    _assert_layout(visit)
    visit.shot("3-after-bad-upload")
    visit.assert_no_errors(413, 415)


PASTE_AND_DROP = """(el, [kind, name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: "image/png" }));
  if (kind === "paste") {
    el.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
  } else {
    for (const type of ["dragenter", "dragover", "drop"])
      el.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
  }
}"""


def test_paste_and_drag_and_drop(visit):
    """Ctrl+V of an image and a file dropped on the drop zone each add a card (the events a browser fires, with a
    File in their DataTransfer)."""
    page = visit.page
    name, data = _digit(1704)
    page.locator("body").evaluate(PASTE_AND_DROP, ["paste", "image.png", base64.b64encode(data).decode()])
    expect(page.locator(".card .name")).to_have_text(["pasted image 1.png"])
    page.locator("#drop").evaluate(PASTE_AND_DROP, ["drop", name, base64.b64encode(data).decode()])
    expect(page.locator(".card .name")).to_have_text(["pasted image 1.png", name])
    expect(page.locator("#drop")).not_to_have_class("over")
    for card in page.locator(".card").all():
        _assert_result_card(card, [str(i) for i in range(10)])
    # a paste without an image, and a drop without files, say so instead of doing nothing
    page.locator("body").evaluate(
        "el => { const d = new DataTransfer(); d.setData('text/plain', 'hello');"
        " el.dispatchEvent(new ClipboardEvent('paste', { clipboardData: d, bubbles: true })); }"
    )
    expect(page.locator("#notice")).to_contain_text("The clipboard holds no image")
    _assert_layout(visit)
    visit.shot("4-after-paste-and-drop")
    visit.assert_no_errors()


def test_onnx_model_page(browser, run_dir, tmp_path):
    """An ONNX export beside the run's checkpoint: the facts come from its metadata and the run's summary, the bars
    work, and each card says why there is no Grad-CAM (desktop only: the layout is the one tested above)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from imgcls.export.onnx import export_checkpoint

    onnx_path = export_checkpoint(run_dir / "checkpoints" / "best.pt", fmt="onnx", dynamic_batch=True).path
    context = browser.new_context(**VIEWPORTS["desktop"])
    try:
        with _serving(create_app(onnx_path)) as url:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            v = Visit(page, "desktop", VIEWPORTS["desktop"]["viewport"]["width"])
            page.goto(url + "/")
            facts = page.locator("#facts")
            expect(facts).to_contain_text("ONNX")
            expect(facts).to_contain_text("dataset digits")
            expect(facts).to_contain_text("with TTA (2 views)")
            expect(facts).to_contain_text("Grad-CAM off")
            page.set_input_files("#file", _files(tmp_path, [_digit(1705), _digit(1706)]))
            expect(page.locator(".card .pred")).to_have_count(10)
            expect(page.locator(".cam-note")).to_have_count(2)
            expect(page.locator(".fig-cam")).to_have_count(0)
            _assert_layout(v)
            v.shot("5-onnx-model")
            v.assert_no_errors()
    finally:
        context.close()
