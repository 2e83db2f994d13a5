"""Inference speed on CPU: PyTorch eager vs torch.compile vs onnxruntime FP32 / INT8 vs OpenVINO FP32 / INT8.

Models (randomly initialised and saved in the checkpoint format with ``imgcls.export.bench.init_checkpoint``:
speed does not depend on the weights being trained; accuracy of INT8 vs FP32 is checked by the tests on a trained
model):

- ``resnet18`` at 32x32 RGB (CIFAR stem, 11.2M parameters, 0.56 GMACs per image), with CIFAR-10 images from
  ../shared/data/cifar10_jpg.tar.gz for the export check and INT8 calibration when the archive is there, else the
  bundled digits upsampled to 32x32 RGB;
- ``simple_cnn`` at 16x16 grayscale on digits (the quickstart model: 0.29M parameters).

Each model is exported once (verified against PyTorch) and quantized once; then ``imgcls.export.bench.bench`` runs
``--repeats`` times and the table shows the median of each number over the repeats (the CPU is shared, so single
runs are noisy). Every backend uses the same thread count (``--threads``, default 1: on a shared 2-core machine two
spinning OpenMP threads per process make PyTorch far slower than one).

OpenVINO reads the same two ONNX files (``imgcls.export.openvino.ir_from_onnx``: FP32, and the INT8 model with
onnxruntime's calibration), compiled for FP32 precision with the same thread count; its rows are compared with
onnxruntime's at the same precision.

Targets: onnxruntime FP32 >= 1.5x eager; INT8 >= 2x FP32 (both in images/s at the same batch size).

    python benchmarks/inference.py [--models resnet18,simple_cnn] [--batch-sizes 1,8,32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from imgcls.export.bench import BACKENDS, BenchResult, BenchRow, bench, init_checkpoint
from imgcls.export.onnx import export_checkpoint
from imgcls.export.quantize import quantize_onnx

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpg.tar.gz"


def model_overrides(name: str) -> tuple[list[str], str]:
    common = ["run.progress=false", "run.tracker=none"]
    if name == "resnet18":
        if CIFAR.is_file():
            data = ["data.name=cifar10", f"data.root={CIFAR}", "data.subset=2000", "data.image_size=null"]
            desc = "resnet18, 32x32 RGB, CIFAR-10 images"
        else:
            data = ["data.name=digits", "data.image_size=32", "data.in_chans=3"]
            desc = "resnet18, 32x32 RGB, digits upsampled (CIFAR-10 archive not found)"
        return [*data, "model.name=resnet18", *common], desc
    if name == "simple_cnn":
        return ["data.name=digits", "data.image_size=16", "model.name=simple_cnn", *common], "simple_cnn, 16x16 gray"
    raise SystemExit(f"unknown model {name}: choose resnet18 or simple_cnn")


def median_result(results: list[BenchResult]) -> BenchResult:
    """One result whose numbers are the medians over repeats, per (backend, batch size)."""
    keys = sorted(
        {(r.backend, r.batch_size) for res in results for r in res.rows}, key=lambda k: (k[1], BACKENDS.index(k[0]))
    )
    rows = []
    for backend, bs in keys:
        rs = [res.row(backend, bs) for res in results if res.row(backend, bs) is not None]
        med = {k: statistics.median(getattr(r, k) for r in rs) for k in ("p50_ms", "p95_ms", "images_per_s")}
        rows.append(BenchRow(backend=backend, batch_size=bs, iters=sum(r.iters for r in rs), **med))
    first = results[0]
    notes = list(dict.fromkeys(n for res in results for n in res.notes))
    return BenchResult(rows=rows, notes=notes, threads=first.threads, input_shape=first.input_shape, model=first.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,simple_cnn")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per backend, batch size and repeat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the median rows here")
    args = ap.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    console = Console(width=120)
    summary: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        for name in args.models.split(","):
            overrides, desc = model_overrides(name)
            ckpt = init_checkpoint(Path(tmp) / f"{name}.pt", overrides, preset="quickstart")
            t0 = time.perf_counter()
            exp = export_checkpoint(ckpt, fmt="onnx", dynamic_batch=True)
            t_export = time.perf_counter() - t0
            t0 = time.perf_counter()
            int8 = quantize_onnx(exp.path) if {"onnx-int8", "openvino-int8"} & set(backends) else None
            t_quant = time.perf_counter() - t0
            console.print(
                f"[bold]{desc}[/bold]: export {t_export:.1f}s (max |dlogit| {exp.report.max_abs_diff:.2g}), "
                f"quantize {t_quant:.1f}s; {args.repeats} repeats x {args.seconds:g}s per cell, "
                f"{args.threads} thread(s)"
            )
            results = []
            for i in range(args.repeats):
                results.append(
                    bench(
                        ckpt,
                        batch_sizes=batch_sizes,
                        backends=backends,
                        onnx_path=exp.path,
                        int8_path=int8,
                        min_seconds=args.seconds,
                        threads=args.threads,
                    )
                )
                console.print(f"  repeat {i + 1}/{args.repeats} done")
            med = median_result(results)
            console.print(med.table(title=f"{desc}: median of {args.repeats} repeats, {args.threads} thread(s)"))
            for note in med.notes:
                console.print(f"  note: {note}")
            lines = {}
            for bs in batch_sizes:
                fp32 = med.speedup("onnx-fp32", bs, over="eager")
                q = med.speedup("onnx-int8", bs, over="onnx-fp32")
                comp = med.speedup("compile", bs, over="eager")
                ov = med.speedup("openvino-fp32", bs, over="onnx-fp32")
                ov8 = med.speedup("openvino-int8", bs, over="onnx-int8")
                lines[bs] = {
                    "onnx_fp32_vs_eager": fp32,
                    "int8_vs_fp32": q,
                    "compile_vs_eager": comp,
                    "openvino_fp32_vs_onnx_fp32": ov,
                    "openvino_int8_vs_onnx_int8": ov8,
                }
                parts = []
                if fp32 is not None:
                    parts.append(
                        f"onnxruntime FP32 / eager {fp32:.2f}x (target >= 1.5x: {'met' if fp32 >= 1.5 else 'NOT met'})"
                    )
                if q is not None:
                    parts.append(f"INT8 / FP32 {q:.2f}x (target >= 2x: {'met' if q >= 2 else 'NOT met'})")
                if comp is not None:
                    parts.append(f"compile / eager {comp:.2f}x")
                if ov is not None:
                    parts.append(f"OpenVINO / onnxruntime FP32 {ov:.2f}x")
                if ov8 is not None:
                    parts.append(f"OpenVINO / onnxruntime INT8 {ov8:.2f}x")
                console.print(f"  batch {bs}: " + "; ".join(parts))
            summary[name] = {
                "description": desc,
                "ratios": lines,
                "rows": [r.__dict__ for r in med.rows],
                "notes": med.notes,
            }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
