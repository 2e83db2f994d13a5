"""OpenVINO backend: ``imgcls export --format openvino`` (FP32, verified like ONNX) and its INT8 model.

The FP32 model is the checkpoint's verified ONNX export read by OpenVINO's ONNX frontend (``Core.read_model``) and
saved as OpenVINO IR (``.xml`` + ``.bin``) with FP32 weights (``save_model`` would otherwise halve them to FP16). The
imgcls metadata (classes, preprocessing, config) travels in the IR's ``rt_info`` under ``imgcls``. The IR is then
checked like an ONNX export: compiled for the CPU and compared with PyTorch on the checkpoint's own test images at
batch 1 and 32 (max |dlogit| <= atol, equal top-1); a failing one is removed.

INT8: the checkpoint's INT8 ONNX model from :func:`imgcls.export.quantize.quantize_onnx` (static, QDQ, per-channel,
calibrated on its training images) read by OpenVINO, whose low-precision transformations turn the QuantizeLinear /
DequantizeLinear pairs into FakeQuantize and run the convolutions in int8. One calibration serves both runtimes; the
INT8 IR is compared with FP32 on the test split (accuracy, top-1 agreement), as ``imgcls quantize`` does. (NNCF's
``quantize`` would calibrate again, and it and OpenVINO's model converter start telemetry senders; reading the
ONNX files does not.)

Models are compiled with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 (AVX512-BF16, AMX) OpenVINO would run
FP32 models in bf16 by default, which does not pass a 1e-3 logit check. Thread count: ``INFERENCE_NUM_THREADS`` (one
stream, latency hint), as onnxruntime's intra-op threads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.config import UserFacingError
from imgcls.data.loaders import PreprocessInfo
from imgcls.engine.build import load_model
from imgcls.engine.checkpoint import CheckpointError
from imgcls.engine.loop import evaluate
from imgcls.export.onnx import (
    ExportParityError,
    ParityReport,
    _in_chunks,
    check_parity,
    eval_loader,
    export_checkpoint,
    read_metadata,
    reference_view,
)
from imgcls.export.quantize import quantize_onnx

RT_INFO_KEY = "imgcls"
MISSING = "OpenVINO is not installed: pip install 'imgcls[openvino]'"


class OpenVinoMissingError(UserFacingError):
    """The openvino package is not installed."""


def _ov() -> Any:
    try:
        import openvino as ov  # optional: the [openvino] extra
    except ImportError as e:
        raise OpenVinoMissingError(MISSING) from e
    return ov


def default_openvino_path(checkpoint_path: str | Path, *, int8: bool = False) -> Path:
    """``runs/x/checkpoints/best.pt`` -> ``best.xml`` (``best.int8.xml``) beside it (the weights: ``.bin``)."""
    p = Path(checkpoint_path)
    stem = p.name.removesuffix(".pt").removesuffix(".pth")
    return p.with_name(stem + (".int8.xml" if int8 else ".xml"))


def _save(model: Any, metadata: dict[str, Any], xml: Path) -> Path:
    """Save an OpenVINO model as IR at ``xml`` (+ ``.bin``) with FP32 weights and the metadata in its rt_info."""
    ov = _ov()
    model.set_rt_info(json.dumps(metadata, default=str), [RT_INFO_KEY])
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def _move_ir(src: Path, dst: Path) -> None:
    """Move an IR (``.xml`` and its ``.bin``): the weights first, so a present ``.xml`` always has its ``.bin``."""
    shutil.move(str(src.with_suffix(".bin")), str(dst.with_suffix(".bin")))
    shutil.move(str(src), str(dst))


class OpenVinoClassifier:
    """An OpenVINO IR compiled for the CPU as a classifier callable: float images [B, C, S, S] (torch) -> logits.

    Args:
        path: an ``.xml`` written by :func:`export_openvino` (its rt_info gives classes and preprocessing).
        threads: inference threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ov = _ov()
        self.path = Path(path)
        core = ov.Core()
        model = core.read_model(str(path))
        if not model.has_rt_info([RT_INFO_KEY]):
            raise ValueError(f"{path} has no '{RT_INFO_KEY}' metadata: was it exported with imgcls export?")
        self.metadata: dict[str, Any] = json.loads(model.get_rt_info([RT_INFO_KEY]).astype(str))
        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": "f32",  # not bf16 on CPUs that have it: parity with PyTorch
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        shape = model.input(0).get_partial_shape()
        self.static_batch: int | None = shape[0].get_length() if shape[0].is_static else None

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def preprocess(self) -> PreprocessInfo:
        return PreprocessInfo(**self.metadata["preprocess"])

    @property
    def quantized(self) -> bool:
        return "quantization" in self.metadata

    def run_numpy(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, C, S, S] -> float32 logits [B, K]."""
        out = self.request.infer([np.ascontiguousarray(images, dtype=np.float32)])
        return np.array(out[self.compiled.output(0)], copy=True)  # the request reuses its buffer next call

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(images.detach().cpu().float().numpy()))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.static_batch is not None and images.shape[0] != self.static_batch:
            return _in_chunks(self._run, images, self.static_batch)  # an IR read from a static-batch ONNX file
        return self._run(images)


@dataclass
class OpenVinoExport:
    path: Path
    metadata: dict[str, Any]
    report: ParityReport | None
    #: INT8 only: accuracy of FP32 and INT8 and their top-1 agreement on the test split
    comparison: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        out = self.report.lines() if self.report is not None else []
        if self.comparison:
            c = self.comparison
            out.append(
                f"INT8 vs FP32 ({c['images']} {c['split']} images): accuracy {c['acc_fp32']:.4f} -> {c['acc_int8']:.4f}"
                f" ({100 * (c['acc_int8'] - c['acc_fp32']):+.2f} points), top-1 agreement {c['agreement']:.2%}"
            )
        return out


def ir_from_onnx(onnx_path: str | Path, xml: str | Path) -> Path:
    """Read an imgcls ONNX file with OpenVINO and save it as IR at ``xml``, carrying its metadata."""
    ov = _ov()
    meta = read_metadata(onnx_path)
    model = ov.Core().read_model(str(onnx_path))
    return _save(model, {**meta, "export_format": "openvino"}, Path(xml))


def export_openvino(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    int8: bool = False,
    atol: float = 1e-3,
    num_images: int = 128,
    num_calibration: int = 256,
    threads: int | None = None,
) -> OpenVinoExport:
    """Export a checkpoint to OpenVINO IR (FP32, or INT8 with ``int8``), verified on its own test images.

    Args:
        checkpoint: a checkpoint file or run folder.
        out: the ``.xml`` to write (default: beside the checkpoint, :func:`default_openvino_path`).
        int8: write the INT8 model (calibrated on ``num_calibration`` training images) instead of FP32.
        atol: the largest allowed |logit difference| of FP32 vs PyTorch.
        num_images: test images for the checks.
        num_calibration: training images for INT8 calibration.
        threads: OpenVINO threads during the checks.

    Raises:
        OpenVinoMissingError: openvino is not installed.
        ExportParityError: the FP32 IR does not match PyTorch; nothing is left at ``out``.
        ExportError, CheckpointError: as for the ONNX export.
    """
    _ov()
    model, ckpt = load_model(checkpoint, "cpu")
    model = model.float().eval()
    out_path = Path(out) if out is not None else default_openvino_path(ckpt["path"], int8=int8)
    if out_path.suffix != ".xml":
        raise UserFacingError(f"an OpenVINO model is an .xml file (with its .bin beside it), not {out_path.name}")
    with tempfile.TemporaryDirectory(prefix="imgcls-ov-") as tmp:
        onnx = export_checkpoint(checkpoint, fmt="onnx", dynamic_batch=True, out=Path(tmp) / "model.onnx", atol=atol)
        staged = Path(tmp) / "model.xml"
        try:
            view, split, _ = reference_view(ckpt["config"], split="test", limit=max(num_images, 16))
        except (FileNotFoundError, OSError) as e:
            raise CheckpointError(f"cannot verify the export: the checkpoint's data is not available ({e})") from e
        pre = PreprocessInfo(**ckpt["preprocess"])
        comparison = None
        if int8:
            q = quantize_onnx(onnx.path, Path(tmp) / "model.int8.onnx", num_calibration=num_calibration)
            ir_from_onnx(q, staged)
            comparison = _compare(OpenVinoClassifier(staged, threads), model, view, pre, split, len(ckpt["classes"]))
            report = None
        else:
            ir_from_onnx(onnx.path, staged)
            report = check_parity(
                model,
                OpenVinoClassifier(staged, threads),
                view,
                pre,
                num_classes=len(ckpt["classes"]),
                batch_sizes=(1, 32),
                images_per_batch_size=(16, num_images),
                atol=atol,
                split=split,
            )
            if not report.passed:
                raise ExportParityError(
                    f"export refused: the OpenVINO model does not match PyTorch (max |dlogit| {report.max_abs_diff:.3g}"
                    f" > {atol:g} or top-1 agreement {report.top1_agreement:.2%} < 100%); {out_path} was not written",
                    report,
                )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _move_ir(staged, out_path)
    return OpenVinoExport(path=out_path, metadata=read_ir_metadata(out_path), report=report, comparison=comparison)


def _compare(
    int8: OpenVinoClassifier, reference: torch.nn.Module, view: Any, pre: PreprocessInfo, split: str, k: int
) -> dict[str, Any]:
    """Accuracy of PyTorch FP32 and the INT8 IR on ``view`` through ``evaluate()``, and their top-1 agreement."""
    preds, accs = {}, {}
    for key, fn in (("fp32", reference), ("int8", int8)):
        r = evaluate(fn, eval_loader(view, pre, 32), device=torch.device("cpu"), num_classes=k, return_outputs=True)
        accs[key], preds[key] = r.acc, r.log_probs.argmax(1)
    agree = float((preds["fp32"] == preds["int8"]).float().mean())
    return {"split": split, "images": len(view), "acc_fp32": accs["fp32"], "acc_int8": accs["int8"], "agreement": agree}


def read_ir_metadata(xml: str | Path) -> dict[str, Any]:
    """The imgcls metadata of an OpenVINO IR. Raises ``ValueError`` if it has none."""
    model = _ov().Core().read_model(str(xml))
    if not model.has_rt_info([RT_INFO_KEY]):
        raise ValueError(f"{xml} has no '{RT_INFO_KEY}' metadata: was it exported with imgcls export?")
    return json.loads(model.get_rt_info([RT_INFO_KEY]).astype(str))
