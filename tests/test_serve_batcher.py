"""The server's adaptive micro-batcher on its own (no model, no HTTP): a lone request goes at once, requests that
arrive while the model is busy form the next batch, every request gets its own row in order, a failing image fails
only its own request, cancelled requests are dropped, and a full queue refuses."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")

from imgcls.serve.app import MicroBatcher, QueueFullError  # noqa: E402


class Model:
    """A stand-in model: rows [B, 2] -> rows * 10 (so each request can check it got its own row), recording batch
    sizes; ``gate`` holds the first call until released; ``poison`` rows make the call raise."""

    def __init__(self, *, gate: threading.Event | None = None, poison: float | None = None) -> None:
        self.calls: list[int] = []
        self.gate, self.poison = gate, poison
        self.started = threading.Event()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(batch.shape[0])
        self.started.set()
        if self.gate is not None and len(self.calls) == 1:
            assert self.gate.wait(10)
        if self.poison is not None and bool((batch[:, 0] == self.poison).any()):
            raise ValueError(f"cannot take {self.poison}")
        return batch * 10


def image(i: float) -> torch.Tensor:
    return torch.tensor([i, -i])


def run(coro_fn, model: Model, **kw):
    """Run ``coro_fn(batcher)`` on a fresh loop with a one-thread model executor, then stop the batcher."""
    executor = ThreadPoolExecutor(max_workers=1)
    batcher = MicroBatcher(model, executor=executor, **{"max_batch": 8, "max_queue": 64, **kw})

    async def main():
        try:
            return await coro_fn(batcher)
        finally:
            await batcher.stop()

    try:
        return asyncio.run(main()), batcher
    finally:
        executor.shutdown(wait=True)


def test_a_lone_request_is_dispatched_at_once():
    async def one(b):
        t0 = time.perf_counter()
        out = await b.submit(image(3))
        return out, time.perf_counter() - t0

    (out, adaptive_s), _ = run(one, model := Model())
    assert torch.equal(out, image(30)) and model.calls == [1]
    # the fixed window, for contrast: a lone image waits the whole window for company that never comes
    (_, window_s), _ = run(one, Model(), max_wait_ms=300)
    assert window_s >= 0.3 and adaptive_s < 0.15, (adaptive_s, window_s)


def test_requests_waiting_while_the_model_is_busy_form_the_next_batch():
    gate = threading.Event()
    model = Model(gate=gate)

    async def burst(b):
        first = asyncio.ensure_future(b.submit(image(0)))
        while not model.started.is_set():  # the idle model took the first image alone
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(b.submit(image(i))) for i in range(1, 12)]
        await asyncio.sleep(0.01)
        assert b.queued == 11  # all waiting for the busy model, none dropped
        gate.set()
        return await asyncio.gather(first, *rest)

    outs, batcher = run(burst, model)
    assert model.calls == [1, 8, 3]  # 11 waiting, max_batch 8: a full batch, then what is left, no timer
    assert [float(o[0]) for o in outs] == [10.0 * i for i in range(12)]  # each request its own row
    assert batcher.batches == 3 and batcher.items == 12 and batcher.batch_sizes == {1: 1, 8: 1, 3: 1}


def test_submit_many_keeps_the_order_of_its_images_across_batches():
    async def many(b):
        return await asyncio.gather(
            b.submit_many([image(i) for i in range(5)]), b.submit_many([image(100 + i) for i in range(7)])
        )

    (first, second), _ = run(many, model := Model(), max_batch=4)
    assert [float(o[1]) for o in first] == [-10.0 * i for i in range(5)]
    assert [float(o[0]) for o in second] == [10.0 * (100 + i) for i in range(7)]
    assert sum(model.calls) == 12 and max(model.calls) <= 4


def test_a_failing_image_fails_only_its_own_request():
    gate = threading.Event()
    model = Model(gate=gate, poison=13.0)

    async def mixed(b):
        first = asyncio.ensure_future(b.submit(image(0)))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(b.submit(image(i))) for i in (11, 12, 13, 14)]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outs, batcher = run(mixed, model)
    assert [float(o[0]) for o in (outs[0], outs[1], outs[2], outs[4])] == [0.0, 110.0, 120.0, 140.0]
    assert isinstance(outs[3], ValueError) and "13" in str(outs[3])
    assert model.calls == [1, 4, 1, 1, 1, 1]  # the batch of 4 failed, then each image alone
    assert batcher.items == 4  # the failed image is not counted as answered

    async def after(b):  # the worker goes on after an error
        return await b.submit(image(2))

    out, _ = run(after, Model(poison=13.0))
    assert float(out[0]) == 20.0


def test_cancelled_requests_are_dropped_and_a_full_queue_refuses():
    gate = threading.Event()
    model = Model(gate=gate)

    async def cancel(b):
        first = asyncio.ensure_future(b.submit(image(0)))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(b.submit(image(1)))
        kept = asyncio.ensure_future(b.submit(image(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(QueueFullError):
            await b.submit_many([image(9)] * 3)  # 2 waiting, room for 1 more: all or none
        gate.set()
        return await asyncio.gather(first, kept)

    (a, c), _ = run(cancel, model, max_queue=3)
    assert float(a[0]) == 0.0 and float(c[0]) == 20.0
    assert model.calls == [1, 1]  # the cancelled image never reached the model


def _two_requests(gap_between_s: float):
    """Under a measured heavy load (arrivals every 15 ms on average, model calls of 200 ms), one request, then
    another ``gap_between_s`` later: -> (model calls, seconds until the first was answered)."""

    async def two(b):
        b.gap_s, b.call_s = 0.015, 0.2
        t0 = time.perf_counter()
        first = asyncio.ensure_future(b.submit(image(1)))
        answered = []
        first.add_done_callback(lambda _: answered.append(time.perf_counter() - t0))
        await asyncio.sleep(gap_between_s)
        second = asyncio.ensure_future(b.submit(image(2)))
        out1, out2 = await first, await second
        first_s = answered[0]
        assert torch.equal(out1, image(10)) and torch.equal(out2, image(20))
        return first_s

    first_s, _ = run(two, model := Model())
    return model.calls, first_s


def test_under_heavy_load_the_idle_model_lingers_for_the_next_arrival():
    # the next request comes within twice the usual gap: both go in one call
    calls, _ = _two_requests(0.015)
    assert calls == [2], calls


def test_lingering_ends_as_soon_as_the_stream_pauses():
    # nothing within twice the usual gap (30 ms): the first goes alone, long before the 100 ms linger budget
    calls, first_s = _two_requests(0.3)
    assert calls == [1, 1], calls
    assert first_s < 0.09, first_s


def test_at_low_load_nothing_lingers():
    async def spaced(b):
        b.call_s = 0.2  # a slow model: lingering would be allowed up to 100 ms
        outs = []
        for i in range(3):
            t0 = time.perf_counter()
            outs.append((await b.submit(image(i)), time.perf_counter() - t0))
            await asyncio.sleep(0.15)  # arrivals 150 ms apart: longer than half a call
        return outs

    outs, b = run(spaced, model := Model())
    assert model.calls == [1, 1, 1] and b.gap_s > 0.1
    assert all(s < 0.05 for _, s in outs), outs
