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
# # Phase 1: first runs, checkpoints, freezing, augmentation
#
# A first training run on the bundled `digits` data (8x8 handwritten digits, offline), what its run folder and
# checkpoint hold, and two first experiments: freezing 0, 2 or 4 layer groups of a small ResNet, and augmentation on
# versus off. Every run here is a few seconds on a CPU: few epochs, small models. The numbers are noisy at this size;
# the studies (`imgcls study freeze-layers`, `imgcls study augmentation`) repeat such runs over seeds.

# %%
# %matplotlib inline
from pathlib import Path

from IPython.display import display
from matplotlib.figure import Figure

from imgcls.config import build_config
from imgcls.data.build import build_splits
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.evaluate.infer import Predictor
from imgcls.evaluate.post_run import train_and_report
from imgcls.evaluate.training_curves import plot_training_curves

RUNS = Path("runs") / "phase1"
# quiet, untracked, no HTML report: the notebook shows what it needs itself
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]


def train(*overrides: str):
    """Train the quickstart preset with these overrides; returns the run's result (run_dir, test, summary)."""
    return train_and_report(build_config("quickstart", [*QUIET, *overrides]))


# %% [markdown]
# ## A first run
# The `quickstart` preset: a small CNN on digits upsampled to 16x16, SGD with a cosine schedule. Four epochs here.

# %%
first = train("training.epochs=4")
print(f"test accuracy {first.test.acc:.3f} after {first.epochs_run} epochs, {first.seconds:.1f} s")
print("run folder:", first.run_dir.name, sorted(p.name for p in first.run_dir.iterdir()))
display(plot_training_curves(first.run_dir / "metrics.csv"))

# %% [markdown]
# ## What a checkpoint holds
# `checkpoints/best.pt` is a plain dict: weights, optimizer and RNG state (to resume), the resolved config, class
# names, the preprocessing the model expects, and where it came from (versions, data fingerprint). It is loaded
# with `weights_only=True` and checked against its content hash.

# %%
ckpt = load_checkpoint(first.run_dir)
print(sorted(ckpt))
print("preprocess:", ckpt["preprocess"])
print("data fingerprint:", ckpt["data_fingerprint"]["sha256"][:16], "| versions:", ckpt["versions"])

# %% [markdown]
# A `Predictor` turns any image into class probabilities with exactly that preprocessing:

# %%
predictor = Predictor.from_checkpoint(first.run_dir)
test = build_splits(build_config("quickstart")).test
fig = Figure(figsize=(8, 2))
for i, ax in enumerate(fig.subplots(1, 8)):
    image, label = test.get(i)
    probs = predictor.predict_proba(predictor.transform(image)[None])[0]
    ax.imshow(image[0], cmap="gray")
    ax.set_title(f"{predictor.classes[int(probs.argmax())]} ({probs.max():.2f})\ntrue {label}", fontsize=8)
    ax.axis("off")
display(fig)

# %% [markdown]
# ## Freezing 0, 2 or 4 layer groups
# `resnet_tiny` has 5 groups (stem + 4 stages). From scratch, frozen groups stay random feature extractors: the more
# are frozen, the fewer parameters learn. (With pretrained weights the story changes: see phase 7's transfer notes.)

# %%
frozen = {}
for depth in (0, 2, 4):
    r = train("model.name=resnet_tiny", f"model.freeze_layers={depth}", "training.epochs=3", "data.subset=600")
    frozen[depth] = (r.test.acc, r.summary["trainable_params"])
    print(f"freeze_layers={depth}: test acc {r.test.acc:.3f}, trainable params {r.summary['trainable_params']:,}")
fig = Figure(figsize=(5, 3), layout="constrained")
ax = fig.subplots()
ax.bar([str(d) for d in frozen], [a for a, _ in frozen.values()], color="#4c78a8")
ax.set_xlabel("frozen groups (model.freeze_layers)")
ax.set_ylabel("test accuracy")
ax.set_title("resnet_tiny from scratch, 3 epochs")
display(fig)

# %% [markdown]
# ## Augmentation on and off
# Random shifts (pad 2 px, crop) against no augmentation at all, on 300 training images for 15 epochs. Augmentation
# makes the training task harder: in a short run it often costs accuracy, and it pays off once a model would
# otherwise overfit (longer runs, bigger models, fewer images per class). Compare the two numbers, then try
# `training.epochs=60`.

# %%
aug = {}
for name, switch in (("off", "augmentation.train.enabled=false"), ("on", "augmentation.train.enabled=true")):
    r = train(switch, "data.subset=300", "training.epochs=15", "model.name=simple_cnn_tiny")
    aug[name] = r.test.acc
    print(f"augmentation {name}: test acc {r.test.acc:.3f}")

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls train cifar10_resnet18` (downloads CIFAR-10; a GPU makes it minutes), then `imgcls eval RUN`.
# - `imgcls study freeze-layers --dataset cifar10` and `imgcls study augmentation --dataset cifar10`: the two
#   experiments above over three seeds, with a table and a reading.
# - Freezing pays off with pretrained weights: `imgcls train transfer data.root=...` on a small folder of photos.
