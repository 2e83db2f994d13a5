"""INT8 post-training static quantization of an exported ONNX model with onnxruntime.

The FP32 model is first prepared with ``quant_pre_process`` (symbolic shape inference and graph optimisation, e.g.
folding BatchNorm into convolutions), then quantized with ``quantize_static`` in QDQ format: weights per output
channel as signed int8, activations as unsigned int8 (the u8s8 combination that onnxruntime's x86 kernels are fastest
with), ranges calibrated on training images passed through the eval transform. The result keeps the imgcls metadata
(plus a ``quantization`` entry) and is compared with FP32 on the checkpoint's test split: size, latency, accuracy.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.engine.loop import evaluate
from imgcls.export.onnx import (
    OnnxClassifier,
    eval_loader,
    export_checkpoint,
    read_metadata,
    reference_view,
    write_onnx_metadata,
)
from imgcls.export.timing import measure

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _calibration_reader(batches: Iterator[np.ndarray], input_name: str) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over float32 batches."""
    from onnxruntime.quantization import CalibrationDataReader  # optional: the [export] extra

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {input_name: batch}

    return _Reader()


def calibration_batches(
    metadata: dict[str, Any], *, num_images: int, batch_size: int, seed: int = 0
) -> list[np.ndarray]:
    """Float32 batches of ``num_images`` training images (a seeded random subset) with the eval transform."""
    view, _, _ = reference_view(metadata["config"], split="train", limit=num_images, shuffle_seed=seed)
    out = []
    for images, _ in eval_loader(view, metadata["preprocess"], batch_size):
        x = images.float().numpy()
        if len(x) < batch_size and metadata.get("batch_size"):  # static-batch models: pad the last batch
            x = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), dtype=x.dtype)])
        out.append(np.ascontiguousarray(x))
    return out


@dataclass
class QuantizeResult:
    fp32_path: Path
    int8_path: Path
    fp32_bytes: int
    int8_bytes: int
    acc_fp32: float | None = None
    acc_int8: float | None = None
    eval_split: str = ""
    eval_images: int = 0
    #: batch size -> median latency in ms
    latency_fp32_ms: dict[int, float] = field(default_factory=dict)
    latency_int8_ms: dict[int, float] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.fp32_bytes / max(self.int8_bytes, 1)

    def lines(self) -> list[str]:
        out = [
            f"size: FP32 {self.fp32_bytes / 1e6:.3f} MB -> INT8 {self.int8_bytes / 1e6:.3f} MB "
            f"({self.size_ratio:.2f}x smaller)"
        ]
        for bs in self.latency_fp32_ms:
            f, q = self.latency_fp32_ms[bs], self.latency_int8_ms[bs]
            out.append(f"latency batch {bs}: FP32 {f:.3f} ms -> INT8 {q:.3f} ms ({f / max(q, 1e-9):.2f}x faster)")
        if self.acc_fp32 is not None and self.acc_int8 is not None:
            out.append(
                f"accuracy ({self.eval_images} {self.eval_split} images): FP32 {self.acc_fp32:.4f} -> INT8 "
                f"{self.acc_int8:.4f} ({100 * (self.acc_int8 - self.acc_fp32):+.2f} points)"
            )
        return out


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path | None = None,
    *,
    num_calibration: int = 256,
    calibration_batch: int = 32,
    per_channel: bool = True,
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    seed: int = 0,
) -> Path:
    """Quantize an imgcls ONNX model to INT8 (static, QDQ, per-channel), calibrated on its training images.

    Args:
        fp32_path: the FP32 ``.onnx`` written by :func:`imgcls.export.onnx.export_checkpoint`.
        out: output path (default: ``<name>.int8.onnx`` beside the input).
        num_calibration: training images used to calibrate activation ranges.
        calibration_batch: batch size for calibration runs (a static model's own batch size wins).
        per_channel: one scale per output channel of each weight (more accurate for convolutions).
        reduce_range: 7-bit weights, which can help accuracy on CPUs without VNNI.
        calibrate_method: ``minmax``, ``entropy`` or ``percentile``.
        seed: which training images are drawn.

    Returns:
        The path of the INT8 model.
    """
    # optional: the [export] extra
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = Path(fp32_path)
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibrate_method}")
    meta = read_metadata(fp32_path)
    if "quantization" in meta:
        raise ValueError(f"{fp32_path} is already quantized")
    out = Path(out) if out is not None else fp32_path.with_name(fp32_path.name.removesuffix(".onnx") + ".int8.onnx")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[calibrate_method]
    batch = int(meta.get("batch_size") or calibration_batch)
    batches = calibration_batches(meta, num_images=num_calibration, batch_size=batch, seed=seed)
    input_name = meta.get("input", "input")
    with tempfile.TemporaryDirectory(prefix="imgcls-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(staged),
            _calibration_reader(iter(batches), input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        meta["quantization"] = {
            "type": "static",
            "format": "QDQ",
            "weights": "int8",
            "activations": "uint8",
            "per_channel": per_channel,
            "reduce_range": reduce_range,
            "calibration": calibrate_method,
            "calibration_images": num_calibration,
            "source": str(fp32_path),
        }
        write_onnx_metadata(staged, meta)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(out))
    return out


def compare_models(
    fp32: OnnxClassifier,
    int8: OnnxClassifier,
    *,
    eval_limit: int | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    timing_seconds: float = 1.0,
) -> dict[str, Any]:
    """Accuracy (through ``evaluate()``) on the test split and median latency per batch size of two ONNX models."""

    meta = fp32.metadata
    view, split, classes = reference_view(meta["config"], split="test", limit=eval_limit)
    res: dict[str, Any] = {"split": split, "images": len(view), "latency_fp32_ms": {}, "latency_int8_ms": {}}
    for key, model in (("acc_fp32", fp32), ("acc_int8", int8)):
        r = evaluate(
            model,
            eval_loader(view, meta["preprocess"], 64),
            device=torch.device("cpu"),
            num_classes=len(classes),
            multilabel=bool(meta.get("multilabel")),  # then the subset accuracy of the sigmoids
        )
        res[key] = r.acc
    pre = fp32.preprocess
    for bs in batch_sizes:
        x = torch.randn(bs, pre.in_chans, pre.image_size, pre.image_size)
        for key, model in (("latency_fp32_ms", fp32), ("latency_int8_ms", int8)):
            res[key][bs] = 1e3 * float(np.median(measure(model, x, min_seconds=timing_seconds)))
    return res


def quantize(
    model_path: str | Path,
    out: str | Path | None = None,
    *,
    num_calibration: int = 256,
    per_channel: bool = True,
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    evaluate_models: bool = True,
    eval_limit: int | None = None,
    timing_seconds: float = 1.0,
    threads: int | None = None,
) -> QuantizeResult:
    """``imgcls quantize``: INT8 model from an FP32 ONNX model or a checkpoint (exported first), with a comparison.

    Args:
        model_path: an imgcls ``.onnx`` file, or a checkpoint / run folder (exported to ONNX with a dynamic batch and
            verified first, beside the checkpoint).
        out: INT8 output path.
        num_calibration, per_channel, reduce_range, calibrate_method: see :func:`quantize_onnx`.
        evaluate_models: measure accuracy and latency of FP32 and INT8.
        eval_limit: evaluate on at most this many test images.
        timing_seconds: seconds of timing per model and batch size.
        threads: onnxruntime intra-op threads.
    """
    path = Path(model_path)
    if path.suffix != ".onnx":
        path = export_checkpoint(path, fmt="onnx", dynamic_batch=True).path
    int8_path = quantize_onnx(
        path,
        out,
        num_calibration=num_calibration,
        per_channel=per_channel,
        reduce_range=reduce_range,
        calibrate_method=calibrate_method,
    )
    result = QuantizeResult(
        fp32_path=path, int8_path=int8_path, fp32_bytes=path.stat().st_size, int8_bytes=int8_path.stat().st_size
    )
    if evaluate_models:
        cmp = compare_models(
            OnnxClassifier(path, threads),
            OnnxClassifier(int8_path, threads),
            eval_limit=eval_limit,
            timing_seconds=timing_seconds,
        )
        result.acc_fp32, result.acc_int8 = cmp["acc_fp32"], cmp["acc_int8"]
        result.eval_split, result.eval_images = cmp["split"], cmp["images"]
        result.latency_fp32_ms, result.latency_int8_ms = cmp["latency_fp32_ms"], cmp["latency_int8_ms"]
    return result
