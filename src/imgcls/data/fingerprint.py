"""A fingerprint of the data a model was trained on: which images, with which labels, in which split.

Two runs whose fingerprints agree saw the same images in the same splits. In-memory datasets are hashed by their
pixels and labels; file datasets by each file's name (relative to the dataset root) and size, not its bytes: reading
every file would cost as much as an epoch, and a renamed, added, removed or resized file still changes it. Each
split's fingerprint is over its source's hash and the indices it takes, so a different split of the same data (other
``data.seed`` or fractions) changes it too.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from imgcls.data.datasets import FileSource, Splits, SplitView, TensorSource

#: names the hashes in :func:`data_fingerprint` are made with
ALGORITHM = "sha256"


def _source_hash(source: Any) -> str:
    """The content hash of one source (all its samples, whichever split takes them)."""
    h = hashlib.new(ALGORITHM)
    h.update(repr(tuple(source.targets.shape)).encode())
    h.update(source.targets.contiguous().numpy().tobytes())
    if isinstance(source, TensorSource):
        h.update(repr((str(source.images.dtype), tuple(source.images.shape))).encode())
        h.update(source.images.contiguous().numpy().tobytes())
    elif isinstance(source, FileSource):
        for path in source.paths:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1  # a file gone since the scan: still part of what the split names
            h.update(f"{source.name_of(path)}\0{size}\n".encode())
    else:  # another source kind: what it returns, sample by sample
        for i in range(len(source)):
            image, label = source.get(i)
            h.update(image.contiguous().numpy().tobytes() + str(label).encode())
    return h.hexdigest()


def _split_hash(view: SplitView, source_hash: str) -> str:
    h = hashlib.new(ALGORITHM)
    h.update(source_hash.encode())
    h.update(view.indices.astype("int64").tobytes())
    return h.hexdigest()


def data_fingerprint(splits: Splits) -> dict[str, Any]:
    """The fingerprint of ``splits``: one hash for the whole and one per split, with sizes.

    Returns:
        ``{"algorithm": "sha256", "sha256": hex, "classes": [...], "splits": {"train": {"images": n, "sha256":
        hex}, "val": ..., "test": ...}}`` (absent splits left out). The whole's hash covers the class names and every
        split's hash.
    """
    views = {n: v for n, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v is not None}
    by_source: dict[int, str] = {}
    out_splits: dict[str, dict[str, Any]] = {}
    for name, view in views.items():
        key = id(view.source)
        if key not in by_source:
            by_source[key] = _source_hash(view.source)
        out_splits[name] = {"images": len(view), ALGORITHM: _split_hash(view, by_source[key])}
    whole = hashlib.new(ALGORITHM)
    whole.update("\0".join(splits.classes).encode())
    for name, info in out_splits.items():
        whole.update(f"{name}:{info[ALGORITHM]}".encode())
    return {"algorithm": ALGORITHM, ALGORITHM: whole.hexdigest(), "classes": list(splits.classes), "splits": out_splits}
