"""Export a checkpoint to ONNX (or TorchScript / torch.export) and refuse the export unless it matches PyTorch.

The exported file carries what a deployment needs besides the weights: class names and preprocessing (input size,
channels, mean/std, interpolation) as JSON in the ONNX model's ``metadata_props`` under the key ``imgcls`` (for
TorchScript and ``.pt2`` files: an extra file ``imgcls.json`` inside the archive), together with the checkpoint's
resolved config, so that quantization and benchmarks can rebuild the same data splits from the exported file alone.

After writing, the export is verified on real images from the checkpoint's own test split (val, then train, when
there is none): the ONNX model passes ``onnx.checker``, then runs in onnxruntime at batch size 1 and at a larger
batch through :func:`imgcls.engine.loop.evaluate` next to the PyTorch model, and the largest absolute logit
difference and the top-1 agreement are compared with the tolerances. A failing export is removed and
:class:`ExportParityError` raised: a file at the output path has always passed the check.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import from_dict
from imgcls.data.build import build_eval_loader, build_splits, eval_transform_of
from imgcls.data.datasets import SplitView
from imgcls.data.loaders import PreprocessInfo
from imgcls.engine.build import load_model
from imgcls.engine.checkpoint import CheckpointError
from imgcls.engine.loop import evaluate

#: key of the JSON metadata in ONNX ``metadata_props`` and name of the extra file in TorchScript/.pt2 archives
METADATA_KEY = "imgcls"
METADATA_FILE = "imgcls.json"
METADATA_FORMAT = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FORMATS = ("onnx", "torchscript", "torch-export")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "torch-export": ".pt2"}


class ExportError(RuntimeError):
    """The model could not be exported (e.g. an operation the exporter does not support); nothing was written."""


class ExportParityError(ExportError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance; the file was removed."""

    def __init__(self, message: str, report: ParityReport | None = None) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------------


def export_metadata(ckpt: dict[str, Any], *, fmt: str, dynamic_batch: bool, batch_size: int | None) -> dict[str, Any]:
    """The JSON-safe description stored with an exported model.

    Args:
        ckpt: a loaded checkpoint (``classes``, ``preprocess``, ``config``).
        fmt: export format name.
        dynamic_batch: whether the batch dimension is dynamic.
        batch_size: the fixed batch size of a static export (None when dynamic).
    """
    return {
        "format": METADATA_FORMAT,
        "export_format": fmt,
        "classes": [str(c) for c in ckpt["classes"]],
        "preprocess": dict(ckpt["preprocess"]),
        "model": ckpt["config"]["model"]["name"],
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_batch": bool(dynamic_batch),
        "batch_size": None if dynamic_batch else int(batch_size or 1),
        "source_checkpoint": str(ckpt.get("path", "")),
        "config": ckpt["config"],
        # multi-label models: the outputs are per-label logits (sigmoid), with the thresholds tuned on val
        "multilabel": bool(ckpt.get("multilabel")),
        "thresholds": ckpt.get("thresholds"),
    }


def write_onnx_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as JSON under :data:`METADATA_KEY` in an ONNX file's ``metadata_props`` (in place)."""
    import onnx  # optional: the [export] extra

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps(metadata, default=str)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The imgcls metadata of an exported model (ONNX, TorchScript or .pt2). Raises ``ValueError`` if it has none."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx  # optional: the [export] extra

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: was it exported with imgcls export?")
        return json.loads(props[METADATA_KEY])
    extra = {METADATA_FILE: ""}
    if path.suffix == ".pt2":
        torch.export.load(str(path), extra_files=extra)
    else:
        with _quiet_jit():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path} has no {METADATA_FILE}: was it exported with imgcls export?")
    raw = extra[METADATA_FILE]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


@contextlib.contextmanager
def _quiet_jit():  # noqa: ANN202
    """TorchScript is deprecated upstream (FutureWarning on every call); the format is still asked for, so say it
    once in the CLI help rather than on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        yield


def preprocess_from_metadata(metadata: dict[str, Any]) -> PreprocessInfo:
    return PreprocessInfo(**metadata["preprocess"])


# --------------------------------------------------------------------------------------------------------------------
# Running exported models
# --------------------------------------------------------------------------------------------------------------------


def _in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int) -> torch.Tensor:
    """Run a static-batch model on any number of images: chunks of ``batch``, the last one zero-padded."""
    outs = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start : start + batch]
        n = chunk.shape[0]
        if n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros(batch - n, *chunk.shape[1:])])
        outs.append(fn(chunk)[:n])
    return torch.cat(outs)


def ort_session_options(threads: int | None = None) -> Any:
    """onnxruntime session options: ``threads`` intra-op threads (default: torch's), one inter-op thread."""
    import onnxruntime as ort  # optional: the [export] extra

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxClassifier:
    """An onnxruntime session as a classifier callable: float images [B, C, S, S] (torch) -> logits [B, K] (torch).

    Usable wherever a model is, e.g. :func:`imgcls.engine.loop.evaluate`. Static-batch models are fed in chunks of
    their batch size.

    Args:
        path: an ``.onnx`` file exported by imgcls (its metadata gives classes and preprocessing).
        threads: intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort  # optional: the [export] extra

        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), sess_options=ort_session_options(threads), providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: was it exported with imgcls export?")
        self.metadata: dict[str, Any] = json.loads(meta[METADATA_KEY])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.static_batch: int | None = inp.shape[0] if isinstance(inp.shape[0], int) else None

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def preprocess(self) -> PreprocessInfo:
        return preprocess_from_metadata(self.metadata)

    @property
    def quantized(self) -> bool:
        return "quantization" in self.metadata

    def run_numpy(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, C, S, S] -> float32 logits [B, K] (B must equal a static model's batch size)."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(images.detach().cpu().float().numpy()))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.static_batch is not None and images.shape[0] != self.static_batch:
            return _in_chunks(self._run, images, self.static_batch)
        return self._run(images)


class TorchExportedClassifier:
    """A TorchScript or torch.export (.pt2) file as a classifier callable (static batches fed in chunks)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(path)
        if self.path.suffix == ".pt2":
            self.module = torch.export.load(str(path)).module()
        else:
            with _quiet_jit():
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.static_batch: int | None = self.metadata.get("batch_size")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().cpu().float()
        if self.static_batch is not None and images.shape[0] != self.static_batch:
            return _in_chunks(self.module, images, self.static_batch)
        return self.module(images)


def load_exported(path: str | Path, threads: int | None = None) -> OnnxClassifier | TorchExportedClassifier:
    """An exported model file as a classifier callable (by suffix: .onnx, .pt2, else TorchScript)."""
    return OnnxClassifier(path, threads) if Path(path).suffix == ".onnx" else TorchExportedClassifier(path)


# --------------------------------------------------------------------------------------------------------------------
# Reference data: the checkpoint's own splits
# --------------------------------------------------------------------------------------------------------------------


def reference_view(
    config: dict[str, Any], *, split: str = "test", limit: int | None = None, shuffle_seed: int | None = None
) -> tuple[SplitView, str, list[str]]:
    """Images of a checkpoint's split, rebuilt deterministically from its resolved config.

    Args:
        config: the resolved config dict stored in a checkpoint or export.
        split: ``test``, ``val`` or ``train``; for test/val, the first of test -> val -> train that exists.
        limit: keep at most this many images.
        shuffle_seed: take a random (seeded) subset rather than the first ``limit`` (e.g. for calibration).

    Returns:
        (view, name of the split used, class names)
    """

    cfg = from_dict(config)
    splits = build_splits(cfg)
    order = {"test": ("test", "val", "train"), "val": ("val", "test", "train"), "train": ("train",)}[split]
    name, view = next(
        (n, getattr(splits, n)) for n in order if getattr(splits, n) is not None and len(getattr(splits, n))
    )
    indices = view.indices
    if shuffle_seed is not None:
        indices = np.random.default_rng(shuffle_seed).permutation(indices)
    if limit is not None:
        indices = indices[:limit]
    return SplitView(view.source, np.asarray(indices)), name, list(splits.classes)


def eval_loader(view: SplitView, preprocess: PreprocessInfo | dict[str, Any], batch_size: int) -> Any:
    """A deterministic loader of (normalised images, labels) with the eval transform of ``preprocess``."""

    p = preprocess if isinstance(preprocess, PreprocessInfo) else PreprocessInfo(**preprocess)
    tf = eval_transform_of(p)
    return build_eval_loader(view, tf, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ParityCheck:
    """One comparison of exported vs PyTorch outputs at one batch size."""

    batch_size: int
    num_images: int
    max_abs_diff: float  # largest |logit difference| over all images and classes
    top1_agreement: float  # fraction of images with the same arg-max
    acc_reference: float
    acc_exported: float


@dataclass
class ParityReport:
    checks: list[ParityCheck]
    atol: float
    min_top1_agreement: float
    split: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)

    @property
    def top1_agreement(self) -> float:
        return min(c.top1_agreement for c in self.checks)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_top1_agreement

    def lines(self) -> list[str]:
        out = [
            f"batch {c.batch_size:>3}: {c.num_images} {self.split} images, max |dlogit| {c.max_abs_diff:.3g}, "
            f"top-1 agreement {c.top1_agreement:.2%}, acc pytorch {c.acc_reference:.4f} / exported "
            f"{c.acc_exported:.4f}"
            for c in self.checks
        ]
        verdict = "PASSED" if self.passed else "FAILED"
        out.append(
            f"parity {verdict}: max |dlogit| {self.max_abs_diff:.3g} (tolerance {self.atol:g}), top-1 "
            f"agreement {self.top1_agreement:.2%} (required {self.min_top1_agreement:.0%})"
        )
        return out


class _Recording:
    """Wraps a classifier callable and keeps its raw logits (evaluate() only returns probabilities)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.logits: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.fn(images)
        self.logits.append(out.detach().float().cpu())
        return out


def check_parity(
    reference: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    exported: Callable[[torch.Tensor], torch.Tensor],
    view: SplitView,
    preprocess: PreprocessInfo | dict[str, Any],
    *,
    num_classes: int,
    batch_sizes: Sequence[int] = (1, 32),
    images_per_batch_size: Sequence[int] = (16, 128),
    atol: float = 1e-3,
    min_top1_agreement: float = 1.0,
    split: str = "test",
    multilabel: bool = False,
) -> ParityReport:
    """Compare an exported model with the reference on real images, at each batch size, through ``evaluate()``.

    For a multi-label model (``multilabel``: sigmoid outputs) "top-1 agreement" is the share of images whose whole
    set of labels at 0.5 (the logits' signs) is the same, and the accuracies are subset accuracies.

    Args:
        reference: the PyTorch model (eval mode, CPU).
        exported: the exported model as a callable (e.g. :class:`OnnxClassifier`).
        view: the images to use.
        preprocess: eval preprocessing.
        num_classes: K.
        batch_sizes: batch sizes to run (1 and a larger one by default).
        images_per_batch_size: how many images each batch size sees.
        atol: the largest allowed absolute logit difference.
        min_top1_agreement: the smallest allowed fraction of equal arg-max predictions.
        split: name of the split, for the report.
    """

    if isinstance(reference, nn.Module):
        reference.eval()
    checks = []
    for bs, n in zip(batch_sizes, images_per_batch_size, strict=True):
        sub = SplitView(view.source, view.indices[:n])
        ref, exp = _Recording(reference), _Recording(exported)
        device = torch.device("cpu")
        kw = dict(device=device, num_classes=num_classes, multilabel=multilabel)
        r_ref = evaluate(ref, eval_loader(sub, preprocess, bs), **kw)
        r_exp = evaluate(exp, eval_loader(sub, preprocess, bs), **kw)
        a, b = torch.cat(ref.logits), torch.cat(exp.logits)
        same = ((a > 0) == (b > 0)).all(1) if multilabel else a.argmax(1) == b.argmax(1)
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        checks.append(
            ParityCheck(
                batch_size=bs,
                num_images=len(sub),
                max_abs_diff=float(diff),
                top1_agreement=float(same.float().mean()) if len(same) else 1.0,
                acc_reference=r_ref.acc,
                acc_exported=r_exp.acc,
            )
        )
    return ParityReport(checks=checks, atol=atol, min_top1_agreement=min_top1_agreement, split=split)


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _example_input(preprocess: PreprocessInfo, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, preprocess.in_chans, preprocess.image_size, preprocess.image_size, generator=g)


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def write_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, *, dynamic_batch: bool, opset: int | None = None
) -> Path:
    """Export ``model`` to one self-contained ONNX file with the dynamo-based exporter (``torch.onnx.export``).

    The input is named ``input`` [B, C, S, S] and the output ``logits`` [B, K]; with ``dynamic_batch`` B is
    symbolic, otherwise it is ``example``'s batch size.
    """
    path = Path(path)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: _batch_dim()},)
    # the exporter prints progress lines to stdout; the CLI prints its own summary
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    return path


def write_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Trace ``model`` to TorchScript (batch size free unless the model fixes it) with the metadata inside."""
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata, default=str)})
    return Path(path)


def write_torch_export(
    model: nn.Module, example: torch.Tensor, path: str | Path, metadata: dict[str, Any], *, dynamic_batch: bool
) -> Path:
    """``torch.export`` the model and save the ExportedProgram (.pt2) with the metadata inside."""
    shapes = ({0: _batch_dim()},) if dynamic_batch else None
    ep = torch.export.export(model, (example,), dynamic_shapes=shapes)
    torch.export.save(ep, str(path), extra_files={METADATA_FILE: json.dumps(metadata, default=str)})
    return Path(path)


def default_export_path(checkpoint_path: str | Path, fmt: str) -> Path:
    """``runs/x/checkpoints/best.pt`` -> ``runs/x/checkpoints/best.onnx`` (``.torchscript.pt``, ``.pt2``)."""
    p = Path(checkpoint_path)
    return p.with_name(p.name.removesuffix(".pt").removesuffix(".pth") + _SUFFIX[fmt])


def _write_export(
    fmt: str,
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    metadata: dict[str, Any],
    *,
    dynamic_batch: bool,
    opset: int | None,
) -> str:
    """Write ``model`` in format ``fmt`` with its metadata to ``path``; returns what onnx.checker said ("ok" or
    "skipped"). Any exporter failure becomes one :class:`ExportError`."""
    try:
        if fmt == "onnx":
            write_onnx(model, example, path, dynamic_batch=dynamic_batch, opset=opset)
            write_onnx_metadata(path, metadata)
            import onnx  # optional: the [export] extra

            onnx.checker.check_model(str(path), full_check=True)
            return "ok"
        if fmt == "torchscript":
            write_torchscript(model, example, path, metadata)
        else:
            write_torch_export(model, example, path, metadata, dynamic_batch=dynamic_batch)
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types; report one clear error
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{fmt} export of {metadata['model']} failed: {type(e).__name__}: {first}") from e
    return "skipped"


def _verify_export(
    model: nn.Module,
    path: Path,
    view: SplitView,
    pre: PreprocessInfo,
    *,
    num_classes: int,
    num_images: int,
    atol: float,
    min_top1_agreement: float,
    split: str,
    fmt: str,
    out_path: Path,
    multilabel: bool = False,
) -> ParityReport:
    """Parity of the exported file at ``path`` with ``model`` (batch 1 on up to 16 images, batch 32 on
    ``num_images``); raises :class:`ExportParityError` unless it passed."""
    # the exported model is only referenced during the call: its session is released before the file is moved
    report = check_parity(
        model,
        load_exported(path),
        view,
        pre,
        num_classes=num_classes,
        batch_sizes=(1, 32),
        images_per_batch_size=(16, num_images),
        atol=atol,
        min_top1_agreement=min_top1_agreement,
        split=split,
        multilabel=multilabel,
    )
    if not report.passed:
        raise ExportParityError(
            f"export refused: the {fmt} model does not match PyTorch (max |dlogit| {report.max_abs_diff:.3g} > "
            f"{atol:g} or top-1 agreement {report.top1_agreement:.2%} < {min_top1_agreement:.0%}); {out_path} was "
            "not written",
            report,
        )
    return report


@dataclass
class ExportResult:
    path: Path
    format: str
    metadata: dict[str, Any]
    report: ParityReport | None
    checker: str = ""  # what onnx.checker said ("ok" or skipped)


def export_checkpoint(
    checkpoint: str | Path,
    *,
    fmt: str = "onnx",
    out: str | Path | None = None,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    opset: int | None = None,
    atol: float = 1e-3,
    min_top1_agreement: float = 1.0,
    num_images: int = 128,
    verify: bool = True,
) -> ExportResult:
    """Export a checkpoint and verify it against PyTorch on the checkpoint's own eval images.

    Args:
        checkpoint: a checkpoint file or run folder.
        fmt: ``onnx``, ``torchscript`` or ``torch-export``.
        out: output file (default: next to the checkpoint, see :func:`default_export_path`).
        dynamic_batch: make the batch dimension dynamic (otherwise fixed to ``batch_size``).
        batch_size: the batch size of a static export.
        opset: ONNX opset (default: the exporter's).
        atol: the largest allowed absolute logit difference (FP32).
        min_top1_agreement: the smallest allowed top-1 agreement.
        num_images: images for the larger-batch check (the batch-1 check uses up to 16).
        verify: run the parity check (on by default; turning it off is for debugging only).

    Returns:
        The written file, its metadata and the parity report.

    Raises:
        ExportError: the exporter failed; nothing is written.
        ExportParityError: the outputs differ more than allowed; nothing is left at the output path.
        CheckpointError: the checkpoint cannot be read.
    """

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    model, ckpt = load_model(checkpoint, "cpu")
    model = model.float().eval()
    pre = PreprocessInfo(**ckpt["preprocess"])
    out_path = Path(out) if out is not None else default_export_path(ckpt["path"], fmt)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(ckpt, fmt=fmt, dynamic_batch=dynamic_batch, batch_size=batch_size)
    # dynamic dims must not be traced at size 0/1 (they would be specialised)
    example = _example_input(pre, 2 if dynamic_batch else batch_size)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=_SUFFIX[fmt])
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        checker = _write_export(fmt, model, example, tmp, metadata, dynamic_batch=dynamic_batch, opset=opset)
        report = None
        if verify:
            try:
                view, split, _ = reference_view(ckpt["config"], split="test", limit=max(num_images, 16))
            except (FileNotFoundError, OSError) as e:
                raise CheckpointError(f"cannot verify the export: the checkpoint's data is not available ({e})") from e
            report = _verify_export(
                model,
                tmp,
                view,
                pre,
                num_classes=len(ckpt["classes"]),
                num_images=num_images,
                atol=atol,
                min_top1_agreement=min_top1_agreement,
                split=split,
                fmt=fmt,
                out_path=out_path,
                multilabel=bool(ckpt.get("multilabel")),
            )
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(path=out_path, format=fmt, metadata=metadata, report=report, checker=checker)
