"""The OpenVINO backend: ``imgcls export --format openvino`` (FP32 checked against PyTorch like ONNX, refused when it
differs; INT8 compared with FP32), its rows in ``imgcls bench``, and ``imgcls serve`` of an ``.xml``; a clear line
without the openvino package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")

from imgcls.cli import main  # noqa: E402
from imgcls.engine.build import load_model  # noqa: E402
from imgcls.export.bench import bench, init_checkpoint  # noqa: E402
from imgcls.export.onnx import ExportParityError, eval_loader, reference_view  # noqa: E402
from imgcls.export.openvino import OpenVinoClassifier, export_openvino  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("ov") / "tiny.pt", ["model.name=simple_cnn_tiny"])


def test_export_fp32_matches_pytorch_on_the_checkpoints_test_images(ckpt, capsys):
    assert main(["export", str(ckpt), "--format", "openvino", "--num-images", "32"]) == 0
    out = capsys.readouterr().out
    xml = ckpt.with_name("tiny.xml")
    assert "parity PASSED" in out and f"EXPORTED {xml}" in out and xml.with_suffix(".bin").is_file()
    clf = OpenVinoClassifier(xml, threads=1)
    assert clf.classes == [str(i) for i in range(10)] and clf.preprocess.image_size == 16 and not clf.quantized
    assert clf.static_batch is None  # dynamic batch: the server's batches of any size
    model, meta = load_model(ckpt, "cpu")
    view, _, _ = reference_view(meta["config"], limit=8)
    x, _ = next(iter(eval_loader(view, meta["preprocess"], 8)))  # 8 test images as the model gets them
    with torch.no_grad():
        assert (clf(x) - model.eval()(x)).abs().max() < 1e-4  # FP32 precision kept (not bf16, not FP16 weights)


def test_export_int8_reports_accuracy_and_agreement(ckpt, capsys):
    assert main(["export", str(ckpt), "--format", "openvino", "--int8", "--num-images", "32"]) == 0
    out = capsys.readouterr().out
    assert "INT8 vs FP32 (32 test images)" in out and "top-1 agreement" in out
    clf = OpenVinoClassifier(ckpt.with_name("tiny.int8.xml"), threads=1)
    assert clf.quantized and clf.metadata["quantization"]["calibration"] == "minmax"
    assert clf(torch.zeros(3, 1, 16, 16)).shape == (3, 10)


def test_a_model_that_differs_is_refused_and_not_written(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(OpenVinoClassifier, "__call__", lambda self, x: torch.zeros(x.shape[0], 10) + 1.0)
    out = tmp_path / "bad.xml"
    with pytest.raises(ExportParityError, match="does not match PyTorch"):
        export_openvino(ckpt, out, num_images=16)
    assert not out.exists() and not out.with_suffix(".bin").exists()


def test_bench_rows_next_to_onnxruntime(ckpt):
    res = bench(
        ckpt,
        backends=["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"],
        batch_sizes=[1, 4],
        min_seconds=0.02,
        warmup=1,
        threads=1,
    )
    names = {(r.backend, r.batch_size) for r in res.rows}
    assert {(b, bs) for b in ("openvino-fp32", "openvino-int8") for bs in (1, 4)} <= names
    assert res.speedup("openvino-fp32", 4, over="onnx-fp32") > 0 and not res.notes


def test_serve_an_openvino_model(ckpt):
    from fastapi.testclient import TestClient

    from imgcls.serve.app import create_app

    xml = ckpt.with_name("tiny.xml")
    if not xml.is_file():
        export_openvino(ckpt, num_images=16)
    with TestClient(create_app(xml)) as c:
        meta = c.get("/metadata").json()
        assert meta["kind"] == "openvino" and meta["backend"]["label"] == "OpenVINO" and meta["gradcam"] is False
        r = c.post("/predict", files={"file": ("z.png", _png(), "image/png")})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 5


def test_without_openvino_one_line(ckpt, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    assert main(["export", str(ckpt), "--format", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'imgcls[openvino]'" in err
    res = bench(ckpt, backends=["eager", "openvino-fp32"], batch_sizes=[1], min_seconds=0.01, warmup=1, threads=1)
    assert {r.backend for r in res.rows} == {"eager"} and any("imgcls[openvino]" in n for n in res.notes)


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
