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
# # Phase 8: distillation, ensembles, test-time augmentation, and your own architecture against baselines
#
# Ways to get more out of models you have (a teacher's soft targets, several models averaged, several views of each
# test image averaged), and how to judge an architecture of your own: the same data, budget and evaluation as the
# baselines, with parameters and time beside accuracy.

# %%
# %matplotlib inline
from pathlib import Path

import torch
from IPython.display import display
from matplotlib.figure import Figure
from torch import nn

from imgcls.config import build_config
from imgcls.evaluate.post_run import train_and_report
from imgcls.evaluate.run_eval import run_eval
from imgcls.models.base import ImageClassifier
from imgcls.models.registry import MODELS, register_model

RUNS = Path("runs") / "phase8"
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]
# the same for every model compared below: 600 images, 5 epochs, a learning rate that suits that short budget
BUDGET = ["data.subset=600", "training.epochs=5", "training.optimizer.lr=0.3"]


def train(*overrides: str):
    return train_and_report(build_config("quickstart", [*QUIET, *BUDGET, *overrides]))


def test_acc(run, **kw) -> float:  # noqa: ANN001
    return run_eval(run.run_dir, report=False, quiet=True, **kw)[1]["accuracy"]


# %% [markdown]
# ## Knowledge distillation
# A larger teacher (`simple_cnn`) trains first; the small student (`simple_cnn_tiny`) then learns from a mix of the
# labels and the teacher's softened probabilities (temperature 4, half and half).

# %%
teacher = train("model.name=simple_cnn", "training.optimizer.lr=0.05")
student = train("model.name=simple_cnn_tiny")
distilled = train(
    "model.name=simple_cnn_tiny", f"training.distill.teacher={teacher.run_dir / 'checkpoints' / 'best.pt'}"
)
for name, r in (("teacher simple_cnn", teacher), ("student alone", student), ("student distilled", distilled)):
    print(f"{name:>18}: test accuracy {r.test.acc:.3f}, {r.summary['params']:,} parameters")

# %% [markdown]
# ## Ensembles and test-time augmentation
# Averaging the probabilities of two students of different seeds, and averaging each student's predictions over
# views of the test image (TTA: identity and a horizontal flip here) cost only inference time. A flipped digit is
# another digit (or none), so on digits flip-TTA can hurt: a view must be one the label survives.

# %%
student2 = train("model.name=simple_cnn_tiny", "run.seed=1")
ensemble = run_eval(student.run_dir, ensemble=[str(student2.run_dir)], report=False, quiet=True)[1]["accuracy"]
rows = {
    "student seed 0": student.test.acc,
    "student seed 1": student2.test.acc,
    "ensemble of both": ensemble,
    "seed 0 + TTA 2": test_acc(student, tta=2),
}
for name, acc in rows.items():
    print(f"{name:>16}: {acc:.3f}")

# %% [markdown]
# ## Your own architecture against baselines
# A depthwise-separable CNN (MobileNet's building block: a 3x3 conv per channel, then a 1x1 conv across channels)
# against the in-house baselines, on the same budget.


# %%
class SeparableNet(ImageClassifier):
    cam_layer = "stages.2"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, widths[-1]
        blocks, c = [], in_chans
        for i, w in enumerate(widths):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c, c, 3, 1 if i == 0 else 2, 1, groups=c, bias=False),
                    nn.Conv2d(c, w, 1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                )
            )
            c = w
        self.stages = nn.Sequential(*blocks)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def stage_groups(self) -> list[nn.Module]:
        return list(self.stages)


if "separable_net" not in MODELS:

    @register_model
    def separable_net(num_classes: int = 10, in_chans: int = 3, image_size: int | None = None) -> SeparableNet:
        return SeparableNet(num_classes=num_classes, in_chans=in_chans)


table = {"separable_net (ours)": train("model.name=separable_net"), "simple_cnn_tiny": student}
table["resnet_tiny"] = train("model.name=resnet_tiny")
for name, r in table.items():
    print(f"{name:>20}: acc {r.test.acc:.3f}  params {r.summary['params']:>7,}  {r.summary['seconds']:.1f} s")
fig = Figure(figsize=(6, 3), layout="constrained")
ax = fig.subplots()
for name, r in table.items():
    ax.scatter(r.summary["params"], r.test.acc, s=60)
    ax.annotate(name, (r.summary["params"], r.test.acc), fontsize=8, xytext=(4, 4), textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("parameters")
ax.set_ylabel("test accuracy")
ax.set_title("same data, same 5-epoch budget")
display(fig)

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls study distillation --dataset cifar10`, `imgcls study ensembles --dataset cifar10`,
#   `imgcls study tta --dataset cifar10`: the same comparisons over seeds.
# - `imgcls eval RUN --tta 2 --ensemble RUN2/checkpoints/best.pt` on two CIFAR-10 runs.
# - Benchmark your own block the way `imgcls study architectures --dataset cifar10` does: one budget, three seeds,
#   accuracy with its spread next to parameters, MACs (`imgcls models`) and images/s (`imgcls bench`).
