"""The inference server: ``create_app(model_path)`` -> a FastAPI app serving a checkpoint or an exported ONNX model.

Endpoints:

- ``POST /predict`` (multipart field ``file``): top-k classes with probabilities;
- ``POST /predict/batch`` (multipart fields ``files``): the same for several images;
- ``POST /gradcam`` (``file``): top-k plus a Grad-CAM overlay and the model-size input, as PNG data URLs (checkpoint
  models only);
- ``GET /health``; ``GET /metadata`` (the model, its dataset and its run's test numbers, input, classes, limits);
- ``GET /`` a page where a person drops, picks or pastes images and sees, per image, top-k bars and Grad-CAM.

Concurrent requests are micro-batched, adaptively: each decoded image joins a bounded queue; whenever the model is
idle, one worker task takes everything waiting (up to ``max_batch`` images, no timer: a lone request goes at once),
runs the model once in a worker thread (never on the event loop) and hands each request its row. A full queue
answers 503.

Input limits, each answered with a clear status (4xx or 503 with a JSON ``detail``, never a 5xx): a body over
``max_body_bytes`` -> 413 (checked from Content-Length and while streaming); an empty file -> 400; a missing field ->
422; a file that is not an image -> 415; a truncated or corrupt image -> 422; an image over ``max_pixels`` pixels, or a
request whose images add up to more than ``max_request_pixels``, -> 413 (both read from the headers, before anything is
decoded; Pillow's own decompression-bomb limit stays on). Decoded bytes in flight across all requests are bounded by
``max_decode_bytes``: a request waits for its turn at most ``decode_wait_s`` -> 503 with ``Retry-After``. Large images
are shrunk while they are decoded and only the model-size tensor is kept (see :mod:`imgcls.serve.decode`). Requests
only ever carry images: nothing from a request is unpickled, and the model file is fixed when the app is created
(checkpoints load with ``weights_only=True``).

Every response carries security headers (:mod:`imgcls.serve.headers`); ``docs=False`` turns off ``/docs``,
``/redoc`` and ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from imgcls.data.loaders import PreprocessInfo
from imgcls.data.transforms import FixChannels
from imgcls.engine.runs import summary_near
from imgcls.engine.threads import apply_threads
from imgcls.evaluate.infer import Predictor
from imgcls.explain.gradcam import GradCAM, overlay_heatmap
from imgcls.export.onnx import OnnxClassifier
from imgcls.export.openvino import OpenVinoClassifier
from imgcls.export.timing import measure
from imgcls.serve.decode import (
    FORMATS,
    DecodeBudget,
    ImageHeader,
    decode_cost,
    decode_upload,
    header_pixels,
    probe_upload,
    trim_heap,
)
from imgcls.serve.gradio_ui import mount_gradio
from imgcls.serve.headers import SecurityHeadersMiddleware, page_csp

__all__ = [
    "BodySizeLimitMiddleware",
    "InferenceService",
    "MicroBatcher",
    "create_app",
    "decode_upload",
    "header_pixels",
]

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_BODY_BYTES = 10 * 2**20  # 10 MiB
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 MP; Pillow's bomb limit (about 89 MP) stays on above that
#: 64 Mi pixels in one request: 64 images of 1024 x 1024, or 4 at the 4096 x 4096 per-image limit
DEFAULT_MAX_REQUEST_PIXELS = 64 * 2**20
#: decoded bytes in flight across requests: about two of the largest images (4096 x 4096 RGBA, 128 MiB each by
#: decode_cost's estimate) or sixteen 12 MP phone photos at full scale
DEFAULT_MAX_DECODE_BYTES = 256 * 2**20
DEFAULT_DECODE_WAIT_S = 10.0
#: images up to this many pixels are decoded on the event loop (well under a millisecond); a thread hop costs more
INLINE_DECODE_PIXELS = 128 * 128
#: large images are reduced while decoding to at least this many times the model's input side, then resized to it
#: as before. Measured against the full-resolution path (photos of 1000-4000 px, models of 16-224 px): the model
#: input differs by 0.04-1.1 grey levels of 255 on average (margin 2: up to 2.6; 8: under 0.3, but a 12 MP photo
#: then decodes at full size for a 224 px model instead of at half size)
REDUCE_MARGIN = 4
#: the Grad-CAM overlay is drawn on the image at up to this side (see _display_image), so /gradcam keeps that much
DISPLAY_SIDE = 384
#: the heap is trimmed (malloc_trim, 10-20 ms in a decode thread) when the decoders go idle after this many bytes of
#: decoding, and after every max_decode_bytes of decoding under continuous load
TRIM_AFTER_BYTES = 8 * 2**20


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelRunner:
    """What the server needs of a model: a batch callable, class names, preprocessing, and its kind.

    ``module`` is the PyTorch model for checkpoints (Grad-CAM needs it) and None for exported models. ``info`` holds
    facts for ``/metadata``: ``quantized``, ``path``, ``dataset`` (the training config's ``data.name``), ``weights``
    (the checkpoint's note on them, e.g. "random-init" or "ema"; None when it has none), ``run`` (see
    :func:`run_facts`) and ``backend`` (what runs the predictions, see :func:`choose_backend`).
    """

    forward: Any  # float [B, C, S, S] -> logits [B, K]
    classes: list[str]
    preprocess: PreprocessInfo
    kind: str  # "checkpoint", "onnx" or "openvino": the file the server was given
    name: str
    module: torch.nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: multi-label: one sigmoid per class, and the labels at or above ``thresholds`` (tuned on val) are the answer
    multilabel: bool = False
    thresholds: list[float] | None = None


#: the runtimes a server can predict with, by the file that holds the model -> (label on the page, quantized)
BACKEND_LABELS = {
    "pytorch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "onnxruntime-int8": "ONNX Runtime INT8",
    "openvino": "OpenVINO",
    "openvino-int8": "OpenVINO INT8",
}


def _exported_runner(path: Path, threads: int) -> ModelRunner:
    """An imgcls ``.onnx`` (onnxruntime) or OpenVINO ``.xml`` file as a runner."""
    if path.suffix == ".xml":
        clf: Any = OpenVinoClassifier(path, threads)
        kind, engine = "openvino", "openvino"
    else:
        clf = OnnxClassifier(path, threads)
        kind, engine = "onnx", "onnxruntime"
    backend = engine + ("-int8" if clf.quantized else "")
    pre = PreprocessInfo(**{**clf.metadata["preprocess"], "resize": True})
    name = clf.metadata["model"]
    source = clf.metadata.get("source_checkpoint") or ""
    return ModelRunner(
        forward=clf,
        classes=clf.classes,
        preprocess=pre,
        kind=kind,
        name=name,
        multilabel=bool(clf.metadata.get("multilabel")),
        thresholds=clf.metadata.get("thresholds"),
        info={
            "quantized": clf.quantized,
            "path": str(path),
            "dataset": _dataset_of(clf.metadata.get("config")),
            "weights": "int8" if clf.quantized else None,
            "run": run_facts(path, name) or (run_facts(source, name) if source else {}),
            "backend": {"name": backend, "label": BACKEND_LABELS[backend], "path": str(path), "why": "the file given"},
        },
    )


def load_runner(
    model_path: str | Path, *, device: str = "cpu", threads: int | None = None, backend: str = "auto"
) -> ModelRunner:
    """A checkpoint / run folder (PyTorch), an imgcls ``.onnx`` file (onnxruntime) or an OpenVINO ``.xml`` as a
    :class:`ModelRunner`.

    For a checkpoint on the CPU with ``backend="auto"``, the fastest verified exported model beside it predicts
    instead (:func:`choose_backend`); ``backend="pytorch"`` keeps PyTorch. Grad-CAM always uses the PyTorch model.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
        ValueError: the exported file has no imgcls metadata; an unknown ``backend``.
    """
    if backend not in ("auto", "pytorch"):
        raise ValueError(f"backend must be auto or pytorch, got {backend}")
    path = Path(model_path)
    threads = apply_threads(threads)[0]  # run.threads' policy: the given number, else the cores idle at start
    if path.suffix in (".onnx", ".xml"):
        return _exported_runner(path, threads)

    pred = Predictor.from_checkpoint(path, device=device)
    model = pred.model.eval()
    dev = pred.device

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(pred.to_input(x)).float().cpu()

    ckpt = pred.checkpoint
    name = ckpt["config"]["model"]["name"]
    resolved = ckpt.get("path", str(path))  # a run folder resolves to its checkpoints/best.pt
    weights = ckpt.get("weights")
    runner = ModelRunner(
        forward=forward,
        classes=pred.classes,
        preprocess=pred.preprocess,
        kind="checkpoint",
        name=name,
        module=model,
        multilabel=pred.multilabel,
        thresholds=pred.thresholds if pred.multilabel else None,
        info={
            "quantized": False,
            "path": resolved,
            "dataset": ckpt.get("dataset") or _dataset_of(ckpt["config"]),  # a published model: ImageNet-1k
            "weights": weights if isinstance(weights, str) else None,
            "run": {} if ckpt.get("published") else run_facts(resolved, name),  # a model name has no run
            "backend": {"name": "pytorch", "label": BACKEND_LABELS["pytorch"], "path": resolved, "why": "asked for"},
        },
    )
    if backend == "auto" and dev.type == "cpu" and not ckpt.get("published"):  # a model name has no exports beside it
        choose_backend(runner, threads)
    return runner


def _beside(checkpoint: Path) -> list[Path]:
    """The exported files imgcls writes beside a checkpoint by default: ``best.onnx``, ``best.int8.onnx`` (imgcls
    quantize), ``best.xml``, ``best.int8.xml`` (export --format openvino [--int8])."""
    stem = checkpoint.name.removesuffix(".pt").removesuffix(".pth")
    names = (f"{stem}.onnx", f"{stem}.int8.onnx", f"{stem}.xml", f"{stem}.int8.xml")
    return [checkpoint.with_name(n) for n in names if checkpoint.with_name(n).is_file()]


#: seconds of timing per candidate and batch size when the server picks its backend at start
CHOOSE_SECONDS = 0.15
#: a FP32 export must reproduce the checkpoint's logits within this on random inputs to be used
CHOOSE_ATOL = 1e-3


def _verify(candidate: ModelRunner, checkpoint: Path, reference: Any, x: torch.Tensor) -> str | None:
    """Why an exported file beside the checkpoint may not stand in for it (None: it may).

    It must name this checkpoint as its source and be newer than it (an export of an earlier state of a checkpoint
    that was since overwritten is stale); an FP32 model must also give the checkpoint's logits on ``x`` (INT8 models
    were compared on the test split when ``imgcls quantize`` or the export made them).
    """
    meta = getattr(candidate.forward, "metadata", {})
    source = meta.get("source_checkpoint") or ""
    try:
        same = bool(source) and Path(source).resolve() == checkpoint.resolve()
    except OSError:
        same = False
    if not same:
        return f"exported from {source or 'an unknown checkpoint'}, not this one"
    if Path(candidate.info["path"]).stat().st_mtime < checkpoint.stat().st_mtime:
        return "older than the checkpoint (stale)"
    if not candidate.info["quantized"]:
        diff = float((candidate.forward(x) - reference(x)).abs().max())
        if not diff <= CHOOSE_ATOL * max(1.0, float(reference(x).abs().max())):
            return f"its logits differ from the checkpoint's by {diff:.3g}"
    return None


def choose_backend(runner: ModelRunner, threads: int) -> None:
    """Let the fastest verified model beside a checkpoint predict for it (in place: ``runner.forward`` and
    ``runner.info``); the checkpoint's own PyTorch model stays for Grad-CAM.

    Candidates are the files of :func:`_beside` that pass :func:`_verify` and whose runtime is installed; each and
    PyTorch are timed at batch 1 and 8 on random inputs (:data:`CHOOSE_SECONDS` each, median call) and the lowest
    sum wins: the adaptive batcher runs batch 1 at low load and larger batches under load. What was measured and
    why a file was passed over goes into ``info["backend"]["candidates"]`` (``/metadata``).
    """
    checkpoint = Path(runner.info["path"])
    pre = runner.preprocess
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, pre.in_chans, pre.image_size, pre.image_size, generator=g)
    x8 = torch.randn(8, pre.in_chans, pre.image_size, pre.image_size, generator=g)
    options: list[tuple[float, str, Any, str]] = []
    rows: list[dict[str, Any]] = []

    def timed(name: str, fn: Any, path: str) -> None:
        t1 = float(np.median(measure(fn, x1, warmup=2, min_iters=3, min_seconds=CHOOSE_SECONDS)))
        t8 = float(np.median(measure(fn, x8, warmup=2, min_iters=3, min_seconds=CHOOSE_SECONDS)))
        options.append((t1 + t8, name, fn, path))
        rows.append({"name": name, "path": path, "ms_batch1": round(1e3 * t1, 3), "ms_batch8": round(1e3 * t8, 3)})

    files = _beside(checkpoint)
    if not files:
        runner.info["backend"]["why"] = "no exported model beside the checkpoint"
        return
    timed("pytorch", runner.forward, str(checkpoint))
    for path in files:
        try:
            cand = _exported_runner(path, threads)
        except (ImportError, ValueError, RuntimeError) as e:  # runtime not installed, not an imgcls file, unreadable
            rows.append({"name": path.name, "path": str(path), "skipped": f"{type(e).__name__}: {e}"[:200]})
            continue
        why_not = _verify(cand, checkpoint, runner.forward, x8)
        if why_not:
            rows.append({"name": cand.info["backend"]["name"], "path": str(path), "skipped": why_not})
            continue
        timed(cand.info["backend"]["name"], cand.forward, str(path))
    _, name, fn, path = min(options, key=lambda o: o[0])
    runner.forward = fn
    runner.info["quantized"] = name.endswith("-int8")
    runner.info["backend"] = {
        "name": name,
        "label": BACKEND_LABELS[name],
        "path": path,
        "why": "the fastest of the verified models beside the checkpoint (batch 1 + batch 8 time)",
        "candidates": rows,
    }


def _dataset_of(config: Any) -> str | None:
    """``data.name`` of a resolved config (as stored in checkpoints and export metadata), or None."""
    data = config.get("data") if isinstance(config, dict) else None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name is not None else None


#: the numbers of a run's summary.json that ``/metadata`` passes on (test numbers are of the run's best checkpoint)
RUN_FACTS = ("test_acc", "test_top5", "test_loss", "test_tta", "epochs_run", "best_epoch", "test_map_macro")


def run_facts(model_path: str | Path, model_name: str) -> dict[str, Any]:
    """The test numbers of the run a model file belongs to (:func:`~imgcls.engine.runs.summary_near`), or {} when
    there is no summary or it describes another model (a checkpoint copied into a foreign run folder)."""
    summary = summary_near(model_path)
    if not summary or summary.get("model", model_name) != model_name:
        return {}
    return {k: summary.get(k) for k in RUN_FACTS}


# --------------------------------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------------------------------


class QueueFullError(RuntimeError):
    """The request queue is full: the server answers 503."""


class MicroBatcher:
    """Collects concurrent single-image requests into batches for one model call, adaptively.

    The model is called as soon as it is idle and something is waiting, with everything that is waiting (up to
    ``max_batch``): under load the requests that arrived during one model call form the next batch. One refinement
    follows the load too: when requests have been arriving faster than half a model call apart (an exponential
    average of the gaps between arrivals, against one of the model's call times), the idle model lingers while
    they keep coming -- each next one within twice the usual gap, half a call time in all at most -- because
    under that load the next few are only a gap away and one call for all of them costs less than one call each
    (on a small model whose calls are cheaper than the HTTP work around them, taking only what was waiting left
    batches half full). At low load the gaps are long, nothing lingers, and a lone request is never held back for
    company. (The earlier fixed window, waiting up to a few ms for every batch to fill, added that wait to every
    request at low load and made p99 2.7x worse than one call per request on a small model.)

    ``max_wait_ms`` > 0 brings that window back, for experiments: while fewer than ``max_batch`` images wait, the
    oldest waits at most that long for more before the idle model is called.

    A batch whose call fails is retried one image at a time, so one bad image fails only its own request. Results
    come back to each request in the order of its images; images are batched first in, first out.

    Args:
        fn: batch function, images [B, ...] -> outputs [B, ...]; called in ``executor``, one call at a time.
        max_batch: largest batch.
        max_wait_ms: 0 (the default): dispatch at once; > 0: the fixed window described above.
        max_queue: images waiting (not counting the batch being computed); more -> :class:`QueueFullError`.
        executor: where ``fn`` runs (a one-thread pool keeps model calls serial and off the event loop).
    """

    def __init__(
        self, fn: Any, *, max_batch: int, max_queue: int, executor: ThreadPoolExecutor, max_wait_ms: float = 0.0
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.fn = fn
        self.max_batch, self.max_wait, self.max_queue = max_batch, max(0.0, max_wait_ms) / 1e3, max_queue
        self.executor = executor
        # (image, future, arrival time on the loop's clock)
        self.pending: collections.deque[tuple[torch.Tensor, asyncio.Future, float]] = collections.deque()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0  # model calls made (retries of a failed batch not counted)
        self.items = 0  # images answered
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        # exponential averages (seconds) of the gap between arrivals and of one model call (None until measured):
        # the linger rule above
        self.gap_s: float | None = None
        self.call_s: float | None = None
        self._last_arrival: float | None = None

    @property
    def queued(self) -> int:
        return len(self.pending)

    def free_slots(self) -> int:
        return self.max_queue - len(self.pending)

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and self.loop is loop and not self.task.done():
            return
        self.loop = loop
        self.has_items = asyncio.Event()
        self.batch_full = asyncio.Event()
        self.arrival = asyncio.Event()
        self.task = loop.create_task(self._worker())

    def start(self) -> None:
        """Start the worker on the running loop (also done lazily by the first submit)."""
        self._ensure_worker()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self.task = None
        while self.pending:
            _, fut, _ = self.pending.popleft()
            if not fut.done():
                fut.set_exception(RuntimeError("server shutting down"))

    async def submit_many(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Queue images (all or none) and wait for their outputs, in order. Raises :class:`QueueFullError`."""
        self._ensure_worker()
        if len(images) > self.free_slots():
            raise QueueFullError(f"request queue full ({len(self.pending)} waiting, limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        now = loop.time()
        if self._last_arrival is not None:
            self.gap_s = _ema(self.gap_s, now - self._last_arrival)
        self._last_arrival = now
        self.pending.extend((x, f, now) for x, f in zip(images, futures, strict=True))
        self.has_items.set()
        self.arrival.set()
        if len(self.pending) >= self.max_batch:
            self.batch_full.set()
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for f in futures:
                f.cancel()  # the client went away: the worker drops cancelled items
            raise

    async def submit(self, image: torch.Tensor) -> torch.Tensor:
        return (await self.submit_many([image]))[0]

    async def _fill_window(self, loop: asyncio.AbstractEventLoop) -> None:
        """The optional fixed window: wait for a full batch, at most until the oldest image has waited max_wait."""
        remaining = self.pending[0][2] + self.max_wait - loop.time()
        if len(self.pending) < self.max_batch and remaining > 0:
            self.batch_full.clear()
            try:
                await asyncio.wait_for(self.batch_full.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    async def _linger(self) -> None:
        """The adaptive wait (class docstring): only under a load whose arrivals are much closer than a call."""
        if self.gap_s is None or self.call_s is None or self.gap_s >= 0.5 * self.call_s:
            return
        budget = 0.5 * self.call_s
        loop = asyncio.get_running_loop()
        end = loop.time() + budget
        while len(self.pending) < self.max_batch:
            step = min(2 * self.gap_s, end - loop.time())
            if step <= 0:
                return
            self.arrival.clear()
            try:
                await asyncio.wait_for(self.arrival.wait(), timeout=step)
            except asyncio.TimeoutError:
                return  # the stream paused: go with what is here

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.has_items.clear()
                await self.has_items.wait()
                continue
            if self.max_wait > 0:
                await self._fill_window(loop)
            else:
                await self._linger()
            # the model is idle here (this task is its only caller): take what is waiting, no more than max_batch
            n = min(self.max_batch, len(self.pending))
            items = [self.pending.popleft()[:2] for _ in range(n)]
            items = [(x, f) for x, f in items if not f.done()]
            if items:
                await self._run(loop, items)

    async def _run(self, loop: asyncio.AbstractEventLoop, items: list[tuple[torch.Tensor, asyncio.Future]]) -> None:
        """One model call for ``items``; on failure, one call per image, so each request gets its own outcome."""
        t0 = loop.time()
        try:
            out = await loop.run_in_executor(self.executor, self.fn, torch.stack([x for x, _ in items]))
            self.call_s = _ema(self.call_s, loop.time() - t0)
        except Exception as e:  # noqa: BLE001 - the requests get the error, the worker goes on
            if len(items) == 1:
                _settle(items[0][1], error=e)
                return
            for x, f in items:
                if f.done():
                    continue
                try:
                    one = await loop.run_in_executor(self.executor, self.fn, x[None])
                except Exception as e1:  # noqa: BLE001 - this image's own error
                    _settle(f, error=e1)
                else:
                    self.items += 1
                    _settle(f, result=one[0])
            return
        self.batches += 1
        self.items += len(items)
        self.batch_sizes[len(items)] += 1
        for i, (_, f) in enumerate(items):
            _settle(f, result=out[i])


def _ema(average: float | None, x: float) -> float:
    """One step of the batcher's exponential averages; the first value starts it."""
    return x if average is None else 0.8 * average + 0.2 * x


def _settle(fut: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a request's future unless its client has gone (cancelled)."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


# --------------------------------------------------------------------------------------------------------------------
# The service and the app
# --------------------------------------------------------------------------------------------------------------------


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit:,} bytes")


class BodySizeLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``: at once from Content-Length, or while the body streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)  # FastAPI re-raises HTTPExceptions from body parsing
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes:,} bytes"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


class InferenceService:
    """The model, its preprocessing, the micro-batcher and Grad-CAM, shared by the endpoints (``app.state.service``).

    ``forward`` (normalised float batch -> logits) is an attribute so tests can wrap it (count calls, slow it down).
    """

    def __init__(
        self,
        runner: ModelRunner,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        max_pixels: int,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
        decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
        decode_threads: int = 2,
    ) -> None:
        self.runner = runner
        self.forward = runner.forward
        self.max_pixels, self.max_request_pixels = max_pixels, max_request_pixels
        p = runner.preprocess
        # The eval transform split in two: channels and size per image on uint8 (requests differ in size), then
        # float conversion and normalisation once per batch in the model thread (a tenth of the per-image cost).
        # Same operations in the same order as imgcls.data.transforms.build_eval_transform.
        self.size = p.image_size
        self.min_side = REDUCE_MARGIN * p.image_size  # large images are decoded down to this, then resized
        self.fix_channels = FixChannels(p.in_chans)
        self.resize = v2.Resize(
            (p.image_size, p.image_size), interpolation=InterpolationMode(p.interpolation), antialias=True
        )
        self.mean = torch.tensor(p.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32).view(-1, 1, 1)
        # one thread runs the model: calls stay serial (Grad-CAM hooks and batches never interleave) and torch's
        # intra-op threads do the parallel work
        self.model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-model")
        self.batcher = MicroBatcher(
            self._probs, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, executor=self.model_executor
        )
        # large images decode here, a few at a time (each thread also gets its own malloc arena: few threads, few
        # arenas), within the budget of decoded bytes in flight
        self.decode_executor = ThreadPoolExecutor(
            max_workers=max(1, decode_threads), thread_name_prefix="imgcls-decode"
        )
        self.budget = DecodeBudget(max_decode_bytes, wait_s=decode_wait_s)
        self.requests = 0
        self._gradcam = None
        self._gradcam_lock = threading.Lock()

    @property
    def gradcam_available(self) -> bool:
        """Grad-CAM needs the PyTorch module: checkpoints have it, ONNX models do not."""
        return self.runner.module is not None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, S, S] -> normalised float32 model input."""
        return images.float().div_(255.0).sub_(self.mean).div_(self.std)

    def _probs(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.forward(self.normalize(batch))
        logits = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        return self.activate(logits)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] -> probabilities: softmax, or one sigmoid per class for a multi-label model."""
        return torch.sigmoid(logits.float()) if self.runner.multilabel else torch.softmax(logits.float(), dim=1)

    def answer(self, probs: torch.Tensor, k: int) -> dict[str, Any]:
        """What /predict and /gradcam return for one image: the top-k ``predictions``; for a multi-label model also
        ``labels``, every class at or above its threshold with its probability (most probable first)."""
        out: dict[str, Any] = {"predictions": self.topk(probs, k)}
        if self.runner.multilabel:
            thr = self.runner.thresholds or [0.5] * len(self.runner.classes)
            on = [i for i in range(len(thr)) if float(probs[i]) >= thr[i]]
            out["labels"] = [
                {
                    "label": self.runner.classes[i],
                    "index": i,
                    "probability": round(float(probs[i]), 6),
                    "threshold": round(float(thr[i]), 6),
                }
                for i in sorted(on, key=lambda i: -float(probs[i]))
            ]
        return out

    def probe(self, data: bytes, content_type: str | None, filename: str, *, min_side: int) -> ImageHeader:
        """An upload's checked header (400 / 413 / 415 before any decoding; see :func:`probe_upload`)."""
        return probe_upload(
            data, max_pixels=self.max_pixels, min_side=min_side, content_type=content_type, filename=filename
        )

    def decode(
        self, data: bytes, content_type: str | None, filename: str, *, min_side: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (uint8 image [C, H, W] as decoded, uint8 model-size image [C, S, S]).

        The first is reduced while decoding to between ``min_side`` (default: :data:`REDUCE_MARGIN` times the model's
        input side) and twice that per side when it is larger, so no full-size copy of a large upload outlives this
        call; images within twice ``min_side`` decode as they are.
        """
        img = decode_upload(
            data,
            in_chans=self.runner.preprocess.in_chans,
            max_pixels=self.max_pixels,
            content_type=content_type,
            filename=filename,
            min_side=min_side or self.min_side,
        )
        x = self.fix_channels(img)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = self.resize(x)
        return img, x

    async def decode_bounded(
        self, data: bytes, header: ImageHeader, content_type: str | None, filename: str, *, min_side: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` within the decode budget: small images at once on the event loop, large ones in the decode
        threads once their :func:`decode_cost` is reserved (413 over the whole budget, 503 after waiting too long).

        The reservation is released when the decode thread is done, even if the client has gone away meanwhile.
        """
        if header.pixels <= INLINE_DECODE_PIXELS:  # cheaper than a thread hop
            return self.decode(data, content_type, filename, min_side=min_side)
        cost = decode_cost(header)
        await self.budget.acquire(cost, filename)
        loop = asyncio.get_running_loop()
        try:
            done: Future = self.decode_executor.submit(self.decode, data, content_type, filename, min_side=min_side)
        except RuntimeError:  # the executor is shut down: the app is stopping
            self.budget.release(cost)
            raise
        done.add_done_callback(lambda _: _call_on(loop, self._release, cost))
        return await asyncio.wrap_future(done)

    def _release(self, cost: int) -> None:
        """Give back a decode reservation; once the decoders are idle after large decodes, trim the heap."""
        b = self.budget
        b.release(cost)
        if (b.in_use == 0 and b.released >= TRIM_AFTER_BYTES) or b.released >= b.capacity:
            b.take_released()
            try:
                self.decode_executor.submit(trim_heap)  # a few ms: not on the event loop
            except RuntimeError:  # shut down: the app is stopping
                pass

    def topk(self, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        k = max(1, min(k, probs.shape[-1]))
        values, indices = probs.topk(k)
        return [
            {"label": self.runner.classes[i], "index": i, "probability": round(float(v), 6)}
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def gradcam(self, image: torch.Tensor, x: torch.Tensor, class_index: int | None) -> dict[str, Any]:
        """Grad-CAM of one image (runs in the model thread): probabilities, the explained class, a PNG overlay."""
        with self._gradcam_lock:
            if self._gradcam is None:
                self._gradcam = GradCAM(self.runner.module)
            cams, logits = self._gradcam(self.normalize(x[None]), class_index)
        probs = self.activate(logits)[0]
        target = int(class_index) if class_index is not None else int(probs.argmax())
        overlay = overlay_heatmap(_display_image(image), cams[0].numpy())
        return {
            "probs": probs,
            "class_index": target,
            "label": self.runner.classes[target],
            "overlay": _png_data_url(overlay),
            "input": _png_data_url(_hwc(x)),  # the model-size image the model was given (before normalising)
        }


def _call_on(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from another thread; directly when the loop is closed (nothing else runs on it)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        fn(*args)


def _hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> uint8 [H, W, 3] (three channels) or [H, W] (any other number: the first one), for Pillow."""
    return image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()


def _png_data_url(pixels: np.ndarray) -> str:
    """uint8 [H, W] or [H, W, 3] -> a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _display_image(image: torch.Tensor, *, small: int = 192, large: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 [C, H, W] -> uint8 [H', W', 3] for display: tiny images enlarged (nearest), big ones shrunk."""
    pil = Image.fromarray(_hwc(image)).convert("RGB")
    side = max(pil.size)
    if side < small:
        f = -(-small // side)
        pil = pil.resize((pil.width * f, pil.height * f), Image.NEAREST)
    elif side > large:
        s = large / side
        pil = pil.resize((max(1, round(pil.width * s)), max(1, round(pil.height * s))), Image.BILINEAR)
    return np.asarray(pil)


def create_app(
    model_path: str | Path,
    max_batch: int = 32,
    max_wait_ms: float = 0,
    max_queue: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_files: int = 64,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
    decode_threads: int = 2,
    topk: int = 5,
    device: str = "cpu",
    threads: int | None = None,
    gradio_ui: bool = False,
    docs: bool = True,
    backend: str = "auto",
) -> FastAPI:
    """The FastAPI app serving one model.

    Args:
        model_path: a checkpoint / run folder, or an imgcls ``.onnx`` file (FP32 or INT8).
        max_batch: largest micro-batch per model call.
        max_wait_ms: 0 (default): the adaptive batcher (the idle model takes whatever waits, at once); > 0: also
            wait up to this long for a batch to fill (see :class:`MicroBatcher`).
        max_queue: images allowed to wait; beyond -> 503.
        max_body_bytes: largest request body; beyond -> 413.
        max_pixels: largest image (width x height, from its header); beyond -> 413.
        max_files: most files in one ``/predict/batch`` request; beyond -> 413.
        max_request_pixels: most pixels (from the headers) of all images in one request together; beyond -> 413.
        max_decode_bytes: decoded bytes in flight across all requests (:func:`decode_cost` of each large image);
            an image whose cost alone is more -> 413.
        decode_wait_s: how long a request waits for room in the decode budget; beyond -> 503 with Retry-After.
        decode_threads: threads that decode large images.
        topk: default number of classes returned.
        device: torch device for checkpoint models.
        threads: intra-op threads for the model.
        gradio_ui: also serve a Gradio UI at ``/ui`` (needs ``pip install 'imgcls[gradio]'``).
        docs: serve the OpenAPI schema and its pages (``/openapi.json``, ``/docs``, ``/redoc``); False for a
            server that should not describe itself.
        backend: ``auto``: for a checkpoint, predict with the fastest verified export beside it (ONNX, INT8,
            OpenVINO; see :func:`choose_backend`); ``pytorch``: the checkpoint itself.

    Raises:
        RuntimeError: ``gradio_ui`` is set and gradio is not installed.
    """
    runner = load_runner(model_path, device=device, threads=threads, backend=backend)
    service = InferenceService(
        runner,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        max_decode_bytes=max_decode_bytes,
        decode_wait_s=decode_wait_s,
        decode_threads=decode_threads,
    )
    default_k = max(1, min(topk, len(runner.classes)))
    urls = {} if docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="imgcls",
        description=f"{runner.name}: {len(runner.classes)} classes",
        lifespan=_lifespan(service),
        **urls,
    )
    app.state.service = service
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware, page_policies={"/": page_csp(page)})  # outermost: every answer
    _add_info_routes(app, service, page=page, default_k=default_k, max_body_bytes=max_body_bytes, max_files=max_files)
    _add_predict_routes(app, service, default_k=default_k, max_files=max_files)
    _add_gradcam_route(app, service, default_k=default_k)
    if gradio_ui:
        app = _mount_gradio_ui(app, service, default_k=default_k)
    return app


def _lifespan(service: InferenceService) -> Any:
    """Startup and shutdown: the batcher's worker starts with the app; on shutdown it stops, pending requests get
    an error, and the model and decode threads are let go."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()
            service.model_executor.shutdown(wait=False, cancel_futures=True)
            service.decode_executor.shutdown(wait=False, cancel_futures=True)

    return lifespan


def _busy() -> HTTPException:
    return HTTPException(503, "server busy: the request queue is full, retry shortly", headers={"Retry-After": "1"})


async def _read_and_decode(
    service: InferenceService, uploads: list[UploadFile], *, min_side: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A request's uploads -> (uint8 image as decoded, uint8 model-size image) each; see
    :meth:`InferenceService.decode`.

    Every header is checked before the first image is decoded (per image: 400 / 413 / 415; all together over
    ``max_request_pixels``: 413); then the images decode one after the other within the decode budget, so one request
    holds at most one large decoded image at a time, and each upload's bytes are let go once it is decoded.
    """
    side = min_side or service.min_side
    names = [u.filename or "file" for u in uploads]
    datas = [await u.read() for u in uploads]  # at most max_body_bytes in all
    headers = [
        service.probe(d, u.content_type, n, min_side=side) for d, u, n in zip(datas, uploads, names, strict=True)
    ]
    total = sum(h.pixels for h in headers)
    if total > service.max_request_pixels:
        raise HTTPException(
            413,
            f"{len(uploads)} image(s) with {total:,} pixels in all, more than {service.max_request_pixels:,} "
            "in one request",
        )
    out = []
    for i, (upload, header) in enumerate(zip(uploads, headers, strict=True)):
        data, datas[i] = datas[i], b""
        out.append(await service.decode_bounded(data, header, upload.content_type, names[i], min_side=side))
    return out


def _add_info_routes(
    app: FastAPI, service: InferenceService, *, page: str, default_k: int, max_body_bytes: int, max_files: int
) -> None:
    """``GET /`` (the web page ``page``, whose CSP hashes its inline script and style), ``GET /health`` and
    ``GET /metadata``."""
    runner = service.runner

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        b = service.batcher
        return {
            "status": "ok",
            "model": runner.name,
            "queued": b.queued,
            "batches": b.batches,
            "images": b.items,
            "requests": service.requests,
        }

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        b = service.batcher
        limits = {
            "max_body_bytes": max_body_bytes,
            "max_pixels": service.max_pixels,
            "max_request_pixels": service.max_request_pixels,
            "max_decode_bytes": service.budget.capacity,
            "max_files": max_files,
            "max_batch": b.max_batch,
            "max_wait_ms": b.max_wait * 1e3,
            "max_queue": b.max_queue,
        }
        return {
            "model": runner.name,
            "kind": runner.kind,
            "backend": runner.info.get("backend"),  # what predicts: name, label, path, why (and what was timed)
            "quantized": bool(runner.info.get("quantized")),
            "dataset": runner.info.get("dataset"),
            "weights": runner.info.get("weights"),
            "run": runner.info.get("run") or None,  # None: no summary.json beside the model
            "classes": runner.classes,
            "num_classes": len(runner.classes),
            "preprocess": runner.preprocess.to_dict(),
            "formats": [f.lower() for f in FORMATS],
            "gradcam": service.gradcam_available,
            "topk": default_k,
            "multilabel": runner.multilabel,
            "thresholds": runner.thresholds,
            "limits": limits,
        }


def _add_predict_routes(app: FastAPI, service: InferenceService, *, default_k: int, max_files: int) -> None:
    """``POST /predict`` (one image) and ``POST /predict/batch`` (several), both through the micro-batcher."""

    @app.post("/predict")
    async def predict(file: UploadFile = File(...), topk: int = Query(default_k, ge=1)) -> dict[str, Any]:
        service.requests += 1
        if service.batcher.free_slots() < 1:
            raise _busy()  # before decoding: a busy server should not spend time on the image
        ((_, x),) = await _read_and_decode(service, [file])
        try:
            probs = await service.batcher.submit(x)
        except QueueFullError as e:
            raise _busy() from e
        return {"filename": file.filename, **service.answer(probs, topk)}

    @app.post("/predict/batch")
    async def predict_batch(files: list[UploadFile] = File(...), topk: int = Query(default_k, ge=1)) -> dict[str, Any]:
        service.requests += 1
        if len(files) > max_files:
            raise HTTPException(413, f"{len(files)} files in one request, more than {max_files}")
        if service.batcher.free_slots() < len(files):
            raise _busy()
        images = [x for _, x in await _read_and_decode(service, files)]  # model-size only: the rest is freed
        try:
            outs = await service.batcher.submit_many(images)
        except QueueFullError as e:
            raise _busy() from e
        results = [{"filename": f.filename, **service.answer(p, topk)} for f, p in zip(files, outs, strict=True)]
        return {"results": results}


def _add_gradcam_route(app: FastAPI, service: InferenceService, *, default_k: int) -> None:
    """``POST /gradcam``: top-k and a Grad-CAM overlay, computed in the model thread (checkpoint models only)."""
    runner = service.runner

    @app.post("/gradcam")
    async def gradcam(
        file: UploadFile = File(...),
        class_index: int | None = Query(None, ge=0),
        topk: int = Query(default_k, ge=1),
    ) -> dict[str, Any]:
        service.requests += 1
        if runner.module is None:
            raise HTTPException(501, f"Grad-CAM needs a PyTorch checkpoint; this server runs an {runner.kind} model")
        if class_index is not None and class_index >= len(runner.classes):
            raise HTTPException(422, f"class_index must be < {len(runner.classes)}")
        ((image, x),) = await _read_and_decode(service, [file], min_side=max(service.min_side, DISPLAY_SIDE))
        loop = asyncio.get_running_loop()
        try:
            res = await loop.run_in_executor(service.model_executor, service.gradcam, image, x, class_index)
        except ValueError as e:  # e.g. a model without a conv layer
            raise HTTPException(501, f"Grad-CAM is not possible for this model: {e}") from e
        return {
            "filename": file.filename,
            **service.answer(res["probs"], topk),
            "class_index": res["class_index"],
            "label": res["label"],
            "overlay": res["overlay"],
            "input": res["input"],
        }


def _mount_gradio_ui(app: FastAPI, service: InferenceService, *, default_k: int) -> FastAPI:
    """The optional Gradio UI at ``/ui``, predicting along the ``/predict`` path."""

    def gradio_probs(image: Image.Image) -> list[float]:
        # the /predict path: same decoding and resizing, the model in the one model thread (gradio calls this
        # in its own worker thread, so waiting here never blocks the event loop)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        _, x = service.decode(buf.getvalue(), "image/png", "image")
        return service.model_executor.submit(service._probs, x[None]).result()[0].tolist()

    runner = service.runner
    return mount_gradio(app, gradio_probs, runner.classes, path="/ui", topk=default_k, title=f"imgcls: {runner.name}")
