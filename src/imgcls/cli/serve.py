"""CLI wiring for ``imgcls serve`` (FastAPI + uvicorn; imported only when the command runs)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

# Library imports sit inside the commands (deferred): they pull in torch, which `imgcls --help` should not wait for;
# optional extras (onnx, fastapi, optuna) are checked for first, with an install hint.


def cmd_serve(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"error: the serve extra is not installed: pip install 'imgcls[serve]' (missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    if args.gradio and importlib.util.find_spec("gradio") is None:
        print("error: --gradio needs gradio: pip install 'imgcls[gradio]'", file=sys.stderr)
        return 2
    import uvicorn

    from imgcls.serve.app import create_app
    from imgcls.serve.decode import map_large_blocks

    map_large_blocks()  # this process is the server: freed decoded images go back to the system at once

    try:
        app = create_app(
            args.model,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_pixels=args.max_pixels,
            max_request_pixels=args.max_request_pixels,
            max_decode_bytes=int(args.max_decode_mb * 2**20),
            topk=args.topk,
            device=args.device,
            threads=args.threads,
            gradio_ui=args.gradio,
            docs=args.docs,
            backend=args.backend,
        )
    except ValueError as e:  # e.g. an ONNX file without imgcls metadata
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    if args.gradio:
        print(f"Gradio UI on http://{args.host}:{args.port}/ui/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``imgcls serve`` on the ``imgcls`` parser."""
    p = sub.add_parser(
        "serve",
        help="HTTP inference server with micro-batching and a drop-an-image web page",
        description="Serve a checkpoint or an ONNX model over HTTP: POST /predict, /predict/batch, /gradcam; a web "
        "page at /. Inputs are bounded per image (--max-pixels), per request (--max-body-mb, --max-request-pixels) "
        "and across requests (--max-decode-mb of images being decoded at once); over a bound the answer is 413, or "
        "503 with Retry-After when the server is busy. Every response carries nosniff, X-Frame-Options: DENY, "
        "Referrer-Policy: no-referrer and a Content-Security-Policy. /docs, /redoc and /openapi.json are on, as "
        "suits a development server; --no-docs turns them off.",
    )
    p.add_argument(
        "model",
        help="a checkpoint / run folder, models:/NAME@ALIAS (or /VERSION), an exported .onnx file, an OpenVINO .xml, "
        "or a model name with published ImageNet weights (efficientnet_lite0)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "pytorch"],
        help="auto (default): a checkpoint is served by the fastest verified export beside it (best.onnx, "
        "best.int8.onnx, best.xml, best.int8.xml), timed at start; pytorch: by the checkpoint itself",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="largest micro-batch per model call")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="0 (default): adaptive batching, the idle model takes whatever is waiting at once; > 0: also wait up "
        "to this long for a batch to fill (a fixed window, for comparison)",
    )
    p.add_argument("--max-queue", type=int, default=256, help="images allowed to wait; beyond -> 503")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MiB; beyond -> 413")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest image in pixels; beyond -> 413")
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=64 * 2**20,
        help="most pixels of all images in one request together, read from their headers (default 64 Mi: 64 "
        "images of 1024x1024 or 4 at the --max-pixels limit); beyond -> 413",
    )
    p.add_argument(
        "--max-decode-mb",
        type=float,
        default=256.0,
        help="MiB of images being decoded at once across all requests (default 256: about two of the largest "
        "images); a request waits up to 10 s for room, then gets 503",
    )
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (default: the idle cores)")
    p.add_argument("--gradio", action="store_true", help="also serve a Gradio UI at /ui (pip install 'imgcls[gradio]')")
    p.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not serve /docs, /redoc and /openapi.json (they are on by default, for development)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
