"""``imgcls augment-preview``: a PNG grid of train samples as configured: original, augmented and mixed.

Row 1 shows the samples after resizing only, row 2 after the configured per-sample augmentations (the torch path's
transform, or the device path's batch ops where ``data.loader`` is, or ``auto`` picks, the device loader), row 3 the
augmented batch after CutMix/MixUp, each image captioned with the mixing kind, lambda and its two-class soft target.
It draws its parameters with the same code as training, so what it shows is what the model gets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.transforms import InterpolationMode, v2

from imgcls.config import Config
from imgcls.data.batch import build_mixer
from imgcls.data.build import build_splits, choose_loader, resolve_preprocess
from imgcls.data.datasets import SplitView
from imgcls.data.device_loader import BatchAugment, DeviceLoader, prepare_images
from imgcls.data.images import BadImageError
from imgcls.data.transforms import FixChannels, build_train_transform
from imgcls.plotting import save_figure

log = logging.getLogger(__name__)


def _pick(view: SplitView, n: int, seed: int) -> tuple[np.ndarray, list[torch.Tensor], list[int]]:
    """``n`` decodable samples of ``view`` in a seeded random order: (positions, uint8 images, labels)."""
    order = np.random.default_rng(seed).permutation(len(view))
    pos, images, labels = [], [], []
    for i in order:
        try:
            img, label = view.get(int(i))
        except BadImageError as e:  # the same policy as training: a bad file is skipped, and said so
            log.warning("augment-preview: skipping %s", e)
            continue
        pos.append(int(i))
        images.append(img)
        labels.append(label)
        if len(pos) == n:
            break
    return np.array(pos, dtype=np.int64), images, labels


def _augmented(
    cfg: Config,
    train: SplitView,
    pre: dict[str, Any],
    pos: np.ndarray,
    raw_images: list[torch.Tensor],
    labels: list[int],
    loader: str,
) -> tuple[torch.Tensor, str]:
    """The samples through the path training uses (``loader``: "torch" or "device"), as normalised float images; and
    the path's name."""
    size, in_chans = pre["image_size"], pre["in_chans"]
    if loader == "device":
        subset = SplitView(train.source, train.indices[pos])
        prepared = prepare_images(subset, image_size=size, resize=pre["resize"], in_chans=in_chans)
        augment = BatchAugment.from_config(cfg.augmentation.train, size)
        loader = DeviceLoader(
            prepared,
            torch.tensor(labels),
            batch_size=len(labels),
            mean=pre["mean"],
            std=pre["std"],
            in_chans=in_chans,
            augment=augment,
            seed=cfg.run.seed,
        )
        return next(iter(loader))[0], "device loader"
    train_tf = build_train_transform(cfg.augmentation.train, **pre)
    return torch.stack([train_tf(img) for img in raw_images]), "torch loader"


def _mixed(
    mixer: Any, augmented: torch.Tensor, labels: list[int], classes: list[str], size: int
) -> tuple[torch.Tensor, list[str]]:
    """One independent CutMix/MixUp draw per column (to show the spread of lambda and kinds), with captions."""
    label_t = torch.tensor(labels)
    images, captions = [], []
    for i in range(len(labels)):
        params = mixer.get_params(size, size)
        mixed, targets = mixer.apply(augmented, label_t, params)
        images.append(mixed[i])
        # the mixers pair image i with image i - 1 (roll by one); read the two weights back from the targets
        own, partner = labels[i], labels[i - 1]
        w_own = float(targets[i, own]) if own != partner else params.lam
        captions.append(
            f"{params.kind} λ={params.lam:.2f}\n{classes[own]} {w_own:.2f} + {classes[partner]} {1.0 - w_own:.2f}"
        )
    return torch.stack(images), captions


def _grid(rows: list[tuple[str, torch.Tensor, list[str]]], n: int, *, title: str) -> Figure:
    """Rows of images (float [N, C, H, W] in [0, 1]) with a caption each and the row's name on the left."""
    fig = Figure(figsize=(1.7 * n, 2.0 * len(rows) + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=8)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (title, images, captions) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = images[c].permute(1, 2, 0).numpy()
            if img.shape[2] == 1:
                ax.imshow(img[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(captions[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    return fig


def augment_preview(cfg: Config, out_path: str | Path, n: int = 8) -> Path:
    """Write a PNG grid of ``n`` train samples: original, augmented and (if configured) mixed.

    Args:
        cfg: the config whose ``data`` and ``augmentation`` sections are previewed.
        out_path: the PNG to write (parent folders are created).
        n: number of samples (columns).

    Returns:
        The written path.

    Raises:
        ConfigError: e.g. ``data.loader=device`` with an augmentation the device path cannot apply.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    torch.manual_seed(cfg.run.seed)
    splits = build_splits(cfg)
    info = resolve_preprocess(cfg, splits)  # no model: the data's own size and statistics
    pre = info.to_dict()
    size, in_chans = pre["image_size"], pre["in_chans"]
    pos, raw_images, labels = _pick(splits.train, n, cfg.run.seed)
    n = len(pos)
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)

    # original: channel fix + resize only, in [0, 1]
    base_ops: list[Any] = [FixChannels(in_chans)]
    if pre["resize"]:
        base_ops.append(v2.Resize((size, size), interpolation=InterpolationMode.BILINEAR, antialias=True))
    base = v2.Compose(base_ops)
    originals = torch.stack([base(img) for img in raw_images]).float() / 255.0

    loader = choose_loader(cfg, splits, info)[0]
    augmented, path_name = _augmented(cfg, splits.train, pre, pos, raw_images, labels, loader)

    rows: list[tuple[str, torch.Tensor, list[str]]] = [
        ("original", originals, [splits.classes[y] for y in labels]),
        (f"augmented ({path_name})", (augmented * std + mean).clamp(0, 1), [splits.classes[y] for y in labels]),
    ]
    mixer = build_mixer(cfg.augmentation.mix, splits.num_classes)
    if mixer is not None:
        mixed, captions = _mixed(mixer, augmented, labels, splits.classes, size)
        rows.append(("mixed", (mixed * std + mean).clamp(0, 1), captions))
    mix_text = repr(mixer) if mixer is not None else "mixing off (augmentation.mix: cutmix_alpha = mixup_alpha = 0)"
    fig = _grid(rows, n, title=f"{cfg.data.name} train samples, {size}x{size}, {path_name}\n{mix_text}")
    return save_figure(fig, out_path)
