"""The inference server: endpoints, input limits, micro-batching and the bounded queue (the web page in a browser:
tests/test_serve_page.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from fastapi import HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from imgcls.export.bench import init_checkpoint  # noqa: E402
from imgcls.serve.app import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_REQUEST_PIXELS, create_app  # noqa: E402
from imgcls.serve.decode import FORMATS, DecodeBudget  # noqa: E402

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A randomly initialised simple_cnn_tiny on digits (1x16x16, 10 classes) in the checkpoint format: the server
    does not care whether the weights are trained."""
    return init_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt", ["model.name=simple_cnn_tiny"])


def png_bytes(size: tuple[int, int] = (24, 24), mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(ckpt):
    app = create_app(ckpt, max_batch=8, max_wait_ms=2, max_body_bytes=200_000, max_pixels=512 * 512)
    with TestClient(app) as c:
        yield c


# --------------------------------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------------------------------


def test_health_and_metadata(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["classes"] == CLASSES and meta["kind"] == "checkpoint" and meta["num_classes"] == 10
    assert meta["preprocess"]["image_size"] == 16 and meta["preprocess"]["in_chans"] == 1
    assert meta["limits"]["max_batch"] == 8 and meta["limits"]["max_pixels"] == 512 * 512
    # the facts the web page shows: no summary.json beside this bare checkpoint, so no run numbers
    assert meta["dataset"] == "digits" and meta["weights"] == "random-init" and meta["run"] is None
    assert "png" in meta["formats"] and "jpeg" in meta["formats"]


def test_metadata_has_the_runs_test_numbers(ckpt, tmp_path):
    """A checkpoint in a run's checkpoints/ (or the run folder itself) -> the test numbers of its summary.json; a
    summary of another model, or a broken one, is not passed on."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "best.pt")
    summary = {"model": "simple_cnn_tiny", "dataset": "digits", "test_acc": 0.875, "test_top5": 0.99, "test_tta": 2}
    (run / "summary.json").write_text(json.dumps(summary))
    for path in (run, run / "checkpoints" / "best.pt"):
        with TestClient(create_app(path)) as c:
            facts = c.get("/metadata").json()["run"]
        assert facts["test_acc"] == 0.875 and facts["test_tta"] == 2 and facts["best_epoch"] is None
    for text in (json.dumps({**summary, "model": "resnet18"}), "{not json", "[1, 2]"):
        (run / "summary.json").write_text(text)
        with TestClient(create_app(run)) as c:
            assert c.get("/metadata").json()["run"] is None


def test_predict_top_k(client, ckpt, tmp_path):
    from imgcls.evaluate.infer import Predictor

    r = client.post("/predict", files={"file": ("digit.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 5 and all(p["label"] in CLASSES for p in preds)
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    # the server's split preprocessing (uint8 resize per image, normalisation per batch) equals `imgcls predict`'s
    (tmp_path / "d.png").write_bytes(png_bytes())
    pred = Predictor.from_checkpoint(ckpt)
    ref = pred.topk(pred.predict_proba(pred.load_image(tmp_path / "d.png")[None]), 5)[0]
    assert [p["label"] for p in preds] == [label for label, _ in ref]
    assert np.allclose(probs, [p for _, p in ref], atol=1e-5)
    r = client.post("/predict?topk=3", files={"file": ("rgb.jpg", _jpeg(), "image/jpeg")})  # RGB -> 1 channel
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def _jpeg(size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_predict_batch_matches_single(client):
    images = [png_bytes(seed=s) for s in range(3)]
    r = client.post("/predict/batch", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["0.png", "1.png", "2.png"]
    for b, res in zip(images, results, strict=True):
        single = client.post("/predict", files={"file": ("x.png", b, "image/png")}).json()["predictions"]
        assert [p["label"] for p in single] == [p["label"] for p in res["predictions"]]
        assert np.allclose(
            [p["probability"] for p in single], [p["probability"] for p in res["predictions"]], atol=1e-5
        )


def test_gradcam_overlay(client):
    pytest.importorskip("imgcls.explain.gradcam")
    assert client.get("/metadata").json()["gradcam"] is True
    r = client.post("/gradcam", files={"file": ("digit.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in CLASSES and body["label"] == body["predictions"][0]["label"]
    assert body["overlay"].startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"].split(",", 1)[1])))
    assert overlay.mode == "RGB" and min(overlay.size) >= 16
    # what the model was given: the 16 x 16 grayscale image, before normalisation
    model_input = Image.open(io.BytesIO(base64.b64decode(body["input"].split(",", 1)[1])))
    assert model_input.mode == "L" and model_input.size == (16, 16)
    r = client.post("/gradcam?class_index=3", files={"file": ("digit.png", png_bytes(), "image/png")})
    assert r.status_code == 200 and r.json()["label"] == "3"


def test_index_page(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="file"' in r.text and "/predict" in r.text
    assert "<script src" not in r.text and "https://" not in r.text  # self-contained: no CDN, works offline


# --------------------------------------------------------------------------------------------------------------------
# Limits and errors
# --------------------------------------------------------------------------------------------------------------------


def test_oversize_body_413(client):
    big = b"\0" * 300_000
    r = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413
    # without Content-Length (chunked upload): the limit is enforced while the body streams in
    boundary = "imgclsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(30):
            yield b"\0" * 20_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413


def test_too_many_pixels_413(client):
    r = client.post("/predict", files={"file": ("huge.png", _flat_png(1024, 600), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]


def _flat_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")  # compresses to a few hundred bytes
    return buf.getvalue()


def test_wrong_type_415(client):
    r = client.post("/predict", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 415
    # claims to be an image, is not (e.g. a pickle): never unpickled, just not decodable as an image
    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    r = client.post("/predict", files={"file": ("model.png", buf.getvalue(), "image/png")})
    assert r.status_code == 415


def test_truncated_image_422(client):
    data = _jpeg((64, 64))
    r = client.post("/predict", files={"file": ("cut.jpg", data[: len(data) // 2], "image/jpeg")})
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    png = png_bytes((64, 64), seed=3)
    r = client.post("/predict", files={"file": ("cut.png", png[: len(png) // 2], "image/png")})
    assert r.status_code == 422


def test_empty_400_and_missing_field_422(client):
    r = client.post("/predict", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400
    assert client.post("/predict").status_code == 422
    assert client.post("/predict", files={"other": ("x.png", png_bytes(), "image/png")}).status_code == 422


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_allowed_format_decodes(client, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(buf, format=fmt)
    r = client.post("/predict", files={"file": (f"x.{fmt.lower()}", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 200, r.text


def test_other_formats_415(client):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PCX")  # Pillow reads it, the server does not open it
    r = client.post("/predict", files={"file": ("x.pcx", buf.getvalue(), "image/x-pcx")})
    assert r.status_code == 415


def test_request_pixel_cap_413_before_decoding(ckpt):
    app = create_app(ckpt, max_pixels=300 * 300, max_request_pixels=3 * 300 * 300)
    service = app.state.service
    decoded = []
    inner = service.decode
    service.decode = lambda *a, **k: decoded.append(1) or inner(*a, **k)
    with TestClient(app) as c:
        three = [("files", (f"{i}.png", _flat_png(300, 300), "image/png")) for i in range(3)]
        assert c.post("/predict/batch", files=three).status_code == 200
        assert len(decoded) == 3
        r = c.post("/predict/batch", files=[*three, ("files", ("3.png", _flat_png(300, 300), "image/png"))])
        assert r.status_code == 413 and "in one request" in r.json()["detail"]
        assert len(decoded) == 3  # nothing decoded for the rejected request
        assert c.get("/metadata").json()["limits"]["max_request_pixels"] == 3 * 300 * 300


def test_large_images_are_reduced_while_decoding(client):
    service = client.app.state.service  # simple_cnn_tiny: 16 px input, so images shrink to 64..127 px per side
    png = _flat_png(1000, 250)
    image, x = service.decode(png, "image/png", "wide.png")
    assert tuple(x.shape) == (1, 16, 16) and tuple(image.shape) == (1, 84, 67)  # box factors 15 and 3
    small = png_bytes((100, 100))  # within 2 x 64 per side: decoded as it is, exactly as `imgcls predict` would
    image, _ = service.decode(small, "image/png", "small.png")
    assert tuple(image.shape) == (1, 100, 100)
    buf = io.BytesIO()
    Image.new("RGB", (600, 400), (200, 30, 30)).save(buf, format="JPEG")
    header = service.probe(buf.getvalue(), "image/jpeg", "photo.jpg", min_side=service.min_side)
    assert header.draft_scale == 4 and header.pixels == 600 * 400 and header.decoded_pixels == 150 * 100
    r = client.post("/gradcam", files={"file": ("photo.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text  # Grad-CAM keeps enough of a large image for its overlay


def test_decode_budget_over_the_whole_budget_413(ckpt):
    with TestClient(create_app(ckpt, max_decode_bytes=2**20)) as c:
        r = c.post("/predict", files={"file": ("big.png", _flat_png(1000, 1000), "image/png")})  # ~5 MB to decode
        assert r.status_code == 413 and "decode budget" in r.json()["detail"]
        assert c.post("/predict", files={"file": ("ok.png", png_bytes(), "image/png")}).status_code == 200


def test_decode_budget_waits_in_order_then_503():
    async def scenario() -> tuple[list[str], HTTPException]:
        budget = DecodeBudget(100, wait_s=0.2)
        order: list[str] = []
        await budget.acquire(60)

        async def waiter(name: str, n: int) -> None:
            await budget.acquire(n)
            order.append(name)

        a = asyncio.create_task(waiter("a", 50))  # waits for the first 60
        await asyncio.sleep(0)
        b = asyncio.create_task(waiter("b", 10))  # would fit now, but queues behind a (arrival order)
        await asyncio.sleep(0.05)
        assert order == [] and budget.in_use == 60
        budget.release(60)
        await asyncio.gather(a, b)
        assert budget.in_use == 60 and budget.peak == 60
        with pytest.raises(HTTPException) as busy:
            await budget.acquire(50)  # 40 free, and nobody releases within wait_s
        assert budget.in_use == 60 and not budget.waiters
        return order, busy.value

    order, busy = asyncio.run(scenario())
    assert order == ["a", "b"]
    assert busy.status_code == 503 and busy.headers == {"Retry-After": "1"} and "busy" in busy.detail


def test_unexpected_error_is_a_json_500_with_headers(ckpt):
    app = create_app(ckpt, max_batch=1, max_wait_ms=0)

    def broken(batch):
        raise RuntimeError("model exploded")

    app.state.service.forward = broken
    with TestClient(app) as c:
        r = c.post("/predict", files={"file": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert r.headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------------------------------------------------
# Security headers and the docs switch
# --------------------------------------------------------------------------------------------------------------------

SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def _assert_security_headers(r: httpx.Response) -> str:
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (r.request.method, r.request.url.path, r.status_code, name)
    return r.headers["content-security-policy"]


def test_security_headers_on_every_response(client):
    png = png_bytes()
    responses = [
        client.get("/health"),
        client.get("/metadata"),
        client.post("/predict", files={"file": ("x.png", png, "image/png")}),
        client.post("/predict/batch", files=[("files", ("x.png", png, "image/png"))]),
        client.post("/gradcam", files={"file": ("x.png", png, "image/png")}),
        client.get("/nowhere"),  # 404
        client.delete("/predict"),  # 405
        client.post("/predict"),  # 422
        client.post("/predict", files={"file": ("x.txt", b"text", "text/plain")}),  # 415
        client.post("/predict", files={"file": ("big.png", b"\0" * 300_000, "image/png")}),  # 413 from the middleware
        client.get("/openapi.json"),
    ]
    assert {r.status_code for r in responses} >= {200, 404, 405, 413, 415, 422}
    for r in responses:
        assert _assert_security_headers(r) == "default-src 'none'; frame-ancestors 'none'"
    page = client.get("/")
    csp = _assert_security_headers(page)
    script = page.text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "'unsafe-inline'" not in csp
    assert "img-src 'self' blob: data:" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn.jsdelivr.net" in _assert_security_headers(docs)


def test_docs_switch(ckpt):
    with TestClient(create_app(ckpt, docs=False)) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            r = c.get(path)
            assert r.status_code == 404, path
            _assert_security_headers(r)
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_serve_cli_limits_and_docs_flags():
    import argparse

    from imgcls.cli.serve import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["serve", "m.pt"])
    assert args.docs is True and args.max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS
    assert args.max_decode_mb * 2**20 == DEFAULT_MAX_DECODE_BYTES
    args = parser.parse_args(["serve", "m.pt", "--no-docs", "--max-request-pixels", "1000", "--max-decode-mb", "64"])
    assert args.docs is False and args.max_request_pixels == 1000 and args.max_decode_mb == 64


# --------------------------------------------------------------------------------------------------------------------
# Micro-batching and the bounded queue
# --------------------------------------------------------------------------------------------------------------------


def _counting(service, delay: float = 0.0):
    calls: list[int] = []
    inner = service.forward

    def forward(batch):
        calls.append(batch.shape[0])
        if delay:
            time.sleep(delay)
        return inner(batch)

    service.forward = forward
    return calls


async def _post_many(app, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
        files = [{"file": (f"{i}.png", png_bytes(seed=i), "image/png")} for i in range(n)]
        try:
            return await asyncio.gather(*(ac.post("/predict", files=f) for f in files))
        finally:
            await app.state.service.batcher.stop()


def test_micro_batching_batches_concurrent_requests(ckpt):
    # adaptive (the default): the first request finds the model idle and goes alone; the others arrive while the
    # (slowed) model is busy and go together
    app = create_app(ckpt, max_batch=16)
    calls = _counting(app.state.service, delay=0.2)
    responses = asyncio.run(_post_many(app, 12))
    assert all(r.status_code == 200 for r in responses)
    assert sum(calls) == 12 and len(calls) <= 3 and max(calls) >= 6, calls  # 12 requests, a few model calls
    assert app.state.service.batcher.max_wait == 0

    app = create_app(ckpt, max_batch=1, max_wait_ms=0)
    calls = _counting(app.state.service)
    responses = asyncio.run(_post_many(app, 6))
    assert all(r.status_code == 200 for r in responses) and calls == [1] * 6


def test_queue_full_503(ckpt):
    app = create_app(ckpt, max_batch=1, max_wait_ms=0, max_queue=2)
    calls = _counting(app.state.service, delay=0.3)
    responses = asyncio.run(_post_many(app, 8))
    codes = [r.status_code for r in responses]
    assert codes.count(503) >= 3 and codes.count(200) >= 2, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers.get("retry-after") == "1" and "queue" in busy.json()["detail"]
    assert len(calls) == codes.count(200)


# --------------------------------------------------------------------------------------------------------------------
# ONNX models
# --------------------------------------------------------------------------------------------------------------------


def test_serve_onnx_model(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from imgcls.export.onnx import export_checkpoint

    onnx_path = export_checkpoint(ckpt, fmt="onnx", dynamic_batch=True, out=tmp_path / "tiny.onnx").path
    with TestClient(create_app(onnx_path)) as c:
        meta = c.get("/metadata").json()
        assert meta["kind"] == "onnx" and meta["classes"] == CLASSES and meta["gradcam"] is False
        assert meta["dataset"] == "digits" and meta["run"] is None  # from the export's metadata; no summary beside it
        r = c.post("/predict", files={"file": ("d.png", png_bytes(), "image/png")})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5
        with TestClient(create_app(ckpt)) as torch_client:
            ref = torch_client.post("/predict", files={"file": ("d.png", png_bytes(), "image/png")}).json()
        assert [p["label"] for p in r.json()["predictions"]] == [p["label"] for p in ref["predictions"]]
        assert c.post("/gradcam", files={"file": ("d.png", png_bytes(), "image/png")}).status_code == 501
