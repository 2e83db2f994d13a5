"""``imgcls augment-preview``: a PNG grid of train samples as configured: original, augmented and mixed.

Row 1 shows the samples after resizing only, row 2 after the configured per-sample augmentations (the torch path's
transform, or the device path's batch ops with ``data.loader=device``), row 3 the augmented batch after CutMix/MixUp,
each image captioned with the mixing kind, lambda and its two-class soft target. It draws its parameters with the same
code as training, so what it shows is what the model gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.transforms import InterpolationMode, v2

from imgcls.config import Config
from imgcls.data.batch import build_mixer
from imgcls.data.build import build_splits, resolve_preprocess
from imgcls.data.datasets import BadImageError, SplitView
from imgcls.data.device_loader import BatchAugment, DeviceLoader, prepare_images
from imgcls.data.transforms import FixChannels, build_train_transform
from imgcls.plotting import save_figure


def _pick(view: SplitView, n: int, seed: int) -> tuple[np.ndarray, list[torch.Tensor], list[int]]:
    """``n`` decodable samples of ``view`` in a seeded random order: (positions, uint8 images, labels)."""
    order = np.random.default_rng(seed).permutation(len(view))
    pos, images, labels = [], [], []
    for i in order:
        try:
            img, label = view.get(int(i))
        except BadImageError:
            continue
        pos.append(int(i))
        images.append(img)
        labels.append(label)
        if len(pos) == n:
            break
    return np.array(pos, dtype=np.int64), images, labels


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
    pre = resolve_preprocess(cfg, splits).to_dict()  # no model: the data's own size and statistics
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

    # augmented: through the path training uses, as normalised float images
    if cfg.data.loader == "device":
        subset = SplitView(splits.train.source, splits.train.indices[pos])
        prepared = prepare_images(subset, image_size=size, resize=pre["resize"], in_chans=in_chans)
        augment = BatchAugment.from_config(cfg.augmentation.train, size)
        loader = DeviceLoader(prepared, torch.tensor(labels), batch_size=n, mean=pre["mean"], std=pre["std"],
                              in_chans=in_chans, augment=augment, seed=cfg.run.seed)  # fmt: skip
        augmented, _ = next(iter(loader))
        path_name = "device loader"
    else:
        train_tf = build_train_transform(cfg.augmentation.train, **pre)
        augmented = torch.stack([train_tf(img) for img in raw_images])
        path_name = "torch loader"
    label_t = torch.tensor(labels)

    rows: list[tuple[str, torch.Tensor, list[str]]] = [
        ("original", originals, [splits.classes[y] for y in labels]),
        (f"augmented ({path_name})", (augmented * std + mean).clamp(0, 1), [splits.classes[y] for y in labels]),
    ]
    mixer = build_mixer(cfg.augmentation.mix, splits.num_classes)
    if mixer is not None:
        mixed_images, captions = [], []
        for i in range(n):  # an independent draw per column, to show the spread of lambda and of the kinds
            params = mixer.get_params(size, size)
            mixed, targets = mixer.apply(augmented, label_t, params)
            mixed_images.append(mixed[i])
            # the mixers pair image i with image i - 1 (roll by one); read the two weights back from the targets
            own, partner = labels[i], labels[i - 1]
            w_own = float(targets[i, own]) if own != partner else params.lam
            captions.append(f"{params.kind} λ={params.lam:.2f}\n{splits.classes[own]} {w_own:.2f} + "
                            f"{splits.classes[partner]} {1.0 - w_own:.2f}")  # fmt: skip
        rows.append(("mixed", (torch.stack(mixed_images) * std + mean).clamp(0, 1), captions))

    fig = Figure(figsize=(1.7 * n, 2.0 * len(rows) + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    mix_text = repr(mixer) if mixer is not None else "mixing off (augmentation.mix: cutmix_alpha = mixup_alpha = 0)"
    fig.suptitle(f"{cfg.data.name} train samples, {size}x{size}, {path_name}\n{mix_text}", fontsize=8)
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
    return save_figure(fig, out_path)
