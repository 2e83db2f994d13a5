"""Reading dataset images: the one decode policy for image folders, archives, channel statistics, previews and
prediction, and the one bad-file cap (``data.max_bad_fraction``).

:func:`read_image` decodes one image (a path or the bytes of an archive member) in three steps:

1. **Header.** ``Image.open`` parses only the header. More than ``max_pixels`` pixels (``data.max_image_pixels``,
   default 40 megapixels, below Pillow's own bomb limit of about 179 megapixels) makes the file bad *before* any pixel
   is decoded, so a decompression bomb (a small file that decodes to gigabytes) costs milliseconds and no memory.
2. **Decode.** ``load()`` decodes every byte now, so a truncated file fails here, with its name.
3. **Channels.** The decoded mode becomes uint8 with the expected channels (1: L, 3: RGB):

   =========================  ==========================================================================================
   mode                       to 8 bits
   =========================  ==========================================================================================
   I;16, I;16L, I;16B, I;16N  16-bit values ``v`` in 0..65535 (16-bit PNG, TIFF): ``round(v / 257)``, computed
   I                          exactly as ``(v + 128) // 257``; 65535 -> 255, and the 8->16 bit expansion ``x * 257``
                              maps back to ``x``. Mode I (16-bit PGM, 32-bit TIFF) is read as 16-bit, clipped to
                              0..65535.
   F                          32-bit float: values in [0, 1] are scaled by 255, other ranges are taken as 0..255
                              (Pillow's convention); rounded, clipped, NaN -> 0.
   with alpha (RGBA, LA, PA,  composited over white, as a viewer shows them on a page (transparent pixels hold
   P/L/RGB + transparency)    arbitrary colours otherwise).
   1, L, P, RGB, CMYK, LAB,   Pillow's ``convert`` to RGB (1 -> 0/255 L), then to L by ITU-R 601-2 luma if one channel
   YCbCr, ...                 is wanted; a mode Pillow cannot convert is a bad file.
   =========================  ==========================================================================================

Whatever goes wrong (not an image, truncated, a bomb, a mode Pillow cannot convert) raises :class:`BadImageError`,
whose ``reason`` is one line. Dataset code records it as a :class:`BadFile` (name + reason) and
:func:`check_bad_files` applies the cap, the same way for folders and archives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from imgcls.config import DataConfig

log = logging.getLogger(__name__)

#: the pixel cap when no config is at hand (prediction, explain): the config's default
DEFAULT_MAX_IMAGE_PIXELS: int = DataConfig.max_image_pixels

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class BadImageError(OSError):
    """An image file that cannot be used: not an image, truncated or corrupt, too large, or of a mode that cannot be
    converted. ``reason`` says which in one line; the message also names the file."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)  # one positional argument, so the error pickles and DataLoader workers re-raise it
        self.reason = message if reason is None else reason


@dataclass(frozen=True)
class BadFile:
    """An image file a dataset skipped: its name relative to the dataset root (``train/cat/0.png``, the same for a
    folder and for a .tar.gz of it) and why."""

    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass
class ReadReport:
    """What a loader that decodes every file up front (an archive) read: how many image files, which were bad."""

    where: str  #: the dataset, for messages (the archive's path)
    read: int = 0  #: image files decoded, bad ones included
    bad: list[BadFile] = field(default_factory=list)


class TooManyBadFilesError(BadImageError):
    """More image files failed to decode than ``data.max_bad_fraction`` allows. The message names some of them.

    A :class:`BadImageError`, so the CLI reports it as a one-line error like a single undecodable file.
    """


def _bad(label: str, reason: str) -> BadImageError:
    return BadImageError(f"cannot decode image {label}: {reason}", reason)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _sixteen_to_uint8(im: Image.Image) -> np.ndarray:
    """Modes I;16* and I -> uint8 [H, W] by ``round(v / 257)`` of the values clipped to 0..65535."""
    v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)  # exact rounding: v / 257 is never halfway between two integers


def _float_to_uint8(im: Image.Image) -> np.ndarray:
    """Mode F -> uint8 [H, W]: [0, 1] data scaled by 255, anything else read as 0..255."""
    a = np.asarray(im, dtype=np.float64)
    a = np.where(np.isfinite(a), a, 0.0)
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def to_uint8(im: Image.Image, in_chans: int) -> np.ndarray:
    """A decoded image -> uint8 [H, W, in_chans] by the table in the module docstring.

    Raises:
        ValueError: a mode Pillow cannot convert.
    """
    if im.mode in _SIXTEEN_BIT_MODES:
        im = Image.fromarray(_sixteen_to_uint8(im), mode="L")
    elif im.mode == "F":
        im = Image.fromarray(_float_to_uint8(im), mode="L")
    elif _has_alpha(im):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if im.mode not in ("L", "RGB"):  # via RGB: Pillow converts some modes (LAB) to RGB only
        im = im.convert("L" if im.mode == "1" else "RGB")
    arr = np.asarray(im.convert("L" if in_chans == 1 else "RGB"), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image(
    source: str | Path | BinaryIO,
    *,
    in_chans: int = 3,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    name: str | None = None,
    draft: bool = False,
) -> np.ndarray:
    """Decode one image to uint8 [H, W, in_chans] (``in_chans`` 1: L, 3: RGB), by the policy of the module docstring.

    Args:
        source: a path, or a binary file object (an archive member's bytes).
        in_chans: 1 or 3 output channels.
        max_pixels: the most pixels (width x height, from the header) an image may have; more is a bad file.
        name: how errors name the file (default: the path).
        draft: let JPEGs decode at about 1/8 size (DCT scaling still reads every byte, so truncation is still
            caught): for checking files, not for using them.

    Raises:
        BadImageError: the file cannot be used; ``reason`` says why in one line.
    """
    label = name if name is not None else str(source)
    try:
        with Image.open(source) as im:
            width, height = im.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise _bad(
                    label,
                    f"too large: {width}x{height} = {width * height / 1e6:.1f} megapixels, over "
                    f"data.max_image_pixels={max_pixels}",
                )
            if draft:
                im.draft(None, (max(1, width // 8), max(1, height // 8)))  # a no-op for formats other than JPEG
            im.load()  # the full decode, here, so truncated files fail now with their name
            try:
                return to_uint8(im, in_chans)
            except ValueError as e:
                raise _bad(label, f"unsupported mode {im.mode}: {_one_line(e)}") from e
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:  # over Pillow's own limit: refused by Image.open from the header
        # Pillow's words up to its comma: "Image size (N pixels) exceeds limit of M pixels"
        raise _bad(label, f"decompression bomb: {_one_line(e).split(',')[0]}") from e
    except Image.UnidentifiedImageError as e:
        raise _bad(label, "not an image: Pillow cannot identify it") from e
    except FileNotFoundError as e:
        raise _bad(label, "file not found") from e
    except MemoryError as e:
        raise _bad(label, "out of memory while decoding") from e
    except OSError as e:  # what Pillow raises for data that ends early or does not parse
        raise _bad(label, f"truncated or corrupt: {_one_line(e)}") from e
    # besides OSError, Pillow's format parsers raise many types on malformed data (SyntaxError, ValueError,
    # struct.error, IndexError, zlib.error, ...): any of them makes this one file bad, never the whole run
    except Exception as e:
        raise _bad(label, f"{type(e).__name__}: {_one_line(e)}") from e


def image_problem(
    source: str | Path | BinaryIO, *, in_chans: int = 3, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> str | None:
    """None if ``source`` decodes under the policy, else the one-line reason (JPEGs are checked in draft mode)."""
    try:
        read_image(source, in_chans=in_chans, max_pixels=max_pixels, draft=True)
    except BadImageError as e:
        return e.reason
    return None


def decode_image_file(path: str | Path, in_chans: int = 3, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode an image file to uint8 [C, H, W] (:func:`read_image`). Raises :class:`BadImageError` naming the file."""
    arr = read_image(path, in_chans=in_chans, max_pixels=max_pixels)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # a copy: Pillow's arrays are read-only


def check_bad_files(bad: list[BadFile], *, total: int, max_bad_fraction: float, where: str) -> None:
    """The one cap on bad files, for folders and archives alike: log them, and stop if there are too many.

    Args:
        bad: the files skipped.
        total: how many image files were read or checked, bad ones included.
        max_bad_fraction: ``data.max_bad_fraction``.
        where: the dataset (its ``data.root``), for the messages.

    Raises:
        TooManyBadFilesError: more than ``max_bad_fraction`` of ``total`` are bad; one line with the count, the first
            three files and their reasons, and the key to raise.
    """
    if not bad:
        return
    for b in bad:
        log.warning("skipping undecodable image %s in %s (%s)", b.file, where, b.reason)
    fraction = len(bad) / max(1, total)
    if fraction > max_bad_fraction:
        shown = "; ".join(f"{b.file} ({b.reason})" for b in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TooManyBadFilesError(
            f"{len(bad)} of {total} image files ({fraction:.1%}) in {where} cannot be decoded, more than "
            f"data.max_bad_fraction={max_bad_fraction:g}: {shown}{more}. Fix or remove them, or raise "
            "data.max_bad_fraction"
        )
    log.warning(
        "%d of %d image files in %s could not be decoded and are skipped (see bad_files in the run summary)",
        len(bad),
        total,
        where,
    )
