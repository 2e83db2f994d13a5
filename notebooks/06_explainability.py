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
# # Phase 6: Grad-CAM, attention and embeddings
#
# Three ways to look inside a trained model: Grad-CAM (which pixels raised the score of a class, for CNNs),
# attention rollout (where a ViT's class token gathers information from) and a 2-D map of the penultimate features
# (t-SNE, PCA, UMAP when installed): do the classes form separate clusters, and which ones touch?

# %%
# %matplotlib inline
import importlib.util
from pathlib import Path

import torch
from IPython.display import display
from matplotlib.figure import Figure

from imgcls.config import build_config
from imgcls.data.build import build_eval_loader
from imgcls.engine.build import load_split
from imgcls.evaluate.post_run import train_and_report
from imgcls.explain.attention import attention_rollout, upsample_map
from imgcls.explain.embeddings import extract_features, plot_embedding, project
from imgcls.explain.gradcam import GradCAM, overlay_heatmap

RUNS = Path("runs") / "phase6"
QUIET = ["run.progress=false", "run.tracker=none", "run.report=false", f"run.dir={RUNS}"]


def train(*overrides: str):
    return train_and_report(build_config("quickstart", [*QUIET, *overrides]))


cnn = train("training.epochs=3")
model, ckpt, test, transform = load_split(cnn.run_dir)
images = [test.get(i) for i in range(8)]
x = torch.stack([transform(img) for img, _ in images])
print(f"simple_cnn: test accuracy {cnn.test.acc:.3f}")


def overlay_row(maps, title: str) -> Figure:  # noqa: ANN001
    fig = Figure(figsize=(10, 1.7), layout="constrained")
    for ax, (img, label), m in zip(fig.subplots(1, len(images)), images, maps, strict=True):
        big = torch.nn.functional.interpolate(img[None].float(), size=64, mode="nearest")[0].to(torch.uint8)
        ax.imshow(overlay_heatmap(big, m))
        ax.set_title(f"true {label}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


# %% [markdown]
# ## Grad-CAM
# For the predicted class, at the model's last stage (`model.cam_layer`): red is where the evidence is.

# %%
cam = GradCAM(model)
maps, logits = cam(x)
display(overlay_row(maps.numpy(), f"Grad-CAM at {cam.layer_name}, predicted: {logits.argmax(1).tolist()}"))

# %% [markdown]
# ## Attention rollout of a ViT
# The attention of every block multiplied through (with the residual path), from the class token to the patches.

# %%
vit = train("model.name=vit_micro", "training.epochs=4", "training.optimizer.name=adamw", "training.optimizer.lr=3e-3")
vit_model, *_ = load_split(vit.run_dir)
grid = attention_rollout(vit_model, x)
display(
    overlay_row([upsample_map(g, (16, 16)) for g in grid], f"vit_micro attention rollout (test acc {vit.test.acc:.3f})")
)

# %% [markdown]
# ## Embeddings: t-SNE, PCA and UMAP
# PCA is linear (global distances mean something); t-SNE keeps neighbourhoods (cluster sizes and the gaps between
# clusters do not); UMAP is in between and faster on large sets.

# %%
feats, targets, preds = extract_features(model, build_eval_loader(test, transform, batch_size=256))
methods = ["tsne", "pca"] + (["umap"] if importlib.util.find_spec("umap") else [])
for method in methods:
    display(
        plot_embedding(project(feats, method), targets, ckpt["classes"], title=f"{method}: {len(feats)} test images")
    )
if "umap" not in methods:
    print("UMAP: pip install 'imgcls[umap]' to add it")

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls explain gradcam RUN cat.png --plus-plus` and `imgcls explain embeddings RUN --method tsne` on a CIFAR-10
#   ResNet-18 (`imgcls train cifar10_resnet18`): cats and dogs touch, vehicles and animals separate.
# - `imgcls explain attention RUN image.png --rollout` on `imgcls train cifar10_resnet18 model.name=vit_tiny`.
# - Every run's `eval/report.html` shows the most confidently wrong test images with their Grad-CAM.
