# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Phase 2: CutMix, MixUp and RandAugment
#
# What the mixed and augmented images look like (the exact ops training applies), how `alpha` shapes the mixing,
# and small sweeps of CutMix's `alpha` and RandAugment's `num_ops` and `magnitude` on digits. Regularisers like
# these pay off on large, long trainings; in a few epochs on small digits they often cost accuracy, which is a
# result worth seeing too.

# %%
# %matplotlib inline
from pathlib import Path

import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure

from imgcls.config import TrainAugConfig, build_config
from imgcls.data.batch import CutMix, MixUp
from imgcls.data.build import build_splits
from imgcls.data.transforms import build_train_transform
from imgcls.evaluate.post_run import train_and_report

RUNS = Path("runs") / "phase2"
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]
# a tiny CNN, 600 images, 5 epochs; a high learning rate suits this short budget (phase 3's sweep)
SMALL = ["model.name=simple_cnn_tiny", "data.subset=600", "training.epochs=5", "training.optimizer.lr=0.3"]


def train(*overrides: str) -> float:
    """Test accuracy of a quickstart run with these overrides."""
    return train_and_report(build_config("quickstart", [*QUIET, *SMALL, *overrides])).test.acc


train_view = build_splits(build_config("quickstart")).train
digits = torch.stack([train_view.get(i)[0] for i in range(8)])  # uint8 [8, 1, 8, 8]
labels = torch.tensor([train_view.get(i)[1] for i in range(8)])
big = torch.nn.functional.interpolate(digits.float() / 255, size=32, mode="nearest")  # [8, 1, 32, 32] in [0, 1]


def show_row(fig_rows: list[tuple[str, torch.Tensor, list[str]]]) -> Figure:
    fig = Figure(figsize=(10, 1.5 * len(fig_rows)), layout="constrained")
    axes = fig.subplots(len(fig_rows), big.shape[0], squeeze=False)
    for row, (name, images, captions) in zip(axes, fig_rows, strict=True):
        for ax, image, caption in zip(row, images, captions, strict=True):
            ax.imshow(image[0].clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(caption, fontsize=7)
            ax.axis("off")
        row[0].text(-0.5, 0.5, name, transform=row[0].transAxes, ha="right", va="center", fontsize=9)
    return fig


# %% [markdown]
# ## Mixed images
# CutMix pastes a box of the next image in the batch, MixUp blends the whole images; each target is the same mix
# of the two labels (`lam` is the share of the image's own label).

# %%
torch.manual_seed(0)
rows = [("original", big, [str(int(y)) for y in labels])]
for mixer in (CutMix(1.0, num_classes=10), MixUp(1.0, num_classes=10)):
    params = mixer.get_params(32, 32)
    mixed, targets = mixer.apply(big, labels, params)
    partner = labels.roll(1)
    rows.append(
        (params.kind, mixed, [f"{int(a)}:{params.lam:.2f} {int(b)}" for a, b in zip(labels, partner, strict=True)])
    )
display(show_row(rows))

# %% [markdown]
# ## How `alpha` sets the mixing strength
# `lam ~ Beta(alpha, alpha)`: a small alpha keeps most images nearly whole (lam near 0 or 1), alpha 1 is uniform,
# a large alpha mixes about half and half.

# %%
rng = np.random.default_rng(0)
fig = Figure(figsize=(9, 2.4), layout="constrained")
for ax, alpha in zip(fig.subplots(1, 3), (0.2, 1.0, 4.0), strict=True):
    ax.hist(rng.beta(alpha, alpha, 20_000), bins=40, color="#4c78a8")
    ax.set_title(f"alpha = {alpha}")
    ax.set_xlabel("lam")
display(fig)

# %% [markdown]
# ## RandAugment: `num_ops` and `magnitude`
# The same digit through the training transform at three settings (each column a fresh draw).

# %%
torch.manual_seed(0)
rows = []
for ops, mag in ((1, 5), (2, 9), (3, 20)):
    tf = build_train_transform(
        TrainAugConfig(randaugment=True, randaugment_num_ops=ops, randaugment_magnitude=mag),
        image_size=32,
        resize=True,
        in_chans=1,
        mean=[0.0],
        std=[1.0],
    )
    rows.append((f"ops {ops}, mag {mag}", torch.stack([tf(digits[3]) for _ in range(8)]), [""] * 8))
display(show_row(rows))

# %% [markdown]
# ## Sweeps: CutMix alpha, RandAugment num_ops and magnitude
# One seed each, 5 epochs on 600 images: read the direction, not the third decimal.

# %%
results = {"baseline": train()}
for alpha in (0.4, 1.0):
    results[f"cutmix a={alpha}"] = train(f"augmentation.mix.cutmix_alpha={alpha}")
for ops, mag in ((1, 5), (2, 15)):
    results[f"randaug {ops}x{mag}"] = train(
        "data.loader=torch",  # RandAugment is a per-image op: the DataLoader path
        "augmentation.train.randaugment=true",
        f"augmentation.train.randaugment_num_ops={ops}",
        f"augmentation.train.randaugment_magnitude={mag}",
    )
for name, acc in results.items():
    print(f"{name:>16}: test accuracy {acc:.3f}")
fig = Figure(figsize=(7, 3), layout="constrained")
ax = fig.subplots()
ax.barh(list(results), list(results.values()), color="#f58518")
ax.set_xlim(min(results.values()) - 0.05, 1.0)
ax.set_xlabel("test accuracy")
display(fig)

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls augment-preview cifar10_modern --out preview.png`: the same pictures on CIFAR-10 images.
# - `imgcls study cutmix-mixup --dataset cifar10` and `imgcls study randaugment --dataset cifar10`: the sweeps over
#   seeds; on 32x32 photos and longer runs, mixing and RandAugment usually help where they hurt on tiny digits.
# - `imgcls train cifar10_modern` combines them with label smoothing and EMA.
