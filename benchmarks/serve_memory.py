"""Server memory under large-canvas uploads, and correctness under many small requests.

Starts ``imgcls serve`` as a subprocess on 127.0.0.1 (a free port; loopback only) with a tiny randomly initialised
model (``simple_cnn_tiny`` on digits, 1x16x16: the model's cost is negligible, so what is measured is the server's
decoding), then:

1. baseline: the server's RSS (psutil, on the server's PID) after start-up and a few warm-up requests;
2. burst: ``--concurrent`` simultaneous ``/predict/batch`` requests of ``--files`` ``--side``² 1-bit PNGs (a few KB
   each on disk, ``--side``² bytes each once Pillow has decoded them), plus as many requests of 3 such images each
   (within the default per-request pixel cap) while it runs; the peak RSS is sampled every 10 ms;
3. after: RSS 2 s after the burst;
4. ``--small`` requests of a 24x24 PNG to ``/predict`` at ``--concurrency``: errors and seconds.

Extra arguments after ``--`` go to ``imgcls serve`` (e.g. ``-- --max-request-pixels 2000000000``).

    python benchmarks/serve_memory.py [--files 64] [--side 4096] [--concurrent 3] [--small 1000] [-- serve flags]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from imgcls.export.bench import init_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canvas_png(side: int) -> bytes:
    """A ``side``² 1-bit PNG: a few hundred bytes to a few KB on disk, ``side``² bytes once decoded."""
    buf = io.BytesIO()
    im = Image.new("1", (side, side))
    im.paste(1, (side // 4, side // 4, side // 2, side // 2))  # not blank, so it is not trivially compressible
    im.save(buf, format="PNG")
    return buf.getvalue()


def small_png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class PeakRSS:
    """Samples a process's RSS every ``interval`` s in a thread; ``peak`` is the largest seen since the last reset."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.proc, self.interval = psutil.Process(pid), interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = self.now()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_server(ckpt: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "imgcls", "serve", str(ckpt), "--port", str(port), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def burst(url: str, *, files: int, side: int, concurrent: int) -> tuple[Counter, float]:
    """``concurrent`` requests of ``files`` canvases and ``concurrent`` of 3 canvases, all at once."""
    png = canvas_png(side)
    big = [("files", (f"{i}.png", png, "image/png")) for i in range(files)]
    few = big[:3]
    async with httpx.AsyncClient(base_url=url, timeout=600) as ac:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(ac.post("/predict/batch", files=f) for f in [big, few] * concurrent))
        return Counter(r.status_code for r in rs), time.perf_counter() - t0


async def small_requests(url: str, *, n: int, concurrency: int) -> tuple[Counter, float]:
    body = small_png()
    codes: Counter = Counter()
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as ac:

        async def worker() -> None:
            for _ in todo:
                try:
                    r = await ac.post("/predict", files={"file": ("s.png", body, "image/png")})
                    codes[r.status_code] += 1
                except httpx.HTTPError as e:
                    codes[type(e).__name__] += 1
                    print(f"request error: {e!r} (cause {e.__cause__!r})", file=sys.stderr)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return codes, time.perf_counter() - t0


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--concurrent", type=int, default=3)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args(argv)
    mb = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = init_checkpoint(Path(tmp) / "tiny.pt", ["model.name=simple_cnn_tiny"])
        proc, url = start_server(ckpt, extra)
        try:
            asyncio.run(small_requests(url, n=20, concurrency=4))  # warm-up
            rss = PeakRSS(proc.pid)
            base = rss.now()
            codes, secs = asyncio.run(burst(url, files=args.files, side=args.side, concurrent=args.concurrent))
            peak = rss.peak
            time.sleep(2)
            after = rss.now()
            small_codes, small_secs = asyncio.run(small_requests(url, n=args.small, concurrency=args.concurrency))
            rss.stop()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"server flags: {' '.join(extra) or '(defaults)'}")
    print(f"RSS baseline {base / mb:.0f} MB, peak {peak / mb:.0f} MB (+{(peak - base) / mb:.0f}), ", end="")
    print(f"2 s after {after / mb:.0f} MB (+{(after - base) / mb:.0f})")
    print(f"burst: {dict(codes)} in {secs:.1f} s")
    print(f"{args.small} small requests at concurrency {args.concurrency}: {dict(small_codes)} in {small_secs:.1f} s")


if __name__ == "__main__":
    main()
