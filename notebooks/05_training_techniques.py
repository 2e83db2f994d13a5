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
# # Phase 5: mixed precision, gradient accumulation, label smoothing and calibration, early stopping
#
# Four techniques that change how a run trains rather than what it learns from: autocast (speed), accumulating
# gradients (a large batch in small pieces), label smoothing (softer targets, better calibrated probabilities) and
# early stopping (stop when validation stops improving).

# %%
# %matplotlib inline
from pathlib import Path

from IPython.display import display
from matplotlib.figure import Figure

from imgcls.config import build_config
from imgcls.engine.runs import load_run
from imgcls.evaluate.calibration import plot_reliability_diagram, reliability_bins
from imgcls.evaluate.post_run import train_and_report
from imgcls.evaluate.run_eval import run_eval

RUNS = Path("runs") / "phase5"
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]


def train(*overrides: str):
    return train_and_report(build_config("quickstart", [*QUIET, *overrides]))


# %% [markdown]
# ## Mixed precision (autocast)
# On a CPU autocast runs in bfloat16; its speed-up depends on the processor (bf16 matrix units), and on an older
# CPU it can be slower. On a GPU with tensor cores (fp16/bf16) it is typically 2-3x for convolutional nets.

# %%
speed = {}
for amp in (False, True):
    r = train(f"training.amp={str(amp).lower()}", "training.epochs=2", "data.subset=800")
    speed["bf16 autocast" if amp else "fp32"] = (load_run(r.run_dir).column("images_per_s")[-1], r.test.acc)
for name, (ips, acc) in speed.items():
    print(f"{name:>14}: {ips:,.0f} images/s in the last epoch, test accuracy {acc:.3f}")

# %% [markdown]
# ## Batch 128 against batch 32 x 4 accumulation steps
# Both take one optimizer step per 128 images at the same learning rate; accumulation sums the gradients of four
# batches of 32 before stepping, so it needs a quarter of the memory. (BatchNorm still sees batches of 32: the
# curves are close, not identical.)

# %%
curves = {}
for name, o in (("128", ["data.batch_size=128"]), ("32 x 4", ["data.batch_size=32", "training.accum_steps=4"])):
    r = train(*o, "model.name=simple_cnn_tiny", "training.epochs=5", "training.optimizer.lr=0.1")
    curves[name] = load_run(r.run_dir).column("val_acc")
    print(f"batch {name}: test accuracy {r.test.acc:.3f}, {r.summary['seconds']:.1f} s")
fig = Figure(figsize=(5, 3), layout="constrained")
ax = fig.subplots()
for name, values in curves.items():
    ax.plot(range(1, len(values) + 1), values, marker="o", label=f"batch {name}")
ax.set_xlabel("epoch")
ax.set_ylabel("val accuracy")
ax.legend()
display(fig)

# %% [markdown]
# ## Label smoothing and calibration
# A model trained on one-hot targets keeps pushing its top probability towards 1; smoothing (here 0.1) caps what it
# aims for. The reliability diagram compares confidence with accuracy per confidence bin; ECE is their mean gap.
# Smoothing helps an over-confident model (bars below the diagonal); a model that is already well calibrated, as a
# short run on digits often is, becomes under-confident with it (bars above) and its ECE goes up: calibration is
# measured, not assumed.

# %%
for smoothing in (0.0, 0.1):
    r = train(f"training.loss.label_smoothing={smoothing}", "model.name=simple_cnn_tiny", "training.epochs=6")
    result, metrics = run_eval(r.run_dir, report=False, quiet=True)
    bins = reliability_bins(result.log_probs.exp(), result.targets)
    print(f"label smoothing {smoothing}: test accuracy {metrics['accuracy']:.3f}, ECE {metrics['ece']:.3f}")
    display(plot_reliability_diagram(bins, title=f"label smoothing {smoothing}: ECE {bins.ece:.3f}"))

# %% [markdown]
# ## Early stopping
# Stop once validation accuracy has not improved by at least 1 point for 2 epochs; the best checkpoint (not the
# last) is the one that is tested and shipped.

# %%
r = train(
    "model.name=simple_cnn_tiny",
    "training.epochs=20",
    "data.subset=400",
    "training.early_stopping.patience=2",
    "training.early_stopping.min_delta=0.01",
)
values = load_run(r.run_dir).column("val_acc")
best = r.summary["best_epoch"]
print(f"stopped early: {r.summary['stopped_early']} after {r.epochs_run} of 20 epochs; best epoch {best}")
fig = Figure(figsize=(5, 3), layout="constrained")
ax = fig.subplots()
ax.plot(range(1, len(values) + 1), values, marker="o")
ax.axvline(r.summary["best_epoch"], color="tab:red", ls="--", label="best checkpoint")
ax.set_xlabel("epoch")
ax.set_ylabel("val accuracy")
ax.legend()
display(fig)

# %% [markdown]
# ## Try next on CIFAR-10
# - On a GPU: `imgcls train cifar10_resnet18 training.amp=true` against `training.amp=false` (images/s in
#   metrics.csv); `imgcls study amp --dataset cifar10` measures it over seeds.
# - `imgcls study grad-accumulation --dataset cifar10` and `imgcls study label-smoothing --dataset cifar10` (ECE in
#   the table), `imgcls study early-stopping --dataset cifar10`.
