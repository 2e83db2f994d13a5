"""Deployment: ONNX export parity and refusal, metadata, INT8 quantization, pruning, benchmarks and their CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from imgcls.cli import main  # noqa: E402
from imgcls.config import build_config  # noqa: E402
from imgcls.engine.build import load_model  # noqa: E402
from imgcls.engine.checkpoint import load_checkpoint  # noqa: E402
from imgcls.engine.train import train  # noqa: E402
from imgcls.export.bench import init_checkpoint  # noqa: E402
from imgcls.export.onnx import (  # noqa: E402
    METADATA_KEY,
    ExportParityError,
    OnnxClassifier,
    export_checkpoint,
    load_exported,
    read_metadata,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """simple_cnn on digits (16x16) for 3 epochs: about 98% test accuracy in a few seconds on a quiet machine."""
    runs = tmp_path_factory.mktemp("deploy_runs")
    result = train(
        build_config(
            "quickstart",
            ["model.name=simple_cnn", "training.epochs=3", "run.progress=false", "run.tracker=none", f"run.dir={runs}"],
        )
    )
    return result.run_dir / "checkpoints" / "best.pt", result.test.acc


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    ckpt, _ = trained
    return export_checkpoint(ckpt, fmt="onnx", dynamic_batch=True, out=tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    from imgcls.export.quantize import quantize

    return quantize(exported.path, tmp_path_factory.mktemp("int8") / "model.int8.onnx", timing_seconds=0.05)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return init_checkpoint(
        tmp_path_factory.mktemp("tiny") / "tiny.pt", ["model.name=simple_cnn_tiny", "data.subset=300"]
    )


# --------------------------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------------------------


def test_onnx_matches_pytorch_at_batch_1_and_larger(trained, exported):
    ckpt, acc = trained
    assert acc >= 0.95
    report = exported.report
    assert report.passed and [c.batch_size for c in report.checks] == [1, 32]
    assert report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0
    assert all(c.acc_reference == c.acc_exported for c in report.checks)
    onnx.checker.check_model(str(exported.path), full_check=True)
    # an independent check on other images and batch sizes than the exporter's own
    model, ck = load_model(ckpt)
    clf = OnnxClassifier(exported.path)
    assert clf.static_batch is None
    x = torch.randn(7, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    for xs in (x[:1], x):
        out = clf(xs)
        assert out.shape == (len(xs), 10)
        assert (out - ref[: len(xs)]).abs().max() < 1e-4
        assert torch.equal(out.argmax(1), ref[: len(xs)].argmax(1))


def test_metadata_round_trip(trained, exported):
    ckpt = load_checkpoint(trained[0])
    meta = read_metadata(exported.path)
    assert meta == json.loads(json.dumps(exported.metadata))
    assert meta["classes"] == ckpt["classes"] == [str(i) for i in range(10)]
    assert meta["preprocess"] == ckpt["preprocess"]
    for key in ("image_size", "in_chans", "mean", "std", "interpolation"):
        assert key in meta["preprocess"]
    assert meta["dynamic_batch"] is True and meta["batch_size"] is None and meta["model"] == "simple_cnn"
    # stored as plain JSON in the model's metadata_props: readable by any ONNX tool
    props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert json.loads(props[METADATA_KEY])["preprocess"]["image_size"] == 16
    clf = OnnxClassifier(exported.path)
    assert clf.classes == ckpt["classes"] and clf.preprocess.mean == ckpt["preprocess"]["mean"]


def _corrupting_writer(good: Path):
    """A stand-in for the ONNX writer that writes a copy of a good export with one weight tensor changed."""

    def write(model, example, path, *, dynamic_batch, opset=None):
        m = onnx.load(str(good))
        init = max(
            (t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
            key=lambda t: int(np.prod(t.dims)),
        )
        arr = numpy_helper.to_array(init).copy()
        arr *= 1.5
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(m, str(path))
        return Path(path)

    return write


def test_export_refused_when_parity_fails(trained, exported, tmp_path, monkeypatch, capsys):
    import imgcls.export.onnx as onnx_mod

    monkeypatch.setattr(onnx_mod, "write_onnx", _corrupting_writer(exported.path))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportParityError) as info:
        export_checkpoint(trained[0], fmt="onnx", dynamic_batch=True, out=out)
    assert not info.value.report.passed and info.value.report.max_abs_diff > 1e-3
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no file, no temp file left behind
    # the command: non-zero exit, the numbers and the refusal on stderr, nothing written
    assert main(["export", str(trained[0]), "--dynamic-batch", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "export refused" in err and "max |dlogit|" in err and not out.exists()


def test_torchscript_and_torch_export_formats(tiny_ckpt, tmp_path):
    model, _ = load_model(tiny_ckpt)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    ts = export_checkpoint(tiny_ckpt, fmt="torchscript", out=tmp_path / "m.torchscript.pt", batch_size=1)
    pt2 = export_checkpoint(tiny_ckpt, fmt="torch-export", out=tmp_path / "m.pt2", dynamic_batch=True)
    for res in (ts, pt2):
        assert res.report.passed
        assert read_metadata(res.path)["classes"] == [str(i) for i in range(10)]
        runner = load_exported(res.path)
        assert torch.allclose(runner(x), ref, atol=1e-5)  # the static batch-1 TorchScript model runs in chunks
    assert read_metadata(ts.path)["batch_size"] == 1 and read_metadata(pt2.path)["dynamic_batch"] is True


def test_export_cli_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Quantization, pruning, benchmarks
# --------------------------------------------------------------------------------------------------------------------


def test_int8_accuracy_within_one_point_of_fp32(quantized):
    q = quantized
    assert q.acc_fp32 >= 0.95
    assert q.acc_int8 >= q.acc_fp32 - 0.01, q.lines()
    assert q.int8_bytes < q.fp32_bytes / 2  # int8 weights: about 4x smaller
    assert q.eval_split == "test" and q.eval_images > 100
    assert set(q.latency_int8_ms) == {1, 32}
    meta = read_metadata(q.int8_path)
    assert meta["quantization"]["format"] == "QDQ" and meta["quantization"]["per_channel"] is True
    assert meta["classes"] == [str(i) for i in range(10)]
    types = {n.op_type for n in onnx.load(str(q.int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    assert OnnxClassifier(q.int8_path).quantized


def test_prune_reaches_requested_sparsity(trained, tmp_path):
    from imgcls.export.prune import prune_checkpoint, sparsity

    res = prune_checkpoint(trained[0], amount=0.4, out=tmp_path / "p.pt")
    assert res.sparsity["weights"] == pytest.approx(0.4, abs=1e-3)
    assert res.acc_before >= 0.95 and res.acc_after is not None
    model, ckpt = load_model(res.path)  # a normal, self-describing checkpoint
    assert ckpt["pruning"]["amount"] == 0.4 and ckpt["classes"] == [str(i) for i in range(10)]
    assert not any(k.endswith(("_orig", "_mask")) for k in ckpt["model"])  # pruning made permanent
    assert sparsity(model)["weights"] == pytest.approx(0.4, abs=1e-3)

    res = prune_checkpoint(trained[0], amount=0.5, structured=True, out=tmp_path / "s.pt", evaluate_models=False)
    assert res.sparsity["conv_channels"] == pytest.approx(0.5, abs=0.01)
    assert res.acc_before is None


def test_prune_finetune_keeps_zeros(tiny_ckpt, tmp_path):
    from imgcls.export.prune import prune_checkpoint, sparsity

    res = prune_checkpoint(tiny_ckpt, amount=0.6, finetune_epochs=1, out=tmp_path / "ft.pt")
    assert len(res.epochs) == 1 and res.finetune_epochs == 1
    model, _ = load_model(res.path)
    assert sparsity(model)["weights"] == pytest.approx(0.6, abs=1e-3)  # fine-tuning did not regrow pruned weights


def test_prune_cli(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main(["prune", str(tiny_ckpt), "--amount", "0.25", "--no-eval", "--out", str(out)]) == 0
    assert "weight sparsity 25.00%" in capsys.readouterr().out and out.is_file()


def test_bench_table(trained, exported, quantized, capsys):
    from imgcls.export.bench import bench

    res = bench(
        trained[0],
        batch_sizes=(1, 4),
        backends=("eager", "onnx-fp32", "onnx-int8"),
        onnx_path=exported.path,
        int8_path=quantized.int8_path,
        min_seconds=0.02,
        warmup=1,
    )
    assert {(r.backend, r.batch_size) for r in res.rows} == {
        (b, n) for b in ("eager", "onnx-fp32", "onnx-int8") for n in (1, 4)
    }
    assert all(r.p95_ms >= r.p50_ms > 0 and r.images_per_s > 0 for r in res.rows)
    assert res.speedup("eager", 4) == pytest.approx(1.0)
    # an ONNX file as input: eager rows come from the checkpoint named in its metadata
    assert (
        main(["bench", str(exported.path), "--batch-sizes", "2", "--backends", "eager,onnx-fp32", "--seconds", "0.02"])
        == 0
    )
    out = capsys.readouterr().out
    assert "onnx-fp32" in out and "x eager" in out
