"""``imgcls serve RUN`` picks the fastest verified export beside the checkpoint (ONNX, INT8, OpenVINO) and says so in
/metadata; stale or foreign files are passed over with the reason; ``backend="pytorch"`` keeps the checkpoint."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fastapi.testclient import TestClient  # noqa: E402

from imgcls.export.bench import init_checkpoint  # noqa: E402
from imgcls.export.onnx import export_checkpoint  # noqa: E402
from imgcls.export.quantize import quantize_onnx  # noqa: E402
from imgcls.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A checkpoint with its ONNX FP32 and INT8 exports (and OpenVINO's, when installed) beside it."""
    d = tmp_path_factory.mktemp("beside")
    ckpt = init_checkpoint(d / "best.pt", ["model.name=simple_cnn_tiny"])
    onnx = export_checkpoint(ckpt, fmt="onnx", dynamic_batch=True, num_images=16).path
    quantize_onnx(onnx, num_calibration=32)
    try:
        from imgcls.export.openvino import export_openvino

        export_openvino(ckpt, num_images=16)
        export_openvino(ckpt, int8=True, num_images=16, num_calibration=32)
    except ImportError:
        pass
    return d


def png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def metadata(path: Path, **kw) -> tuple[dict, list[str]]:
    with TestClient(create_app(path, **kw)) as c:
        meta = c.get("/metadata").json()
        labels = [c.post("/predict", files={"file": ("x.png", png(i), "image/png")}).json() for i in range(3)]
    return meta, [r["predictions"][0]["label"] for r in labels]


def test_the_fastest_verified_export_predicts(folder):
    meta, labels = metadata(folder / "best.pt")
    backend = meta["backend"]
    timed = {c["name"]: c for c in backend["candidates"] if "skipped" not in c}
    expected = {"pytorch", "onnxruntime", "onnxruntime-int8"}
    if (folder / "best.xml").is_file():
        expected |= {"openvino", "openvino-int8"}
    assert set(timed) == expected, backend["candidates"]
    fastest = min(timed.values(), key=lambda c: c["ms_batch1"] + c["ms_batch8"])
    assert backend["name"] == fastest["name"] and backend["path"] == fastest["path"]
    assert meta["quantized"] == backend["name"].endswith("-int8") and meta["kind"] == "checkpoint"
    assert meta["gradcam"] is True  # Grad-CAM stays with the checkpoint's PyTorch model
    _, reference = metadata(folder / "best.pt", backend="pytorch")
    if not meta["quantized"]:
        assert labels == reference


def test_pytorch_backend_and_a_bare_checkpoint_keep_pytorch(folder, tmp_path):
    meta, _ = metadata(folder / "best.pt", backend="pytorch")
    assert meta["backend"]["name"] == "pytorch" and "candidates" not in meta["backend"]
    shutil.copy(folder / "best.pt", tmp_path / "best.pt")
    meta, _ = metadata(tmp_path / "best.pt")
    assert meta["backend"]["name"] == "pytorch" and meta["backend"]["why"] == "no exported model beside the checkpoint"


def test_stale_and_foreign_exports_are_passed_over(folder, tmp_path):
    # a copy of the folder: the exports name the original checkpoint as their source -> foreign here
    for f in folder.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta, _ = metadata(tmp_path / "best.pt")
    skipped = {c["name"]: c["skipped"] for c in meta["backend"]["candidates"] if "skipped" in c}
    assert meta["backend"]["name"] == "pytorch" and skipped["onnxruntime"].startswith("exported from")
    # the checkpoint written again after its exports -> stale
    ckpt = folder / "best.pt"
    old = ckpt.stat().st_mtime
    try:
        os.utime(ckpt, (old + 3600, old + 3600))
        meta, _ = metadata(ckpt)
        skipped = {c["name"]: c["skipped"] for c in meta["backend"]["candidates"] if "skipped" in c}
        assert meta["backend"]["name"] == "pytorch" and "stale" in skipped["onnxruntime-int8"]
    finally:
        os.utime(ckpt, (old, old))
