"""Server throughput: micro-batching vs one model call per request, under the same closed-loop load.

Starts ``imgcls serve`` as a subprocess on 127.0.0.1 (a free port; loopback only) twice per repeat: with
``--max-batch 1`` (every request is its own model call) and with the adaptive micro-batcher (``--max-batch 32``, no
timer: the idle model takes whatever is waiting); ``--window-ms W`` adds a third server with the old fixed window
(``--max-wait-ms W``) for comparison. A load generator in this process (asyncio streams, HTTP/1.1 keep-alive) keeps
``--concurrency`` requests in flight until ``--requests`` have been answered, uploading small PNG images, then the
server is stopped: the run is bounded and ends by itself. Reported per configuration: requests/s, p50 and p99
latency, errors, and the mean batch size the server actually formed (from ``/health``). Medians over ``--repeats``.

The model is randomly initialised and saved in the checkpoint format (speed does not depend on trained weights):
any registered model (``--model``, ``--image-size``, ``--in-chans``; default ``resnet18`` at 32x32 RGB);
``--format onnx`` serves its ONNX export through onnxruntime instead of PyTorch. Server and load generator share
this machine's CPU cores.

Target: adaptive micro-batching >= 2x the requests/s of batch-1 at an equal or lower p99.

    python benchmarks/serve.py [--model resnet18] [--format checkpoint] [--requests 400] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from imgcls.export.bench import init_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BOUNDARY = "imgclsbench"


def request_bodies(n: int, size: int, channels: int) -> list[bytes]:
    """``n`` multipart bodies, each one PNG image in the field ``file``, encoded once up front so that the load
    generator spends its CPU on sending, not on encoding."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        shape = (size, size, 3) if channels == 3 else (size, size)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        out.append(head + buf.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode())
    return out


def start_server(model: Path, port: int, *, max_batch: int, max_wait_ms: float, threads: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "imgcls",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(max_wait_ms),
        "--max-queue",
        "4096",
        "--threads",
        str(threads),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One HTTP/1.1 request on a kept-alive connection; returns the status code (the body is read and dropped)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0)
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def load(port: int, payloads: list[bytes], *, requests: int, concurrency: int) -> dict[str, float]:
    """Closed loop: ``concurrency`` kept-alive connections, each sending one request at a time, until ``requests``
    are answered.

    A minimal HTTP/1.1 client on asyncio streams rather than httpx: on this machine httpx's async client tops out
    near 50 requests/s and would measure itself instead of the server.
    """
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\r\nContent-Length: {{}}\r\n\r\n"
    )
    bodies = [head.format(len(p)).encode() + p for p in payloads]
    latencies: list[float] = []
    errors = 0
    issued = 0

    async def worker() -> None:
        nonlocal issued, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < requests:
                i = issued
                issued += 1
                t0 = time.perf_counter()
                status = await _post(reader, writer, bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            writer.close()

    before = httpx.get(f"http://127.0.0.1:{port}/health").json()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    after = httpx.get(f"http://127.0.0.1:{port}/health").json()
    lat = np.asarray(latencies) * 1e3
    batches = after["batches"] - before["batches"]
    return {
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "errors": errors,
        "mean_batch": (after["images"] - before["images"]) / max(batches, 1),
    }


def run_config(
    model: Path,
    payloads: list[bytes],
    *,
    max_batch: int,
    max_wait_ms: float,
    requests: int,
    concurrency: int,
    threads: int,
) -> dict[str, float]:
    port = free_port()
    proc = start_server(model, port, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads)
    try:
        asyncio.run(load(port, payloads, requests=min(50, requests), concurrency=concurrency))  # warm-up
        return asyncio.run(load(port, payloads, requests=requests, concurrency=concurrency))
    finally:
        stop_server(proc)


def model_ceiling(model: Path, *, threads: int, batch: int, shape: tuple[int, int, int], seconds: float = 2.0):
    """Images/s of the served model alone (the server's own runner: same backend, memory format and threads) at
    batch 1 and at ``batch``. Their ratio bounds what any batcher can gain in requests/s once the model is the
    bottleneck, so the server's ratio is read against it."""
    import torch

    from imgcls.export.timing import measure
    from imgcls.serve.app import load_runner

    runner = load_runner(model, threads=threads, backend="pytorch" if model.suffix == ".pt" else "auto")
    out = []
    for bs in (1, batch):
        times = measure(runner.forward, torch.randn(bs, *shape), warmup=2, min_seconds=seconds)
        out.append(bs * len(times) / sum(times))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18", help="a registered model name (random init)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--in-chans", type=int, default=3, choices=[1, 3])
    ap.add_argument("--format", default="checkpoint", choices=["checkpoint", "onnx"])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--window-ms", type=float, default=0.0, help="also measure a fixed window of this many ms")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of the server's model")
    args = ap.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="imgcls-serve-bench-") as tmp:
        size, channels = args.image_size, args.in_chans
        overrides = [
            "data.name=digits",
            f"data.image_size={size}",
            f"data.in_chans={channels}",
            f"model.name={args.model}",
            "run.progress=false",
        ]
        model = init_checkpoint(Path(tmp) / "model.pt", overrides)
        if args.format == "onnx":
            from imgcls.export.onnx import export_checkpoint

            model = export_checkpoint(model, fmt="onnx", dynamic_batch=True).path
        alone_1, alone_b = model_ceiling(
            model, threads=args.threads, batch=args.max_batch, shape=(channels, size, size)
        )
        gain = alone_b / alone_1
        console.print(
            f"the model alone: {alone_1:.1f} img/s at batch 1, {alone_b:.1f} at batch {args.max_batch} "
            f"({gain:.2f}x: the most any batcher can gain once the model is the bottleneck)"
        )
        payloads = request_bodies(16, size, channels)
        configs = {"batch-1": (1, 0.0), f"adaptive (max {args.max_batch})": (args.max_batch, 0.0)}
        if args.window_ms > 0:
            configs[f"fixed window (max {args.max_batch}, {args.window_ms:g} ms)"] = (args.max_batch, args.window_ms)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        for i in range(args.repeats):
            for name, (mb, wait) in configs.items():
                res = run_config(
                    model,
                    payloads,
                    max_batch=mb,
                    max_wait_ms=wait,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    threads=args.threads,
                )
                runs[name].append(res)
                console.print(f"repeat {i + 1}/{args.repeats} {name}: {res['rps']:.1f} req/s, p99 {res['p99']:.1f} ms")
    shape = f"{args.in_chans}x{args.image_size}x{args.image_size}"
    table = Table(
        title=f"imgcls serve, {args.model} {shape} ({args.format}), {args.requests} requests, concurrency "
        f"{args.concurrency}, {args.threads} model thread(s): median of {args.repeats}"
    )
    for col in ("config", "req/s", "p50 ms", "p99 ms", "errors", "mean batch", "x batch-1"):
        table.add_column(col, justify="left" if col == "config" else "right")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    base = med["batch-1"]["rps"]
    for name, m in med.items():
        table.add_row(
            name,
            f"{m['rps']:.1f}",
            f"{m['p50']:.1f}",
            f"{m['p99']:.1f}",
            f"{m['errors']:.0f}",
            f"{m['mean_batch']:.1f}",
            f"{m['rps'] / base:.2f}x",
        )
    console.print(table)
    micro = next(m for n, m in med.items() if n.startswith("adaptive"))
    ratio = micro["rps"] / base
    met = ratio >= 2 and micro["p99"] <= med["batch-1"]["p99"]
    verdict = "met" if met else "NOT met"
    console.print(
        f"adaptive micro-batching / batch-1: {ratio:.2f}x requests/s, p99 {micro['p99']:.1f} ms vs "
        f"{med['batch-1']['p99']:.1f} ms (target >= 2x at equal p99: {verdict}); the model's own batch gain "
        f"{gain:.2f}x, of which the server reached {ratio / gain:.0%}"
    )


if __name__ == "__main__":
    main()
