"""Dataset registry: each entry point returns the raw splits of one dataset as image *sources*.

A source is either a :class:`TensorSource` (the whole dataset as one uint8 tensor [N, C, H, W] in memory: digits,
CIFAR, MNIST, SVHN) or a :class:`FileSource` (paths decoded on demand: ImageFolder). Both give ``get(i) -> (uint8
[C, H, W], label)`` and ``targets``. :func:`make_splits` then derives deterministic, stratified train/val/test index
splits from the seed, so every run of the same config sees the same images in the same split.
"""

from __future__ import annotations

import io
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
from sklearn.model_selection import train_test_split

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


class TensorSource:
    """A dataset held in memory as uint8 images [N, C, H, W] and int64 labels [N]."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | Sequence[int]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"TensorSource needs uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])

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
        targets: Sequence[int],
        in_chans: int = 3,
        *,
        root: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.paths = list(paths)
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)
        self._in_chans = in_chans
        self.root = str(root) if root is not None else None
        self.max_pixels = max_pixels
        self.bad_files: list[BadFile] = []
        self._typical_size: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        return decode_image_file(self.paths[i], self._in_chans, self.max_pixels), int(self.targets[i])

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

    def get(self, i: int) -> tuple[torch.Tensor, int]:
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


def _stratified_split(indices: np.ndarray, targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split ``indices`` into (kept, held_out) with ``fraction`` held out, stratified by ``targets``."""
    if fraction <= 0:
        return indices, indices[:0]

    counts = np.bincount(targets[indices])
    stratify = targets[indices] if counts[counts > 0].min() >= 2 else None
    kept, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(kept), np.sort(held)


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
) -> Splits:
    """Deterministic splits from ``seed``: test (if the dataset has none), then val (if none), stratified.

    ``subset`` caps the train split (stratified), ``imbalance`` makes it long-tailed. Normalisation statistics are
    ``mean``/``std`` if given, else the dataset's known values, else computed on the train split.
    """
    targets = raw.train.targets.numpy()
    all_idx = np.arange(len(raw.train))
    test_view = SplitView(raw.test, np.arange(len(raw.test))) if raw.test is not None else None
    if test_view is None and test_fraction > 0:
        all_idx, test_idx = _stratified_split(all_idx, targets, test_fraction, seed)
        test_view = SplitView(raw.train, test_idx)
    val_view = SplitView(raw.val, np.arange(len(raw.val))) if raw.val is not None else None
    if val_view is None and val_fraction > 0:
        all_idx, val_idx = _stratified_split(all_idx, targets, val_fraction, seed + 1)
        val_view = SplitView(raw.train, val_idx)
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
