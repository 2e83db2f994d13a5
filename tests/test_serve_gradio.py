"""The optional Gradio UI at /ui (``create_app(..., gradio_ui=True)``), and the clear error without gradio."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from imgcls.export.bench import init_checkpoint  # noqa: E402
from imgcls.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A randomly initialised simple_cnn_tiny on digits (as in test_serve.py): the UI does not care about accuracy."""
    return init_checkpoint(tmp_path_factory.mktemp("serve_gradio") / "tiny.pt", ["model.name=simple_cnn_tiny"])


def digit_image() -> Image.Image:
    """An 8x8 scikit-learn digit, scaled to 0..255 and enlarged to 24x24."""
    from sklearn.datasets import load_digits

    img = load_digits().images[3]
    return Image.fromarray((img * (255 / 16)).astype(np.uint8), mode="L").resize((24, 24), Image.NEAREST)


def test_gradio_ui_mounted_and_matches_predict(ckpt):
    pytest.importorskip("gradio")
    app = create_app(ckpt, max_batch=4, max_wait_ms=1, gradio_ui=True)
    image = digit_image()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with TestClient(app) as client:
        r = client.get("/ui/")
        assert r.status_code == 200, r.text[:500]
        assert "text/html" in r.headers["content-type"] and "gradio" in r.text.lower()
        assert client.get("/health").json()["status"] == "ok"  # the API still answers
        api = client.post("/predict", files={"file": ("digit.png", buf.getvalue(), "image/png")}, params={"topk": 10})
        assert api.status_code == 200, api.text
        ui = app.state.gradio_predict(image)
    assert isinstance(ui, dict) and sorted(ui) == sorted(str(i) for i in range(10))
    assert sum(ui.values()) == pytest.approx(1.0, abs=1e-4)
    preds = api.json()["predictions"]
    assert max(ui, key=ui.get) == preds[0]["label"]
    for p in preds:  # same path as /predict: the same probabilities
        assert ui[p["label"]] == pytest.approx(p["probability"], abs=1e-5)
    assert app.state.gradio_predict(None) == {}


def test_gradio_ui_without_gradio_raises_clear_error(ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'imgcls\[gradio\]'"):
        create_app(ckpt, gradio_ui=True)


def test_serve_cli_has_gradio_flag():
    import argparse

    from imgcls.cli.serve import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    assert parser.parse_args(["serve", "m.pt", "--gradio"]).gradio is True
    assert parser.parse_args(["serve", "m.pt"]).gradio is False
