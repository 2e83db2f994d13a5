"""Decoding uploaded images for the server, within bounds on pixels and on memory.

Three bounds, each answered with a clear status (never a 5xx):

- per image, ``max_pixels`` (width x height read from the header, before any pixel is decoded) -> 413;
- per request, the sum of the images' header pixels, checked by the app before the first image is decoded -> 413;
- across requests, a :class:`DecodeBudget` of decoded bytes in flight: each large image reserves its
  :func:`decode_cost` before it is decoded and frees it once only the model-size tensor is left. A request waits (in
  arrival order) for the budget at most ``wait_s`` -> 503 with ``Retry-After``; an image whose cost alone is over the
  whole budget -> 413.

Images are shrunk as early as possible: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``Image.draft``)
and every image is then reduced by an integer box filter (``Image.reduce``) to between ``min_side`` and twice that
per side, before the model's own antialiased resize. Images already within ``2 * min_side`` per side (all the
small ones) are decoded exactly as before, so their predictions equal ``imgcls predict``'s. Only the first frame of
an animated or multi-page file is decoded, and only the formats in :data:`FORMATS` are opened (no EPS: Pillow would
run Ghostscript on it).

glibc keeps freed heap memory in its arenas, so after large decodes the app calls :func:`trim_heap`
(``malloc_trim``), which hands it back to the system, and ``imgcls serve`` calls :func:`map_large_blocks`, so that
Pillow's large blocks are mapped and unmapped rather than kept in the arenas; elsewhere both are no-ops.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from PIL import Image

Image.init()  # every plugin registered now: Image.open(formats=...) looks only at those already loaded
#: image formats the server opens (Pillow's names; those this Pillow build has); anything else is a 415
FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP", "TIFF", "PPM", "ICO") if f in Image.OPEN)
#: upload content types accepted besides image/*: browsers and curl send these for unknown or missing types
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}
#: modes reduced before they are converted to L or RGB (the conversion is linear per pixel, so the order hardly
#: matters); others ("1", "P", "I;16", "CMYK", ...) are converted first, as Image.reduce refuses some and clipping or
#: colour conversion does not commute with averaging
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBX"}


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding its pixels.

    ``width`` x ``height`` is the size in the file; a JPEG read with ``min_side`` decodes at ``1 / draft_scale`` of it.
    """

    width: int
    height: int
    mode: str
    format: str
    draft_scale: int = 1

    @property
    def pixels(self) -> int:
        """Width x height in the file: what the per-image and per-request limits count."""
        return self.width * self.height

    @property
    def decoded_pixels(self) -> int:
        """Pixels Pillow will actually decode (fewer than :attr:`pixels` for a JPEG at draft scale)."""
        s = self.draft_scale
        return -(-self.width // s) * -(-self.height // s)


def _check_content_type(content_type: str | None, filename: str) -> None:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype and ctype not in _GENERIC_TYPES and not ctype.startswith("image/"):
        raise HTTPException(415, f"{filename}: content type {ctype} is not an image")


def _open(data: bytes, filename: str) -> Image.Image:
    """``Image.open`` of an upload, or an HTTPException: 400 empty, 413 over Pillow's bomb limit, 415 not an image."""
    if not data:
        raise HTTPException(400, f"{filename}: empty file")
    error = None
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        error = HTTPException(413, f"{filename}: image too large ({e})")
    except Exception:  # noqa: BLE001 - Pillow's parsers raise many types on hostile headers; all mean "not an image"
        error = HTTPException(415, f"{filename}: not a supported image file")
    raise error  # outside the except block: the HTTPException does not hold Pillow's traceback (and its frames)


def probe_upload(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int | None = None,
    content_type: str | None = None,
    filename: str = "file",
) -> ImageHeader:
    """The header of an uploaded image, checked: 415 wrong content type or not an image, 400 empty, 413 more than
    ``max_pixels`` pixels or over Pillow's bomb limit. Nothing is decoded.

    With ``min_side``, ``draft_scale`` says at which scale a JPEG will be decoded (see :func:`decode_upload`).
    """
    _check_content_type(content_type, filename)
    im = _open(data, filename)
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise HTTPException(413, f"{filename}: image has {w}x{h} = {w * h:,} pixels, more than {max_pixels:,}")
        scale = _draft(im, min_side) if min_side else 1
        return ImageHeader(width=w, height=h, mode=im.mode, format=im.format or "", draft_scale=scale)


def header_pixels(data: bytes) -> int:
    """Width x height from an image header without decoding the pixels (0 when it is not a readable image)."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            return im.width * im.height
    except Exception:  # noqa: BLE001 - anything unreadable is reported by decode_upload with the right status
        return 0


def decode_cost(header: ImageHeader) -> int:
    """Bytes that decoding the image holds at its peak (an estimate from the header): Pillow's storage of the
    decoded image (1 byte a pixel for 1/L/P, 2 for 16-bit, else 4) plus a 4-byte-a-pixel converted or reduced copy."""
    stored = 1 if header.mode in ("1", "L", "P") else 2 if header.mode.startswith("I;16") else 4
    return header.decoded_pixels * (stored + 4)


def _draft(im: Image.Image, min_side: int) -> int:
    """A JPEG decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), each side still >= ``min_side``; -> the
    scale (1 for other formats and small images)."""
    width = im.width
    if im.format in ("JPEG", "MPO") and min(im.size) >= 2 * min_side:
        im.draft(None, (min_side, min_side))
    return round(width / im.width)


def _reduced(im: Image.Image, min_side: int) -> Image.Image:
    """``im`` shrunk by an integer box filter per axis so that each side stays >= ``min_side`` (a new image, or
    ``im`` when it is small enough already)."""
    fx, fy = max(1, im.width // min_side), max(1, im.height // min_side)
    return im.reduce((fx, fy)) if fx > 1 or fy > 1 else im


def _to_tensor(im: Image.Image, mode: str, min_side: int | None) -> torch.Tensor:
    """Loaded image -> uint8 [C, H, W] in ``mode`` ("L" or "RGB"), reduced first when ``min_side`` is given; every
    intermediate Pillow image is closed (its pixels freed) as soon as the next one exists."""
    steps = [im]
    try:
        if min_side and steps[-1].mode not in _REDUCIBLE:
            steps.append(steps[-1].convert(mode))
        if min_side:
            steps.append(_reduced(steps[-1], min_side))
        if steps[-1].mode != mode:
            steps.append(steps[-1].convert(mode))
        arr = np.array(steps[-1], dtype=np.uint8)  # a copy: the tensor owns its memory
    finally:
        for s in steps[1:]:
            s.close()
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def decode_upload(
    data: bytes,
    *,
    in_chans: int,
    max_pixels: int,
    content_type: str | None = None,
    filename: str = "file",
    min_side: int | None = None,
) -> torch.Tensor:
    """Bytes of an uploaded image -> uint8 [C, H, W] (C = 1 for ``in_chans`` 1, else 3), or an ``HTTPException``.

    400 empty, 415 not an image, 413 too many pixels (header check before decoding) or over Pillow's bomb limit,
    422 truncated or corrupt. With ``min_side``, a large image comes back reduced (JPEG draft, then an integer box
    filter) to between ``min_side`` and ``2 * min_side`` per side; a smaller one comes back as it is.
    """
    probe_upload(data, max_pixels=max_pixels, content_type=content_type, filename=filename)
    im = _open(data, filename)
    error = None
    try:
        if min_side:
            _draft(im, min_side)
        im.load()
        return _to_tensor(im, "L" if in_chans == 1 else "RGB", min_side)
    except Image.DecompressionBombError as e:
        error = HTTPException(413, f"{filename}: image too large ({e})")
    except MemoryError:
        error = HTTPException(413, f"{filename}: image too large to decode")
    except Exception as e:  # noqa: BLE001 - truncated or hostile data raises OSError, SyntaxError, ValueError, ...
        error = HTTPException(422, f"{filename}: cannot decode the image (truncated or corrupt: {e})")
    finally:
        im.close()  # frees the decoded pixels now, not when a traceback that holds this frame is collected
    raise error


# --------------------------------------------------------------------------------------------------------------------
# Decoded bytes in flight, across requests
# --------------------------------------------------------------------------------------------------------------------


class DecodeBudget:
    """Bytes of decoded pixels in flight across all requests, granted in arrival order.

    ``async with budget.reserve(n):`` waits until ``n`` bytes are free (at most ``wait_s`` seconds -> 503 with
    ``Retry-After``), or raises 413 at once when ``n`` is more than the whole budget. No asyncio primitive is bound to
    a loop here (one future per waiter), so one budget serves any event loop.

    Attributes:
        capacity: the budget, in bytes.
        in_use: bytes reserved now; ``peak``: the most reserved at once.
        released: bytes released since the last :meth:`take_released` (the app trims the heap after large decodes).
    """

    def __init__(self, capacity: int, *, wait_s: float) -> None:
        if capacity < 1:
            raise ValueError("the decode budget must be >= 1 byte")
        self.capacity, self.wait_s = capacity, wait_s
        self.in_use = self.peak = self.released = 0
        self.waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def reserve(self, n: int, filename: str = "file") -> _Reservation:
        return _Reservation(self, n, filename)

    async def acquire(self, n: int, filename: str = "file") -> None:
        if n > self.capacity:
            mib = 2**20
            detail = f"{filename}: decoding needs about {n / mib:,.0f} MiB, more than the decode budget"
            raise HTTPException(413, f"{detail} of {self.capacity / mib:,.0f} MiB")
        if not self.waiters and self.in_use + n <= self.capacity:
            self._take(n)
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((n, fut))
        try:
            await asyncio.wait_for(fut, self.wait_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as the wait ended: hand it back
            else:
                self._drop(fut)
            if isinstance(e, asyncio.CancelledError):
                raise
            detail = f"server busy: {self.in_use / 2**20:,.0f} MiB of images are being decoded, retry shortly"
            raise HTTPException(503, detail, headers={"Retry-After": "1"}) from None

    def release(self, n: int) -> None:
        self.in_use -= n
        self.released += n
        self._grant()

    def take_released(self) -> int:
        """Bytes released since the last call (and reset to 0)."""
        n, self.released = self.released, 0
        return n

    def _take(self, n: int) -> None:
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def _drop(self, fut: asyncio.Future) -> None:
        fut.cancel()
        self.waiters = collections.deque((n, f) for n, f in self.waiters if f is not fut)
        self._grant()  # the dropped waiter may have been the one the others queued behind

    def _grant(self) -> None:
        while self.waiters and self.in_use + self.waiters[0][0] <= self.capacity:
            n, fut = self.waiters.popleft()
            if not fut.done():
                self._take(n)
                fut.set_result(None)


class _Reservation:
    def __init__(self, budget: DecodeBudget, n: int, filename: str) -> None:
        self.budget, self.n, self.filename = budget, n, filename

    async def __aenter__(self) -> None:
        await self.budget.acquire(self.n, self.filename)

    async def __aexit__(self, *exc: object) -> None:
        self.budget.release(self.n)


def _libc_function(name: str, argtypes: list) -> Any:  # noqa: ANN401
    try:
        fn = getattr(ctypes.CDLL(None), name)  # the process's own symbols, libc's among them (no library search)
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_MALLOC_TRIM = _libc_function("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
#: Pillow allocates decoded images in blocks of up to 16 MiB (Image.core.get_block_size())
LARGE_BLOCK_BYTES = 16 * 2**20


def trim_heap() -> bool:
    """Return free heap memory to the system (glibc ``malloc_trim(0)``); False where there is no such call."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def map_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more with its own mmap, so that freeing it gives
    the memory back to the system at once; False where there is no ``mallopt``. Process-wide: the server's CLI calls
    it, a library user of ``create_app`` may.

    Why: by default glibc raises this threshold (up to 32 MiB) each time a large mapped block is freed, after which
    Pillow's 16 MiB blocks come from the heap, and each thread's arena keeps up to that much at its top, which
    ``malloc_trim`` does not release. Measured after the 3 x 64 canvas burst of tests/test_serve_load.py: 20-68 MB
    above the baseline with trimming alone, 3 MB with both. The cost: allocations of 16-32 MiB (large tensors among
    them) are fresh mappings, a page fault per 4 KiB on first touch.
    """
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, threshold))
