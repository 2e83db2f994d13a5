"""Inference latency and throughput of one model on several runtimes: PyTorch eager, ``torch.compile``, onnxruntime
FP32 and INT8, OpenVINO FP32 and INT8 (the same INT8 model: onnxruntime's calibration, read by OpenVINO), for several
batch sizes, in one table with ratios against eager.

Every backend gets the same number of intra-op threads (``torch.get_num_threads()`` unless told) so that the ratios
compare runtimes, not thread counts. Inputs are random tensors of the model's input shape: latency does not depend
on pixel values. Each measurement warms up first (which also triggers ``torch.compile``'s compilation), then times
single calls until ``min_seconds`` have passed; p50/p95 are over those calls and throughput is images per second of
the mean call.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from imgcls.config import build_config, to_dict
from imgcls.data.build import build_splits, resolve_preprocess
from imgcls.engine.build import build_model_for, load_model, seed_everything
from imgcls.engine.checkpoint import FORMAT_VERSION, save_checkpoint
from imgcls.engine.threads import choose_threads
from imgcls.export.onnx import OnnxClassifier, export_checkpoint, read_metadata
from imgcls.export.openvino import MISSING as OPENVINO_MISSING
from imgcls.export.openvino import OpenVinoClassifier, OpenVinoMissingError, ir_from_onnx
from imgcls.export.quantize import quantize_onnx
from imgcls.export.timing import measure

BACKENDS = ("eager", "compile", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")
OPENVINO_BACKENDS = ("openvino-fp32", "openvino-int8")


def init_checkpoint(path: str | Path, overrides: Sequence[str] = (), preset: str | None = "quickstart") -> Path:
    """Save a randomly initialised model in the checkpoint format (no training): for speed measurements and tests.

    The config comes from ``preset`` and ``overrides`` like ``imgcls train``'s; the dataset is loaded only to learn
    classes, channels and normalisation, exactly as training would.

    Example:
        >>> init_checkpoint("r18.pt", ["model.name=resnet18", "data.image_size=32", "data.in_chans=3"])
    """

    cfg = build_config(preset, [*overrides])
    cfg.model.pretrained = False
    seed_everything(cfg.run.seed)
    splits = build_splits(cfg)
    in_chans = cfg.data.in_chans or splits.in_chans
    model = build_model_for(cfg, splits.num_classes, in_chans, cfg.data.image_size)
    pre = resolve_preprocess(cfg, splits, model)
    state = {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "config": to_dict(cfg),
        "classes": splits.classes,
        "preprocess": pre.to_dict(),
        "epoch": 0,
        "step": 0,
        "weights": "random-init",
    }
    save_checkpoint(state, path)
    return Path(path)


@dataclass
class BenchRow:
    backend: str
    batch_size: int
    p50_ms: float
    p95_ms: float
    images_per_s: float
    iters: int


@dataclass
class BenchResult:
    rows: list[BenchRow]
    notes: list[str] = field(default_factory=list)
    threads: int = 1
    input_shape: tuple[int, ...] = ()
    model: str = ""

    def row(self, backend: str, batch_size: int) -> BenchRow | None:
        return next((r for r in self.rows if r.backend == backend and r.batch_size == batch_size), None)

    @property
    def baseline(self) -> str:
        """The backend ratios are taken against: eager when it ran, else onnx-fp32."""
        names = {r.backend for r in self.rows}
        return "eager" if "eager" in names else "onnx-fp32"

    def speedup(self, backend: str, batch_size: int, over: str | None = None) -> float | None:
        """Throughput of ``backend`` / throughput of ``over`` (default: the baseline) at one batch size."""
        a, b = self.row(backend, batch_size), self.row(over or self.baseline, batch_size)
        if a is None or b is None:
            return None
        return a.images_per_s / max(b.images_per_s, 1e-12)

    def table(self, title: str | None = None) -> Any:
        """A rich Table of the rows."""
        base = self.baseline
        table = Table(title=title or f"{self.model} {tuple(self.input_shape)}, {self.threads} thread(s)")
        for col in ("backend", "batch", "p50 ms", "p95 ms", "img/s", f"x {base}"):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for r in sorted(self.rows, key=lambda r: (r.batch_size, BACKENDS.index(r.backend))):
            ratio = self.speedup(r.backend, r.batch_size)
            table.add_row(
                r.backend,
                str(r.batch_size),
                f"{r.p50_ms:.3f}",
                f"{r.p95_ms:.3f}",
                f"{r.images_per_s:,.0f}",
                f"{ratio:.2f}x" if ratio is not None else "-",
            )
        return table


def _row(backend: str, bs: int, times: list[float]) -> BenchRow:
    t = np.asarray(times)
    p50, p95 = (1e3 * float(np.percentile(t, q)) for q in (50, 95))
    return BenchRow(
        backend=backend, batch_size=bs, p50_ms=p50, p95_ms=p95, images_per_s=bs / float(t.mean()), iters=len(t)
    )


def bench(
    model_path: str | Path,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    backends: Sequence[str] = BACKENDS,
    onnx_path: str | Path | None = None,
    int8_path: str | Path | None = None,
    min_seconds: float = 1.0,
    warmup: int = 3,
    threads: int | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Benchmark a checkpoint or an ONNX model on the requested backends.

    Args:
        model_path: a checkpoint / run folder, or an imgcls ``.onnx`` file (FP32 or INT8). For an ONNX file the
            eager/compile rows come from the checkpoint recorded in its metadata when that file still exists.
        batch_sizes: batch sizes to measure.
        backends: any of :data:`BACKENDS` (the OpenVINO ones need ``pip install 'imgcls[openvino]'``; without it they
            are left out with a note).
        onnx_path, int8_path: reuse these ONNX files instead of exporting / quantizing into ``workdir``.
        min_seconds: timed seconds per (backend, batch size).
        warmup: untimed calls first.
        threads: intra-op threads for every backend (default: torch's current setting).
        workdir: where temporary exports go (default: a temporary folder, removed afterwards).
        log: progress messages (e.g. ``print``).

    Returns:
        A :class:`BenchResult`; backends that could not run are left out and explained in ``notes``.
    """
    say = log or (lambda _msg: None)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    skipped_ov = [b for b in backends if b in OPENVINO_BACKENDS]
    if skipped_ov and importlib.util.find_spec("openvino") is None:  # before any export is made for them
        backends = [b for b in backends if b not in OPENVINO_BACKENDS]
    else:
        skipped_ov = []
    old_threads = torch.get_num_threads()
    threads = choose_threads(threads)[0]  # run.threads' policy: the idle cores unless told
    torch.set_num_threads(threads)
    notes: list[str] = [f"{', '.join(skipped_ov)} skipped: {OPENVINO_MISSING}"] if skipped_ov else []
    tmp_ctx = tempfile.TemporaryDirectory(prefix="imgcls-bench-") if workdir is None else None
    work = Path(tmp_ctx.name) if tmp_ctx is not None else Path(workdir)  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint, onnx_path, int8_path, meta = _sources(Path(model_path), onnx_path, int8_path, backends, notes)
        runners: dict[str, Callable[[torch.Tensor], Any]] = {}
        pre: dict[str, Any]
        if checkpoint is not None:
            model, ckpt = load_model(checkpoint, "cpu")
            pre, model_name = ckpt["preprocess"], ckpt["config"]["model"]["name"]
            runners.update(_torch_runners(model, backends, notes))
        else:
            pre, model_name = meta["preprocess"], meta["model"]  # type: ignore[index]
        onnx_runners, onnx_path, int8_path = _onnx_runners(
            checkpoint, onnx_path, int8_path, backends, threads, work, notes, say
        )
        runners.update(onnx_runners)
        runners.update(_openvino_runners(onnx_path, int8_path, backends, threads, work, notes, say))
        shape = (pre["in_chans"], pre["image_size"], pre["image_size"])
        rows = _time_runners(runners, shape, batch_sizes, warmup=warmup, min_seconds=min_seconds, notes=notes, say=say)
        return BenchResult(rows=rows, notes=notes, threads=threads, input_shape=shape, model=model_name)
    finally:
        torch.set_num_threads(old_threads)
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


def _sources(
    model_path: Path,
    onnx_path: str | Path | None,
    int8_path: str | Path | None,
    backends: Sequence[str],
    notes: list[str],
) -> tuple[Path | None, str | Path | None, str | Path | None, dict[str, Any] | None]:
    """(checkpoint, FP32 ONNX, INT8 ONNX, ONNX metadata) for ``model_path``: a checkpoint, or an ONNX file whose
    metadata names its FP32 source (for an INT8 file) and its checkpoint (used when that file still exists)."""
    if model_path.suffix != ".onnx":
        return model_path, onnx_path, int8_path, None
    meta = read_metadata(model_path)
    if "quantization" in meta:
        int8_path = int8_path or model_path
        onnx_path = onnx_path or (meta["quantization"].get("source") or None)
    else:
        onnx_path = onnx_path or model_path
    src = meta.get("source_checkpoint")
    if src and Path(src).is_file():
        return Path(src), onnx_path, int8_path, meta
    if {"eager", "compile"} & set(backends):
        notes.append("eager/compile skipped: the ONNX file's source checkpoint is not available")
    return None, onnx_path, int8_path, meta


def _torch_runners(model: torch.nn.Module, backends: Sequence[str], notes: list[str]) -> dict[str, Any]:
    """The eager model and its ``torch.compile`` version, as asked for."""
    runners: dict[str, Any] = {}
    if "eager" in backends:
        runners["eager"] = model
    if "compile" in backends:
        try:
            runners["compile"] = torch.compile(model)
        except Exception as e:  # noqa: BLE001 - compile support varies by platform; report and go on
            notes.append(f"compile skipped: {type(e).__name__}: {e}")
    return runners


def _onnx_runners(
    checkpoint: Path | None,
    onnx_path: str | Path | None,
    int8_path: str | Path | None,
    backends: Sequence[str],
    threads: int,
    work: Path,
    notes: list[str],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], str | Path | None, str | Path | None]:
    """onnxruntime sessions for FP32 and INT8, exporting and quantizing into ``work`` what was not given (also for
    the OpenVINO rows, which read these files) -> (runners, FP32 path, INT8 path)."""
    runners: dict[str, Any] = {}
    wants_fp32 = "onnx-fp32" in backends or "openvino-fp32" in backends
    wants_int8 = "onnx-int8" in backends or "openvino-int8" in backends
    if wants_fp32 or (wants_int8 and int8_path is None):
        if onnx_path is None or not Path(onnx_path).is_file():
            if checkpoint is None:
                notes.append("onnx-fp32 skipped: no FP32 ONNX model and no checkpoint to export")
                onnx_path = None
            else:
                say("exporting to ONNX (dynamic batch, verified) ...")
                onnx_path = export_checkpoint(checkpoint, fmt="onnx", dynamic_batch=True, out=work / "model.onnx").path
    if "onnx-fp32" in backends and onnx_path is not None and Path(onnx_path).is_file():
        runners["onnx-fp32"] = OnnxClassifier(onnx_path, threads)
    if wants_int8:
        if int8_path is None and onnx_path is not None:
            say("quantizing to INT8 (static, QDQ, per-channel) ...")
            try:
                int8_path = quantize_onnx(onnx_path, work / "model.int8.onnx")
            except Exception as e:  # noqa: BLE001 - e.g. calibration data missing; the other rows still count
                notes.append(f"INT8 rows skipped: quantization failed: {type(e).__name__}: {e}")
        if int8_path is not None and "onnx-int8" in backends:
            runners["onnx-int8"] = OnnxClassifier(int8_path, threads)
    return runners, onnx_path, int8_path


def _openvino_runners(
    onnx_path: str | Path | None,
    int8_path: str | Path | None,
    backends: Sequence[str],
    threads: int,
    work: Path,
    notes: list[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """OpenVINO FP32 / INT8 compiled models read from the same ONNX files as the onnxruntime rows (speed only: the
    export path, ``imgcls export --format openvino``, is where the IR is checked against PyTorch)."""
    wanted = [b for b in OPENVINO_BACKENDS if b in backends]
    if not wanted:
        return {}
    runners: dict[str, Any] = {}
    sources = {"openvino-fp32": onnx_path, "openvino-int8": int8_path}
    for name in wanted:
        src = sources[name]
        if src is None:
            notes.append(f"{name} skipped: no {'INT8' if name.endswith('int8') else 'FP32'} ONNX model to read")
            continue
        say(f"converting to OpenVINO ({name}) ...")
        try:
            xml = ir_from_onnx(src, work / f"{name}.xml")
            runners[name] = OpenVinoClassifier(xml, threads)
        except OpenVinoMissingError as e:
            notes.append(f"openvino rows skipped: {e}")
            return {}
    return runners


def _time_runners(
    runners: dict[str, Callable[[torch.Tensor], Any]],
    shape: tuple[int, ...],
    batch_sizes: Sequence[int],
    *,
    warmup: int,
    min_seconds: float,
    notes: list[str],
    say: Callable[[str], None],
) -> list[BenchRow]:
    """One row per (batch size, runner) on seeded random inputs; a compile failure at the first call drops it."""
    static = {name: getattr(r, "static_batch", None) for name, r in runners.items()}
    rows: list[BenchRow] = []
    g = torch.Generator().manual_seed(0)
    for bs in batch_sizes:
        x = torch.randn(bs, *shape, generator=g)
        for name in BACKENDS:
            if name not in runners:
                continue
            if static[name] is not None and static[name] != bs:
                notes.append(f"{name} at batch {bs}: run as chunks of its static batch size {static[name]}")
            say(f"timing {name} at batch {bs} ...")
            try:
                times = measure(runners[name], x, warmup=warmup, min_seconds=min_seconds)
            except Exception as e:  # noqa: BLE001 - torch.compile errors surface at the first call
                if name != "compile":
                    raise
                notes.append(f"compile skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                del runners[name]
                continue
            rows.append(_row(name, bs, times))
    return rows
