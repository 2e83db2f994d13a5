"""Timing one callable on one input: the measuring loop shared by :mod:`imgcls.export.bench` (latency tables) and
:mod:`imgcls.export.quantize` (FP32 vs INT8 latency). It imports neither."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def measure(
    fn: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    warmup: int = 3,
    min_iters: int = 5,
    max_iters: int = 10_000,
    min_seconds: float = 1.0,
) -> list[float]:
    """Seconds per call of ``fn(x)``: ``warmup`` untimed calls, then at least ``min_iters`` timed calls and at least
    ``min_seconds`` in total (at most ``max_iters``)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return times
