"""Penultimate-layer features of a split, projected to 2-D with t-SNE (scikit-learn) or UMAP (``umap-learn``).

Well-separated, compact clusters per class mean the head has an easy job; classes that overlap here are the ones the
confusion matrix mixes up.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler
from torch import nn

from imgcls.data.build import build_eval_loader
from imgcls.data.datasets import SplitView
from imgcls.engine.build import load_split
from imgcls.plotting import save_figure

METHODS = ("tsne", "umap", "pca")


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled penultimate features (``forward_head(forward_features(x), pre_logits=True)``) of every batch.

    Returns:
        (features float32 [N, D], targets int64 [N], predicted class int64 [N]).
    """
    model.eval()
    feats, targets, preds = [], [], []
    for images, y in loader:
        unpooled = model.forward_features(images.to(device))
        f = model.forward_head(unpooled, pre_logits=True)
        logits = model.forward_head(unpooled)
        feats.append(f.float().flatten(1).cpu())
        preds.append(logits.argmax(1).cpu())
        targets.append(torch.as_tensor(y))
    return torch.cat(feats).numpy(), torch.cat(targets).numpy().astype(np.int64), torch.cat(preds).numpy()


def _require_umap() -> None:
    try:
        import umap  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "--method umap needs the umap-learn package: pip install 'imgcls[umap]' (or pip install umap-learn); "
            "--method tsne works without it"
        ) from e


def project(features: np.ndarray, method: str = "tsne", *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """[N, D] -> [N, 2] with t-SNE, UMAP or PCA (standardised features first).

    Raises:
        ImportError: for ``umap`` without the ``umap-learn`` package, saying how to install it.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    if method == "umap":
        _require_umap()

    x = StandardScaler().fit_transform(np.asarray(features, dtype=np.float32))
    n = len(x)
    if n < 3:
        raise ValueError(f"need at least 3 samples to project, got {n}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float32)
    if method == "umap":
        import umap  # optional: the [umap] extra

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1))
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)

    if x.shape[1] > 50:  # the usual t-SNE recipe: PCA to 50 dims first (faster, less noise)
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32)


def plot_embedding(xy: np.ndarray, targets: np.ndarray, classes: Sequence[str], *, title: str = ""):  # noqa: ANN201
    """Scatter of the 2-D points coloured by class (a matplotlib Figure)."""

    k = len(classes)
    size = float(np.clip(4000 / max(len(xy), 1), 4, 20))  # bigger dots for fewer points
    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    ax = fig.subplots()
    for c in range(k):
        sel = targets == c
        if sel.any():
            color = cmap(c if k <= 20 else c / max(k - 1, 1))
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, alpha=0.75, color=color, label=str(classes[c]), linewidths=0)
    if k <= 20:
        ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig


def subsample_indices(n: int, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Sorted random indices of at most ``max_samples`` of ``n`` (all when it is None or larger)."""
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def write_embeddings(
    checkpoint: str | Path,
    *,
    split: str = "test",
    method: str = "tsne",
    out_dir: str | Path | None = None,
    max_samples: int | None = 2000,
    overrides: Sequence[str] = (),
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[Path, Path]:
    """Features of ``split`` from ``checkpoint`` -> 2-D projection -> ``embeddings_<method>.png`` and ``.csv``.

    The CSV has one row per sample: ``index`` (in the split), ``label``, ``class``, ``predicted``, ``x``, ``y``.

    Returns:
        (png path, csv path); default folder ``<run>/explain``.
    """

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    if method == "umap":
        _require_umap()  # fail before loading data and model
    model, ckpt, view, transform = load_split(checkpoint, split=split, overrides=overrides, device=device)
    keep = subsample_indices(len(view), max_samples, seed)

    sub = SplitView(view.source, view.indices[keep])
    loader = build_eval_loader(sub, transform, batch_size=batch_size)
    feats, targets, preds = extract_features(model, loader, device=device)
    xy = project(feats, method, seed=seed)
    classes = list(ckpt["classes"])
    out = Path(out_dir) if out_dir else Path(ckpt["path"]).parent.parent / "explain"
    out.mkdir(parents=True, exist_ok=True)
    png, csv_path = out / f"embeddings_{method}.png", out / f"embeddings_{method}.csv"
    fig = plot_embedding(xy, targets, classes, title=f"{method} of penultimate features ({split}, {len(xy)} images)")
    save_figure(fig, png, dpi=120)
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "class", "predicted", "x", "y"])
        for i, t, p, (x, y) in zip(keep.tolist(), targets.tolist(), preds.tolist(), xy.tolist(), strict=True):
            w.writerow([i, t, classes[t], classes[p], f"{x:.5g}", f"{y:.5g}"])
    return png, csv_path
