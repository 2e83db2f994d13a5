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
# # Phase 3: optimizers, learning-rate schedules, and the LR / weight-decay / batch-size knobs
#
# The schedules are pure functions of the step, so their curves can be drawn without training. Then small sweeps on
# digits: SGD against AdamW, the learning rate over two orders of magnitude, weight decay, and the batch size.

# %%
# %matplotlib inline
from pathlib import Path

from IPython.display import display
from matplotlib.figure import Figure

from imgcls.config import SchedulerConfig, build_config
from imgcls.engine.runs import load_run
from imgcls.engine.schedules import SCHEDULES, lr_curve
from imgcls.evaluate.post_run import train_and_report

RUNS = Path("runs") / "phase3"
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]
SMALL = ["model.name=simple_cnn_tiny", "data.subset=600", "training.epochs=5"]


def train(*overrides: str):
    return train_and_report(build_config("quickstart", [*QUIET, *SMALL, *overrides]))


# %% [markdown]
# ## Learning-rate schedules
# Every registered schedule over 10 epochs of 40 steps, with one epoch of linear warmup where it applies.

# %%
names = list(SCHEDULES)
fig = Figure(figsize=(11, 4.5), layout="constrained")
for ax, name in zip(fig.subplots(2, (len(names) + 1) // 2, sharey=True).ravel(), names, strict=False):
    cfg = SchedulerConfig(name=name, warmup_epochs=1.0, step_size=4, milestones=[5, 8], gamma=0.3)
    ax.plot(lr_curve(cfg, total_steps=400, steps_per_epoch=40), color="#4c78a8")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("optimizer step", fontsize=8)
fig.suptitle("lr multiplier per step: 10 epochs of 40 steps, 1 epoch of warmup")
display(fig)

# %% [markdown]
# ## SGD against AdamW
# Each at a learning rate that suits it (AdamW's steps are normalised, so it wants a far smaller one).

# %%
curves = {}
for name, lr in (("sgd", 0.05), ("adamw", 3e-3)):
    r = train(f"training.optimizer.name={name}", f"training.optimizer.lr={lr}")
    curves[name] = load_run(r.run_dir).column("val_acc")
    print(f"{name}: test accuracy {r.test.acc:.3f}")
fig = Figure(figsize=(5, 3), layout="constrained")
ax = fig.subplots()
for name, values in curves.items():
    ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("val accuracy")
ax.legend()
display(fig)

# %% [markdown]
# ## Learning rate, weight decay, batch size
# Too small a learning rate learns slowly; in a budget this short, the largest one that stays stable wins (try 5.0
# to see one that does not). Weight decay matters little in 5 epochs. A larger batch takes fewer steps per epoch,
# so at the same learning rate it learns far less in the same epochs (scale the learning rate with the batch).

# %%
sweeps = {
    "lr": [("0.005", ["training.optimizer.lr=0.005"]), ("0.05", []), ("0.5", ["training.optimizer.lr=0.5"])],
    "weight decay": [("0", ["training.optimizer.weight_decay=0"]), ("5e-3", ["training.optimizer.weight_decay=5e-3"])],
    "batch size": [("16", ["data.batch_size=16"]), ("128", ["data.batch_size=128"])],
}
acc = {knob: {label: train(*o).test.acc for label, o in values} for knob, values in sweeps.items()}
fig = Figure(figsize=(10, 3), layout="constrained")
for ax, (knob, values) in zip(fig.subplots(1, 3), acc.items(), strict=True):
    ax.bar(list(values), list(values.values()), color="#54a24b")
    ax.set_ylim(0, 1)
    ax.set_title(knob)
    ax.set_ylabel("test accuracy")
display(fig)
print(acc)

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls lr-plot cifar10_modern --steps-per-epoch 390 --out lr.png` and `imgcls lr-find quickstart --out lr.png`.
# - `imgcls study optimizers --dataset cifar10`, `imgcls study learning-rate --dataset cifar10`,
#   `imgcls study weight-decay --dataset cifar10`, `imgcls study batch-size --dataset cifar10`: the sweeps with seeds.
# - On CIFAR-10 weight decay does matter over 30+ epochs; try `training.optimizer.weight_decay=5e-4` against 0.
