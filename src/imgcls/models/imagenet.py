"""ImageNet-1k's classes, shipped with the package, and matching an ImageFolder's class folders to them.

``imagenet_classes.tsv`` lists the 1000 classes in the index order of every published ImageNet classifier: the
WordNet id (``n01440764``, the folder names of the ImageNet release) and the name torchvision's weights give it
(``tench``). Models with published ImageNet weights (``imgcls predict efficientnet_lite0 photo.jpg``) print these
names; ``imgcls eval efficientnet_lite0 data.root=FOLDER`` maps FOLDER's class folders to these indices.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from imgcls.config import ConfigError

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
NUM_CLASSES = 1000


@functools.cache
def _table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = [line.split("\t") for line in CLASSES_FILE.read_text().splitlines() if line and not line.startswith("#")]
    if len(rows) != NUM_CLASSES or any(len(r) != 2 for r in rows):
        raise RuntimeError(f"{CLASSES_FILE} is damaged: expected {NUM_CLASSES} lines of 'wnid<TAB>name'")
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_classes() -> list[str]:
    """The 1000 class names in index order (``imagenet_classes()[281] == "tabby"``)."""
    return list(_table()[1])


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids in index order (``imagenet_wnids()[0] == "n01440764"``)."""
    return list(_table()[0])


def _key(name: str) -> str:
    """Folder names as people write class names: case, spaces, underscores and dashes do not matter."""
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def imagenet_indices(folders: Sequence[str]) -> list[int]:
    """The ImageNet index of each class folder: named by its WordNet id (``n02123045``) or its class name (``tabby``,
    ``Egyptian_cat``; case, spaces, underscores and dashes do not matter).

    Raises:
        ConfigError: a folder matches no ImageNet class (naming a few, and what folder names are accepted).
    """
    wnids, names = _table()
    by_key = {w: i for i, w in enumerate(wnids)} | {_key(n): i for i, n in enumerate(names)}
    indices, unknown = [], []
    for folder in folders:
        index = by_key.get(folder, by_key.get(_key(folder)))
        if index is None:
            unknown.append(folder)
        else:
            indices.append(index)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise ConfigError(
            f"{len(unknown)} of the {len(folders)} class folders are not ImageNet classes: {shown}. A model with "
            "ImageNet weights is evaluated on folders named by WordNet id (n01440764) or class name (tench, "
            f"Egyptian_cat); the 1000 names are in {CLASSES_FILE.name} of the imgcls package"
        )
    return indices
