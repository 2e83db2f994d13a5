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
# # Phase 4: architectures
#
# A residual block written here and trained by name through the model registry; what its layers see (feature maps
# at different depths); a ViT's patch embeddings and attention; and EfficientNet's compound scaling from B0 to B3.

# %%
# %matplotlib inline
from pathlib import Path

import torch
from IPython.display import display
from matplotlib.figure import Figure
from torch import nn

from imgcls.config import build_config
from imgcls.data.build import build_splits
from imgcls.evaluate.infer import Predictor
from imgcls.evaluate.post_run import train_and_report
from imgcls.explain.attention import attention_rollout, layer_attention
from imgcls.explain.features import feature_maps, plot_feature_maps, viewable_layers
from imgcls.models.base import ImageClassifier
from imgcls.models.complexity import model_table
from imgcls.models.registry import MODELS, register_model

RUNS = Path("runs") / "phase4"
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]


def train(*overrides: str):
    return train_and_report(build_config("quickstart", [*QUIET, "data.subset=800", "training.epochs=4", *overrides]))


# %% [markdown]
# ## A custom residual block
# `y = relu(x + F(x))`, where `F` is conv-BN-ReLU-conv-BN; when the block changes width or resolution, a 1x1 conv
# projects the shortcut. The model follows imgcls's interface (`forward_features`, `stage_groups`, a `head`), so
# every tool (training, freezing, Grad-CAM, export) works with it once it is registered.


# %%
class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.body(x))


class NotebookResNet(ImageClassifier):
    cam_layer = "stages.2"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, widths[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        c, stages = widths[0], []
        for i, w in enumerate(widths):
            stages.append(ResidualBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def stage_groups(self) -> list[nn.Module]:
        return [self.stem, *self.stages]


if "notebook_resnet" not in MODELS:  # re-running the cell must not register it twice

    @register_model
    def notebook_resnet(num_classes: int = 10, in_chans: int = 3, image_size: int | None = None) -> NotebookResNet:
        return NotebookResNet(num_classes=num_classes, in_chans=in_chans)


custom = train("model.name=notebook_resnet")
print(f"notebook_resnet: test accuracy {custom.test.acc:.3f}, {custom.summary['params']:,} parameters")

# %% [markdown]
# ## Feature maps at different depths
# The first stage still looks like the digit (edges and strokes at full resolution); the last is a coarse grid of
# abstract detectors. `imgcls explain features RUN IMG --layer stages.0` draws the same from the command line.

# %%
predictor = Predictor.from_checkpoint(custom.run_dir)
image, label = build_splits(build_config("quickstart")).test.get(0)
x = predictor.transform(image)[None]
print("layers with feature maps:", ", ".join(viewable_layers(predictor.model, x)[:12]), "...")
maps = feature_maps(predictor.model, x, ["stages.0", "stages.2"])
for layer, m in maps.items():
    display(plot_feature_maps(m[0], image=image, layer=layer, channels=11))

# %% [markdown]
# ## A ViT: patch embeddings and attention
# `vit_micro` cuts the 16x16 input into 4x4 patches; its patch embedding is a conv whose filters are what each token
# dimension looks for in a patch. The class token's attention over the patches shows where each head looks.

# %%
vit = train("model.name=vit_micro", "training.optimizer.name=adamw", "training.optimizer.lr=3e-3")
vit_model = Predictor.from_checkpoint(vit.run_dir).model
patch = next(m for m in vit_model.embed.patchify.modules() if isinstance(m, nn.Conv2d))
filters = patch.weight.detach()[:16, 0]  # [16, k, k] of the first input channel
fig = Figure(figsize=(8, 2), layout="constrained")
for ax, f in zip(fig.subplots(2, 8).ravel(), filters, strict=True):
    ax.imshow(f, cmap="RdBu_r")
    ax.axis("off")
fig.suptitle(f"vit_micro patch-embedding filters ({tuple(patch.weight.shape)}), test acc {vit.test.acc:.3f}")
display(fig)

heads = layer_attention(vit_model, x, -1)[0]  # [heads, h, w]: class-token attention of the last block
rollout = attention_rollout(vit_model, x)[0]
fig = Figure(figsize=(8, 2.2), layout="constrained")
axes = fig.subplots(1, 2 + heads.shape[0])
axes[0].imshow(image[0], cmap="gray")
axes[0].set_title(f"input (true {label})", fontsize=8)
for i, h in enumerate(heads):
    axes[1 + i].imshow(h, cmap="viridis")
    axes[1 + i].set_title(f"last block, head {i}", fontsize=8)
axes[-1].imshow(rollout, cmap="viridis")
axes[-1].set_title("rollout", fontsize=8)
for ax in axes:
    ax.axis("off")
display(fig)

# %% [markdown]
# ## EfficientNet compound scaling, B0 to B3
# One coefficient scales depth, width and input resolution together (depth x1.2, width x1.1, resolution x1.15 per
# step in the paper): parameters grow slowly, computation fast, mostly from the resolution.

# %%
PAPER_RESOLUTION = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 260, "efficientnet_b3": 300}
rows = [model_table([name], input_size=side)[0] for name, side in PAPER_RESOLUTION.items()]
for r in rows:
    print(f"{r['name']}: {r['params'] / 1e6:.2f}M params, {r['macs'] / 1e9:.2f} GMACs at {r['input_size'][-1]} px")
fig = Figure(figsize=(8, 3), layout="constrained")
a1, a2 = fig.subplots(1, 2)
names = [r["name"].removeprefix("efficientnet_") for r in rows]
a1.bar(names, [r["params"] / 1e6 for r in rows], color="#4c78a8")
a1.set_title("parameters (M)")
a2.bar(names, [r["macs"] / 1e9 for r in rows], color="#e45756")
a2.set_title("GMACs per image at the paper resolution")
display(fig)

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls study architectures --dataset cifar10`: ResNet, EfficientNet, ViT and hybrids under one budget.
# - The block above on CIFAR-10, from Python: `train_and_report(build_config("cifar10_resnet18",
#   ["model.name=notebook_resnet"]))` once the cell that registers it has run; `imgcls models 'efficientnet*'
#   --input-size 32` gives the EfficientNets' sizes at CIFAR's resolution.
# - `imgcls explain features RUN image.png --layer stages.0 --layer stages.3` on a CIFAR-10 ResNet-18.
