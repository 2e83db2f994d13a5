"""CLI wiring for deployment: ``imgcls export``, ``imgcls quantize``, ``imgcls prune``, ``imgcls bench``.

Library imports happen inside the commands so that ``imgcls --help`` works without onnx/onnxruntime installed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

_MISSING_EXPORT = "the export extra is not installed: pip install 'imgcls[export]' (onnx, onnxruntime, onnxscript)"

# Library imports sit inside the commands (deferred): they pull in torch, which `imgcls --help` should not wait for;
# optional extras (onnx, fastapi, optuna) are checked for first, with an install hint.


def _need_export_extra() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        from imgcls.config import ConfigError

        raise ConfigError(f"{_MISSING_EXPORT}; missing: {', '.join(missing)}")


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from e
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _console() -> Any:
    from rich.console import Console

    return Console(width=120)


def _export_failed(e: Exception) -> int:
    """An export that failed or was refused: the parity table when there is one, then the reason (exit 1)."""
    report = getattr(e, "report", None)  # ExportParityError carries the comparison that refused the file
    if report is not None:
        print("\n".join(report.lines()), file=sys.stderr)
    print(f"error: {e}", file=sys.stderr)
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    if args.format in ("onnx", "web", "openvino"):
        _need_export_extra()
    if args.format == "web":
        return _export_web(args)
    if args.format == "openvino":
        return _export_openvino(args)
    if args.int8:
        from imgcls.config import ConfigError

        raise ConfigError("--int8 is for --format openvino; for ONNX run imgcls quantize on the exported file")
    from imgcls.export.onnx import ExportError, export_checkpoint

    try:
        result = export_checkpoint(
            args.checkpoint,
            fmt=args.format,
            out=args.out,
            dynamic_batch=args.dynamic_batch,
            batch_size=args.batch_size,
            opset=args.opset,
            atol=args.atol,
            min_top1_agreement=args.min_agreement,
            num_images=args.num_images,
        )
    except ExportError as e:
        return _export_failed(e)
    if result.report is not None:
        print("\n".join(result.report.lines()))
    if result.checker == "ok":
        print("onnx.checker: ok")
    meta = result.metadata
    pre = meta["preprocess"]
    print(
        f"input '{meta['input']}' [{'N' if meta['dynamic_batch'] else meta['batch_size']}, {pre['in_chans']}, "
        f"{pre['image_size']}, {pre['image_size']}], {len(meta['classes'])} classes, mean {pre['mean']}, "
        f"std {pre['std']}, {pre['interpolation']}"
    )
    print(f"EXPORTED {result.path}")
    return 0


def _export_web(args: argparse.Namespace) -> int:
    from imgcls.config import ConfigError
    from imgcls.export.onnx import ExportError
    from imgcls.export.web import export_web

    if args.out is None:
        raise ConfigError("--format web writes a folder: give it with --out DIR")
    try:
        result = export_web(args.checkpoint, args.out, atol=args.atol, num_images=args.num_images, samples=args.samples)
    except ExportError as e:
        return _export_failed(e)
    if result.onnx.report is not None:
        print("\n".join(result.onnx.report.lines()))
    print("\n".join(result.lines()))
    print(f"EXPORTED {result.out}")
    return 0


def _export_openvino(args: argparse.Namespace) -> int:
    from imgcls.export.onnx import ExportError
    from imgcls.export.openvino import export_openvino

    try:
        result = export_openvino(args.checkpoint, args.out, int8=args.int8, atol=args.atol, num_images=args.num_images)
    except ExportError as e:
        return _export_failed(e)
    print("\n".join(result.lines()))
    print(f"EXPORTED {result.path} (+ {result.path.with_suffix('.bin').name})")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    _need_export_extra()
    from imgcls.export.onnx import ExportError
    from imgcls.export.quantize import quantize

    try:
        result = quantize(
            args.model,
            args.out,
            num_calibration=args.calibration_images,
            per_channel=not args.per_tensor,
            reduce_range=args.reduce_range,
            calibrate_method=args.calibration,
            evaluate_models=not args.no_eval,
            eval_limit=args.eval_limit,
            timing_seconds=args.timing_seconds,
        )
    except ExportError as e:  # a checkpoint given: its ONNX export failed or was refused
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # not an imgcls ONNX model, already quantized, bad option
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(result.lines()))
    print(f"QUANTIZED {result.int8_path}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from imgcls.export.prune import prune_checkpoint

    result = prune_checkpoint(
        args.checkpoint,
        amount=args.amount,
        structured=args.structured,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        out=args.out,
        device=args.device,
        evaluate_models=not args.no_eval,
        log=print,
    )
    print("\n".join(result.lines()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from imgcls.export.bench import BACKENDS, bench

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        print(f"error: unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    if any(b.startswith("onnx") for b in backends) or args.model.endswith(".onnx"):
        _need_export_extra()
    result = bench(
        args.model,
        batch_sizes=args.batch_sizes,
        backends=backends,
        onnx_path=args.onnx,
        int8_path=args.int8,
        min_seconds=args.seconds,
        threads=args.threads,
        log=lambda m: print(m, file=sys.stderr),
    )
    console = _console()
    console.print(result.table())
    for note in dict.fromkeys(result.notes):
        console.print(f"note: {note}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register the deployment subcommands on the ``imgcls`` parser."""
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX / TorchScript / torch.export / OpenVINO / a web page, verified"
    )
    p.add_argument("checkpoint", help="a checkpoint file, a run folder or models:/NAME@ALIAS (or /VERSION)")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "torchscript", "torch-export", "openvino", "web"],
        help="onnx (default), torchscript (deprecated upstream in favour of torch.export), torch-export "
        "(an ExportedProgram .pt2), openvino (IR .xml + .bin; --int8 for INT8; pip install 'imgcls[openvino]') or "
        "web (a static folder, --out DIR, that classifies in the browser with onnxruntime-web from the npm registry; "
        "needs npm)",
    )
    p.add_argument("--int8", action="store_true", help="openvino: the INT8 model, calibrated on training images")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic-batch")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint); a folder for web")
    p.add_argument("--samples", type=int, default=8, help="web: test images bundled as examples (default 8)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest allowed |logit difference| (default 1e-3)")
    p.add_argument("--min-agreement", type=float, default=1.0, help="smallest allowed top-1 agreement (default 1)")
    p.add_argument("--num-images", type=int, default=128, help="eval images for the parity check")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="INT8 static quantization (onnxruntime, QDQ, per-channel) with a report")
    p.add_argument("model", help="an exported .onnx file, or a checkpoint / run folder (exported first)")
    p.add_argument("--out", default=None, help="output file (default: <name>.int8.onnx)")
    p.add_argument("--calibration-images", type=int, default=256, help="training images for calibration")
    p.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per channel")
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (may help accuracy without VNNI)")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy and speed comparison")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most this many test images")
    p.add_argument("--timing-seconds", type=float, default=1.0)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("prune", help="magnitude pruning (+ optional fine-tuning) into a new checkpoint")
    p.add_argument("checkpoint", help="a checkpoint file, a run folder or models:/NAME@ALIAS (or /VERSION)")
    p.add_argument("--amount", type=_fraction, default=0.3, help="fraction to prune (default 0.3)")
    p.add_argument("--structured", action="store_true", help="prune conv output channels (L2) instead of weights")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--finetune-lr", type=float, default=None, help="default: a tenth of the training lr")
    p.add_argument("--out", default=None, help="output checkpoint (default: <name>-pruned<pct>.pt beside it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-eval", action="store_true", help="skip accuracy before/after")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("bench", help="latency/throughput: eager, torch.compile, onnxruntime and OpenVINO FP32/INT8")
    p.add_argument("model", help="a checkpoint / run folder or an exported .onnx file")
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1, 8, 32], help="e.g. 1,8,32")
    p.add_argument(
        "--backends",
        default="eager,compile,onnx-fp32,onnx-int8,openvino-fp32,openvino-int8",
        help="comma-separated subset (the openvino ones are left out, with a note, without the openvino extra)",
    )
    p.add_argument("--onnx", default=None, help="reuse this FP32 .onnx instead of exporting")
    p.add_argument("--int8", default=None, help="reuse this INT8 .onnx instead of quantizing")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per backend and batch size")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every backend")
    p.set_defaults(func=cmd_bench)
