"""Dataset registry: each entry point returns the raw splits of one dataset as image *sources*.

A source is either a :class:`TensorSource` (the whole dataset as one uint8 tensor [N, C, H, W] in memory: digits,
CIFAR, MNIST, SVHN) or a :class:`FileSource` (paths decoded on demand: ImageFolder, a manifest). Both give ``get(i) ->
(uint8 [C, H, W], label)`` and ``targets``: class indices int64 [N], or for multi-label data multi-hot float32 [N, K]
(``get`` then gives the row [K]). :func:`make_splits` then derives deterministic, stratified train/val/test index
splits from the seed (iterative stratification for multi-label data), or k folds, so every run of the same config
sees the same images in the same split.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from imgcls.config import ConfigError, UserFacingError
from imgcls.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadFile,
    BadImageError,
    ReadReport,
    decode_image_file,
    read_image,
)
from imgcls.registry import Registry

log = logging.getLogger(__name__)

# the same extensions as torchvision.datasets.ImageFolder (no .gif: animated/placeholder files are not photos)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing and could not be downloaded. The message says where to put them."""


def cache_dir() -> Path:
    """Where imgcls caches data and decoded arrays (``$IMGCLS_CACHE`` or ``~/.cache/imgcls``)."""
    return Path(os.environ.get("IMGCLS_CACHE", Path.home() / ".cache" / "imgcls"))


# --------------------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------------------


def as_targets(targets: torch.Tensor | Sequence[int] | np.ndarray) -> torch.Tensor:
    """Labels as a source holds them: class indices -> int64 [N]; a multi-hot matrix [N, K] -> float32 [N, K]."""
    t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
    return t.float() if t.ndim == 2 else t.long()


def label_of(targets: torch.Tensor, i: int) -> int | torch.Tensor:
    """Sample ``i``'s label: an int (single-label) or its multi-hot row float32 [K] (multi-label)."""
    return targets[i] if targets.ndim == 2 else int(targets[i])


class TensorSource:
    """A dataset held in memory as uint8 images [N, C, H, W] and int64 labels [N]."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | Sequence[int]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"TensorSource needs uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.targets = as_targets(targets)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self.images[i], label_of(self.targets, i)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])


class FileSource:
    """Images decoded from files on demand, by the one policy of :mod:`imgcls.data.images` (``max_pixels``:
    ``data.max_image_pixels``). ``root`` is the dataset folder that bad files are named relative to; ``bad_files``
    collects the files that failed the check before loading (:func:`imgcls.data.build.drop_bad_files`)."""

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int] | torch.Tensor | np.ndarray,
        in_chans: int = 3,
        *,
        root: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.paths = list(paths)
        self.targets = as_targets(targets if isinstance(targets, torch.Tensor | np.ndarray) else list(targets))
        self._in_chans = in_chans
        self.root = str(root) if root is not None else None
        self.max_pixels = max_pixels
        self.bad_files: list[BadFile] = []
        self._typical_size: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return decode_image_file(self.paths[i], self._in_chans, self.max_pixels), label_of(self.targets, i)

    def name_of(self, path: str) -> str:
        """``path`` relative to ``root`` with / separators (``train/cat/0.png``), as bad files are reported."""
        if self.root is None:
            return path
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return path

    @property
    def in_chans(self) -> int:
        return self._in_chans

    @property
    def image_size(self) -> tuple[int, int] | None:
        return None  # files may differ in size; set data.image_size (or see typical_size)

    def typical_size(self, max_files: int = 64) -> int | None:
        """The median shorter side of up to ``max_files`` evenly spaced files, from their headers (nothing is
        decoded): the size the data suggests when its files differ. None when none of them opens."""
        if self._typical_size is None:
            step = max(1, len(self.paths) // max_files)
            sides = []
            for path in self.paths[::step][:max_files]:
                try:
                    with Image.open(path) as im:
                        sides.append(min(im.size))
                except (OSError, ValueError, Image.DecompressionBombError):
                    continue  # a bad file: the decode policy reports it when the loaders are built
            self._typical_size = int(np.median(sides)) if sides else 0
        return self._typical_size or None


Source = TensorSource | FileSource


@dataclass
class RawDataset:
    """What a dataset entry point returns: sources for the splits the dataset defines, and class names."""

    train: Source
    classes: list[str]
    val: Source | None = None
    test: Source | None = None
    #: known normalisation statistics (None: computed from the train split)
    mean: list[float] | None = None
    std: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: image files already decoded while loading (archives), bad ones included; None when files are decoded later
    read: ReadReport | None = None


DATASETS: Registry[Callable[..., RawDataset]] = Registry("dataset")


def register_dataset(fn: Callable[..., RawDataset]) -> Callable[..., RawDataset]:
    return DATASETS.register()(fn)


def list_datasets() -> list[str]:
    return DATASETS.list()


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


@register_dataset
def digits(**_: Any) -> RawDataset:
    """scikit-learn's bundled UCI handwritten digits: 1,797 8x8 grayscale images, 10 classes. Always offline."""

    d = load_digits()
    # pixel values are 0..16 counts of set pixels in 4x4 blocks; scale to the usual 0..255 range
    images = torch.from_numpy(np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8))[:, None]
    return RawDataset(train=TensorSource(images, d.target), classes=[str(i) for i in range(10)])


#: digit_pairs: images composed per split, from digits of that split only (so no digit image is in two splits)
DIGIT_PAIRS_SIZES = {"train": 4000, "val": 800, "test": 1000}


@register_dataset
def digit_pairs(**_: Any) -> RawDataset:
    """A bundled multi-label dataset made from :func:`digits`: two digits side by side in a 16x16 grayscale image
    (each 8x8 digit at rows 4..11), labelled with the set of the two digits (one label when both are the same digit).

    The 1,797 digits are first split 60/15/25 (stratified, fixed seed) and each split's pairs are drawn from its own
    digits: 4,000 train, 800 val and 1,000 test images, the same on every machine. Always offline.
    """
    d = load_digits()
    pixels = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)  # [N, 8, 8], as digits() scales
    idx = np.arange(len(pixels))
    rest, test_pool = train_test_split(idx, test_size=0.25, random_state=0, stratify=d.target)
    train_pool, val_pool = train_test_split(rest, test_size=0.2, random_state=0, stratify=d.target[rest])
    rng = np.random.default_rng(0)
    parts = {}
    for split, pool in (("train", train_pool), ("val", val_pool), ("test", test_pool)):
        n = DIGIT_PAIRS_SIZES[split]
        left, right = rng.choice(pool, size=n), rng.choice(pool, size=n)
        images = np.zeros((n, 1, 16, 16), dtype=np.uint8)
        images[:, 0, 4:12, :8], images[:, 0, 4:12, 8:] = pixels[left], pixels[right]
        targets = np.zeros((n, 10), dtype=np.float32)
        targets[np.arange(n), d.target[left]] = 1.0
        targets[np.arange(n), d.target[right]] = 1.0
        parts[split] = TensorSource(torch.from_numpy(images), targets)
    return RawDataset(train=parts["train"], val=parts["val"], test=parts["test"], classes=[str(i) for i in range(10)])


def _default_root(name: str, root: str | None) -> Path:
    return Path(root).expanduser() if root else cache_dir() / "data" / name


def _torchvision(cls_name: str, name: str, root: str | None, download: bool, expected: str, **split_kw: Any) -> Any:
    """Instantiate a torchvision dataset, turning offline/missing-file failures into an actionable error."""

    path = _default_root(name, root)
    cls = getattr(tvd, cls_name)
    try:
        return cls(root=str(path), download=download, **split_kw)
    except (RuntimeError, OSError) as e:  # URLError is an OSError; torchvision raises RuntimeError "not found"
        how = "Downloading failed (no internet?). " if download else "Downloading is off (data.download=false). "
        raise DatasetNotFoundError(
            f"{name}: dataset files not found under {path}. {how}Put the files there ({expected}) "
            f"or point data.root at a folder that has them. Cause: {e}"
        ) from e


def _cifar(name: str, cls_name: str, root: str | None, download: bool, max_pixels: int) -> RawDataset:
    if root and str(root).endswith((".tar.gz", ".tgz", ".tar")):
        return imagefolder_archive(root, max_pixels=max_pixels)
    folder = "cifar-10-batches-py" if cls_name == "CIFAR10" else "cifar-100-python"
    expected = f"the python-version archive extracted as {folder}/, or a .tar.gz of train/<class>/ images as data.root"
    parts = {}
    for split, train in (("train", True), ("test", False)):
        ds = _torchvision(cls_name, name, root, download, expected, train=train)
        parts[split] = TensorSource(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), ds.targets)
    return RawDataset(train=parts["train"], test=parts["test"], classes=list(ds.classes))


@register_dataset
def cifar10(
    root: str | None = None,
    download: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    **_: Any,
) -> RawDataset:
    """CIFAR-10 (50k train / 10k test, 32x32 RGB). ``root`` may also be a .tar.gz of an ImageFolder tree."""
    return _cifar("cifar10", "CIFAR10", root, download, max_image_pixels)


@register_dataset
def cifar100(
    root: str | None = None,
    download: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    **_: Any,
) -> RawDataset:
    """CIFAR-100 (50k train / 10k test, 32x32 RGB, 100 classes)."""
    return _cifar("cifar100", "CIFAR100", root, download, max_image_pixels)


def _mnist_like(name: str, cls_name: str, root: str | None, download: bool) -> RawDataset:
    parts = {}
    for split, train in (("train", True), ("test", False)):
        ds = _torchvision(cls_name, name, root, download, f"{cls_name}/raw/*-ubyte files", train=train)
        parts[split] = TensorSource(ds.data[:, None].to(torch.uint8).contiguous(), ds.targets)
    return RawDataset(train=parts["train"], test=parts["test"], classes=list(ds.classes))


@register_dataset
def mnist(root: str | None = None, download: bool = True, **_: Any) -> RawDataset:
    """MNIST handwritten digits (60k / 10k, 28x28 grayscale)."""
    return _mnist_like("mnist", "MNIST", root, download)


@register_dataset
def fashion_mnist(root: str | None = None, download: bool = True, **_: Any) -> RawDataset:
    """Fashion-MNIST (60k / 10k, 28x28 grayscale, 10 clothing classes)."""
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download)


@register_dataset
def svhn(root: str | None = None, download: bool = True, **_: Any) -> RawDataset:
    """Street View House Numbers (73k train / 26k test, 32x32 RGB)."""
    parts = {}
    for split in ("train", "test"):
        ds = _torchvision("SVHN", "svhn", root, download, f"{split}_32x32.mat", split=split)
        parts[split] = TensorSource(torch.from_numpy(ds.data).contiguous(), ds.labels)
    return RawDataset(train=parts["train"], test=parts["test"], classes=[str(i) for i in range(10)])


def _scan_class_folders(folder: Path) -> tuple[list[str], list[int], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetNotFoundError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    paths, targets = [], []
    for idx, c in enumerate(classes):
        for p in sorted((folder / c).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                paths.append(str(p))
                targets.append(idx)
    return paths, targets, classes


@register_dataset
def imagefolder(
    root: str | None = None,
    in_chans: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    **_: Any,
) -> RawDataset:
    """A folder of class sub-folders. ``root`` has ``train/`` (and optionally ``val/``, ``test/``) or is itself the
    class tree (then val/test are split off stratified). A .tar.gz archive of such a tree also works.

    Files are decoded on demand; bad ones (:mod:`imgcls.data.images`) are found and dropped before the loaders are
    built, and named relative to ``root``."""
    if not root:
        raise DatasetNotFoundError("imagefolder needs data.root=PATH: a folder with train/<class>/... or <class>/...")
    if str(root).endswith((".tar.gz", ".tgz", ".tar")):
        return imagefolder_archive(root, in_chans=in_chans, max_pixels=max_image_pixels)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"data.root {base} is not a folder: expected train/<class>/<images> inside it")
    chans = in_chans or 3
    splits: dict[str, FileSource] = {}
    classes: list[str] | None = None
    if (base / "train").is_dir():
        for split in ("train", "val", "test"):
            if (base / split).is_dir():
                paths, targets, cls = _scan_class_folders(base / split)
                if classes is not None and cls != classes:
                    raise ValueError(f"{base / split} has classes {cls}, but train has {classes}")
                classes = cls
                splits[split] = FileSource(paths, targets, chans, root=base, max_pixels=max_image_pixels)
    else:
        paths, targets, classes = _scan_class_folders(base)
        splits["train"] = FileSource(paths, targets, chans, root=base, max_pixels=max_image_pixels)
    if not len(splits["train"]):
        raise DatasetNotFoundError(f"no images found in {base} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    assert classes is not None
    return RawDataset(
        train=splits["train"],
        val=splits.get("val"),
        test=splits.get("test"),
        classes=classes,
        mean=[0.485, 0.456, 0.406][:chans] if chans == 3 else None,
        std=[0.229, 0.224, 0.225][:chans] if chans == 3 else None,
    )


#: the split names a manifest's split column may hold (``validation`` and ``valid`` also mean val)
MANIFEST_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
#: manifest files read as JSON lines (one object per line); anything else is read as CSV (.tsv: tab-separated)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


def _manifest_records(file: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str], list[BadFile]]:
    """The rows of a manifest as (line number, {column: value}), its column names, and rows that do not parse."""
    bad: list[BadFile] = []
    records: list[tuple[int, dict[str, Any]]] = []
    if file.suffix.lower() in JSON_LINES_SUFFIXES:
        columns: dict[str, None] = {}
        for number, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(BadFile(f"{file.name}:{number}", f"not a JSON object: {e.msg}"))
                continue
            if not isinstance(row, dict):
                bad.append(BadFile(f"{file.name}:{number}", "not a JSON object"))
                continue
            columns.update(dict.fromkeys(row))
            records.append((number, row))
        return records, list(columns), bad
    with file.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if file.suffix.lower() == ".tsv" else ",")
        header = list(reader.fieldnames or [])
        for row in reader:
            number = reader.line_num
            if None in row or any(v is None for v in row.values()):  # more or fewer cells than the header has
                bad.append(
                    BadFile(
                        f"{file.name}:{number}",
                        f"{len(row) + len(row.get(None) or []) - 1} cells, the header has {len(header)}",
                    )
                )
                continue
            records.append((number, row))
    return records, header, bad


def _row_labels(value: Any, delimiter: str) -> list[str]:
    """A label cell -> its labels, in order, without blanks or repeats (a JSON list, or text split at ``delimiter``)."""
    items = value if isinstance(value, list) else ("" if value is None else str(value)).split(delimiter)
    return list(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))


def _manifest_sources(
    file: Path, kept: list[tuple[str, list[str], str]], names: list[str], *, multi: bool, in_chans: int, max_pixels: int
) -> dict[str, FileSource]:
    """One FileSource per split of the manifest's good rows (path, labels, split): paths relative to the file, targets
    class indices or (``multi``) multi-hot rows over ``names``."""
    index = {name: i for i, name in enumerate(names)}
    sources: dict[str, FileSource] = {}
    for split in ("train", "val", "test"):
        rows = [(p, labels) for p, labels, s in kept if s == split]
        if not rows:
            continue
        paths = [str(Path(p) if Path(p).is_absolute() else file.parent / p) for p, _ in rows]
        if multi:
            targets: Any = np.zeros((len(rows), len(names)), dtype=np.float32)
            for r, (_, labels) in enumerate(rows):
                targets[r, [index[v] for v in labels]] = 1.0
        else:
            targets = [index[labels[0]] for _, labels in rows]
        sources[split] = FileSource(paths, targets, in_chans, root=file.parent, max_pixels=max_pixels)
    return sources


@register_dataset
def manifest(
    root: str | None = None,
    in_chans: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str = "split",
    label_delimiter: str = ";",
    classes: Sequence[str] | None = None,
    multilabel: bool | None = None,
    **_: Any,
) -> RawDataset:
    """Images listed in a table: a CSV (``.tsv``: tab-separated) or JSON lines file with an image path column
    (relative to the file, or absolute), a label column (one label, or several joined by ``label_delimiter``; in JSON
    also a list) and an optional split column (train/val/test; without it the data is split stratified).

    Class names are ``classes`` or every label of the file, sorted. Multi-label (multi-hot targets) when
    ``multilabel`` is true, or when it is None and some row has several labels (said in ``info["multilabel"]``).
    Bad rows (a row that does not parse, no path, an empty label, a label not in ``classes``, an unknown split) are
    dropped and listed in :attr:`RawDataset.read`, so the bad-file cap (``data.max_bad_fraction``) and the run
    summary count them with the image files that do not decode (a missing file among them).

    Raises:
        DatasetNotFoundError: no file, or no usable row.
        ConfigError: a named column is missing (the message lists the file's columns), or rows with several labels
            while ``multilabel`` is false.
    """
    if not root:
        raise DatasetNotFoundError("manifest needs data.root=FILE: a .csv or .jsonl file with path and label columns")
    file = Path(root).expanduser()
    if not file.is_file():
        raise DatasetNotFoundError(f"manifest file {file} not found (data.root)")
    records, columns, bad = _manifest_records(file)
    for key, column in (("data.path_column", path_column), ("data.label_column", label_column)):
        if records and column not in columns:
            raise ConfigError(
                f"{file.name} has no column '{column}' ({key}); its columns are: {', '.join(map(str, columns))}"
            )
    has_split = split_column in columns
    known = set(classes) if classes is not None else None
    kept: list[tuple[str, list[str], str]] = []  # (path, labels, split)
    for number, row in records:
        where = f"{file.name}:{number}"
        path = str(row.get(path_column) or "").strip()
        labels = _row_labels(row.get(label_column), label_delimiter)
        split = str(row.get(split_column) or "").strip().lower() if has_split else "train"
        if not path:
            bad.append(BadFile(where, f"no image path in column '{path_column}'"))
        elif not labels:
            bad.append(BadFile(path, f"empty label ({where})"))
        elif known is not None and not known.issuperset(labels):
            unknown = ", ".join(repr(v) for v in labels if v not in known)
            bad.append(BadFile(path, f"unknown label {unknown}, not in data.classes ({where})"))
        elif split not in MANIFEST_SPLITS:
            bad.append(BadFile(path, f"split {split!r} is not train, val or test ({where})"))
        else:
            kept.append((path, labels, MANIFEST_SPLITS[split]))
    if not any(split == "train" for _, _, split in kept):
        raise DatasetNotFoundError(f"{file} has no usable rows for the train split ({len(bad)} bad rows)")
    names = list(classes) if classes is not None else sorted({v for _, labels, _ in kept for v in labels})
    several = sum(len(labels) > 1 for _, labels, _ in kept)
    if multilabel is False and several:
        raise ConfigError(
            f"{several} rows of {file.name} have several labels (data.label_delimiter={label_delimiter!r}), but "
            "data.multilabel=false; set data.multilabel=true (or null, to infer it)"
        )
    multi = bool(several) if multilabel is None else multilabel
    sources = _manifest_sources(file, kept, names, multi=multi, in_chans=in_chans or 3, max_pixels=max_image_pixels)
    info: dict[str, Any] = {}
    if multilabel is None and multi:
        info["multilabel"] = (
            f"multi-label, inferred from {file.name}: {several} of {len(kept)} rows have several labels "
            "(set data.multilabel to decide)"
        )
    bad.sort(key=lambda b: b.file)
    return RawDataset(
        train=sources["train"],
        val=sources.get("val"),
        test=sources.get("test"),
        classes=names,
        info=info,
        read=ReadReport(where=str(file), read=len(bad), bad=bad),
    )


#: bump when what the archive cache holds, or how images are decoded into it, changes
_ARCHIVE_CACHE_VERSION = 2


def _archive_member_name(member_name: str) -> str | None:
    """``[prefix/]{train,val,test}/<class>/.../<image>`` -> the name from the split on (``train/cat/0.png``, as the
    same file in a folder is named), or None for members that are not a dataset image."""
    if Path(member_name).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    parts = Path(member_name).parts
    split_idx = next((i for i, p in enumerate(parts) if p in ("train", "val", "test")), None)
    if split_idx is None or len(parts) < split_idx + 3:
        return None
    return "/".join(parts[split_idx:])


def _read_archive(
    path: Path, *, in_chans: int, max_pixels: int
) -> tuple[dict[str, list[tuple[str, np.ndarray]]], ReadReport]:
    """Decode every image of the archive (in stream order) by the one policy: {split: [(class, uint8 [H, W, C])]}
    and what was read, with the bad files."""
    found: dict[str, list[tuple[str, np.ndarray]]] = {}
    report = ReadReport(where=str(path))
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = _archive_member_name(member.name) if member.isfile() else None
            if name is None:
                continue
            report.read += 1
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            try:
                arr = read_image(io.BytesIO(data), in_chans=in_chans, max_pixels=max_pixels, name=name)
            except BadImageError as e:
                report.bad.append(BadFile(name, e.reason))
                continue
            split, cls = name.split("/")[:2]
            found.setdefault(split, []).append((cls, arr))
    report.bad.sort(key=lambda b: b.file)
    return found, report


def _from_archive_cache(cache: Path, where: str) -> RawDataset:
    z = np.load(cache, allow_pickle=False)
    classes = [str(c) for c in z["classes"]]
    parts = {s: TensorSource(torch.from_numpy(z[f"{s}_x"]), torch.from_numpy(z[f"{s}_y"])) for s in z["splits"]}
    bad = [BadFile(str(f), str(r)) for f, r in zip(z["bad_files"], z["bad_reasons"], strict=True)]
    read = ReadReport(where=where, read=int(z["files_read"]), bad=bad)
    return RawDataset(train=parts["train"], val=parts.get("val"), test=parts.get("test"), classes=classes, read=read)


def imagefolder_archive(
    path: str | Path,
    image_size: int | None = None,
    *,
    in_chans: int | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> RawDataset:
    """Read a .tar.gz of ``[prefix/]{train,val,test}/<class>/<image>`` images of one size into memory.

    The archive is read in stream order (random access into a .tar.gz is quadratic) and the decoded uint8 arrays
    are cached as .npz under :func:`cache_dir` so later runs start in a fraction of a second. Images are decoded by
    the one policy of :mod:`imgcls.data.images`; bad ones are skipped and listed in :attr:`RawDataset.read` (named
    from the split on, like the same files in a folder), so that building the loaders applies
    ``data.max_bad_fraction`` to them as to a folder's.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"archive {path} not found")
    chans = in_chans or 3
    stat = path.stat()
    key = f"{path.name}-{stat.st_size}-{int(stat.st_mtime)}-c{chans}-p{max_pixels}-v{_ARCHIVE_CACHE_VERSION}"
    cache = cache_dir() / "archives" / f"{key}.npz"
    if cache.is_file():
        return _from_archive_cache(cache, str(path))
    found, report = _read_archive(path, in_chans=chans, max_pixels=max_pixels)
    if "train" not in found:
        raise DatasetNotFoundError(f"{path} has no decodable train/<class>/<image> entries")
    classes = sorted({c for items in found.values() for c, _ in items})
    shapes = {a.shape for items in found.values() for _, a in items}
    if len(shapes) != 1:
        raise ValueError(
            f"{path}: images differ in size {sorted(shapes)[:3]}...; extract it and use data.name=imagefolder"
        )
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes), "splits": np.array(sorted(found))}
    for split, items in found.items():
        arrays[f"{split}_x"] = np.stack([a for _, a in items]).transpose(0, 3, 1, 2).copy()
        arrays[f"{split}_y"] = np.array([classes.index(c) for c, _ in items], dtype=np.int64)
    arrays["bad_files"] = np.array([b.file for b in report.bad], dtype=str)
    arrays["bad_reasons"] = np.array([b.reason for b in report.bad], dtype=str)
    arrays["files_read"] = np.array(report.read)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)
    if report.bad:
        log.info("%s: %d of %d image files cannot be decoded and are skipped", path, len(report.bad), report.read)
    parts = {s: TensorSource(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"])) for s in found}
    return RawDataset(train=parts["train"], val=parts.get("val"), test=parts.get("test"), classes=classes, read=report)


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SplitView:
    """A subset of a source by index (the split), as a plain sequence of (uint8 image, label)."""

    source: Source
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self.source.get(int(self.indices[i]))

    @property
    def targets(self) -> torch.Tensor:
        return self.source.targets[torch.from_numpy(self.indices)]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, TensorSource)

    def images(self) -> torch.Tensor:
        """All images of the split as one uint8 tensor (in-memory sources only)."""
        if not isinstance(self.source, TensorSource):
            raise TypeError("images() needs an in-memory dataset; file datasets are decoded per sample")
        return self.source.images[torch.from_numpy(self.indices)]


@dataclass
class Splits:
    train: SplitView
    val: SplitView | None
    test: SplitView | None
    classes: list[str]
    in_chans: int
    mean: list[float]
    std: list[float]
    info: dict[str, Any] = field(default_factory=dict)
    #: the dataset's :attr:`RawDataset.read`: files skipped while loading, counted against ``data.max_bad_fraction``
    read: ReadReport | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """Whether labels are multi-hot vectors [K] (several labels per image) rather than class indices."""
        return self.train.targets.ndim == 2


def _iterstrat() -> Any:
    """The ``iterative-stratification`` package (``pip install "imgcls[multilabel]"``), needed only to split
    multi-label data."""
    try:
        # deferred: an optional dependency, imported only when multi-label data is split here
        from iterstrat import ml_stratifiers
    except ImportError as e:
        raise UserFacingError(
            'splitting multi-label data needs iterative stratification: pip install "imgcls[multilabel]" (the '
            "iterative-stratification package), or give the manifest a split column"
        ) from e
    return ml_stratifiers


def _stratified_split(indices: np.ndarray, targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split ``indices`` into (kept, held_out) with ``fraction`` held out, stratified by ``targets`` (class indices
    [N]; or multi-hot [N, K]: iterative stratification, Sechidis et al. 2011, which balances every label's count)."""
    if fraction <= 0:
        return indices, indices[:0]
    if targets.ndim == 2:
        n_held = int(np.ceil(fraction * len(indices)))
        if not 0 < n_held < len(indices):
            raise ValueError(f"test_size={fraction} leaves an empty split of n_samples={len(indices)}")
        splitter = _iterstrat().MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        kept, held = next(splitter.split(indices[:, None], targets[indices]))
        return np.sort(indices[kept]), np.sort(indices[held])

    counts = np.bincount(targets[indices])
    stratify = targets[indices] if counts[counts > 0].min() >= 2 else None
    kept, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(kept), np.sort(held)


def kfold_split(
    indices: np.ndarray, targets: np.ndarray, *, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, ...]:
    """(train, val) indices: fold ``fold`` of a stratified ``folds``-fold partition of ``indices`` held out.

    The partition depends only on (indices, targets, folds, seed), so the folds of one seed are disjoint and together
    cover ``indices``. Single-label: scikit-learn's StratifiedKFold (plain KFold when a class has fewer samples than
    folds); multi-label: MultilabelStratifiedKFold (iterative stratification) from ``iterative-stratification``.
    """
    if len(indices) < folds:
        raise ConfigError(f"data.folds={folds} needs at least {folds} training samples, the data has {len(indices)}")
    y = targets[indices]
    if y.ndim == 2:
        splitter: Any = _iterstrat().MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    elif np.bincount(y)[np.bincount(y) > 0].min() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(indices[:, None], y))[fold]
    return np.sort(indices[train]), np.sort(indices[val])


def long_tail_indices(targets: np.ndarray, indices: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Subsample ``indices`` so class k keeps ``ratio ** (k / (K-1))`` of its samples (class 0 keeps all)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(targets[indices])
    keep = []
    for rank, c in enumerate(classes):
        members = indices[targets[indices] == c]
        n = max(1, int(round(len(members) * ratio ** (rank / max(1, len(classes) - 1)))))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def channel_stats(view: SplitView, max_samples: int = 2000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units, from (a sample of) the split."""
    n = len(view)
    idx = np.random.default_rng(seed).choice(n, size=min(n, max_samples), replace=False)
    if view.in_memory:
        x = view.source.images[torch.from_numpy(view.indices[idx])].float() / 255.0
        dims = (0, 2, 3)
        return x.mean(dims).tolist(), x.std(dims).clamp_min(1e-3).tolist()
    total = torch.zeros(view.source.in_chans, dtype=torch.float64)
    sq = torch.zeros_like(total)
    count = 0
    for i in idx[:200]:  # file datasets: a few hundred images pin the statistics well enough
        try:
            img = view.get(int(i))[0].double() / 255.0
        except BadImageError:
            continue  # reported (and counted against data.max_bad_fraction) when the loaders are built
        total += img.sum((1, 2))
        sq += (img**2).sum((1, 2))
        count += img.shape[1] * img.shape[2]
    mean = total / count
    std = (sq / count - mean**2).clamp_min(1e-6).sqrt()
    return mean.tolist(), std.tolist()


def make_splits(
    raw: RawDataset,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    subset: int | None = None,
    imbalance: float | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    folds: int | None = None,
    fold: int = 0,
) -> Splits:
    """Deterministic splits from ``seed``: test (if the dataset has none), then val (if none), stratified.

    ``folds``/``fold``: k-fold cross-validation: the val split is fold ``fold`` of a stratified ``folds``-fold
    partition of what the test split leaves (:func:`kfold_split`) instead of a ``val_fraction`` share. ``subset`` caps
    the train split (stratified), ``imbalance`` makes it long-tailed. Normalisation statistics are ``mean``/``std`` if
    given, else the dataset's known values, else computed on the train split.

    Raises:
        ConfigError: k-fold on a dataset that brings its own val split; ``imbalance`` on multi-label data.
    """
    targets = raw.train.targets.numpy()
    all_idx = np.arange(len(raw.train))
    test_view = SplitView(raw.test, np.arange(len(raw.test))) if raw.test is not None else None
    if test_view is None and test_fraction > 0:
        all_idx, test_idx = _stratified_split(all_idx, targets, test_fraction, seed)
        test_view = SplitView(raw.train, test_idx)
    val_view = SplitView(raw.val, np.arange(len(raw.val))) if raw.val is not None else None
    if folds is not None:
        if val_view is not None:
            raise ConfigError(
                f"data.folds={folds}: the dataset defines its own val split, so there is no pool to fold; drop "
                "data.folds, or the val split (a manifest's split column)"
            )
        all_idx, val_idx = kfold_split(all_idx, targets, folds=folds, fold=fold, seed=seed + 1)
        val_view = SplitView(raw.train, val_idx)
    elif val_view is None and val_fraction > 0:
        all_idx, val_idx = _stratified_split(all_idx, targets, val_fraction, seed + 1)
        val_view = SplitView(raw.train, val_idx)
    if imbalance is not None and targets.ndim == 2:
        raise ConfigError(
            "data.imbalance makes a single-label split long-tailed; it does not apply to multi-label data"
        )
    if imbalance is not None:
        all_idx = long_tail_indices(targets, all_idx, imbalance, seed)
    if subset is not None and subset < len(all_idx):
        all_idx, _ = _stratified_split(all_idx, targets, 1.0 - subset / len(all_idx), seed + 2)
    train_view = SplitView(raw.train, all_idx)
    if mean is None or std is None:
        if raw.mean is not None and raw.std is not None:
            mean, std = raw.mean, raw.std
        else:
            mean, std = channel_stats(train_view, seed=seed)
    return Splits(
        train=train_view,
        val=val_view,
        test=test_view,
        classes=raw.classes,
        in_chans=raw.train.in_chans,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        info=dict(raw.info),
        read=raw.read,
    )


def load_dataset(name: str, **kwargs: Any) -> RawDataset:
    """Build dataset ``name`` from the registry (None kwargs dropped)."""
    return DATASETS.create(name, **kwargs)
