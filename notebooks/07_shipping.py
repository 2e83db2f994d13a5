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
# # Phase 7: tracking, ONNX export, a model registry with model cards, and an inference pipeline
#
# From a trained run to something others can use: its metrics in an experiment tracker (MLflow, a SQLite file in the
# run folder), an ONNX file checked against PyTorch and timed, numbered versions with aliases in a model registry,
# each with its model card, and a predictor that copes with the images people actually send.

# %%
# %matplotlib inline
import os
from pathlib import Path

import mlflow
import numpy as np
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from PIL import Image

from imgcls.config import build_config
from imgcls.data.images import BadImageError
from imgcls.engine.model_registry import list_versions, set_alias
from imgcls.evaluate.infer import Predictor
from imgcls.evaluate.post_run import train_and_report
from imgcls.evaluate.publish import register_run
from imgcls.export.bench import bench
from imgcls.export.onnx import export_checkpoint

RUNS = Path("runs") / "phase7"
# the registry of this notebook: a SQLite file beside its runs (the default is runs/registry.db)
os.environ["IMGCLS_REGISTRY_URI"] = f"sqlite:///{(RUNS / 'registry.db').resolve()}"


def train(*overrides: str):
    quiet = ["run.progress=false", f"run.dir={RUNS}", "model.name=simple_cnn_tiny", "training.epochs=4"]
    return train_and_report(build_config("quickstart", [*quiet, *overrides]))


# %% [markdown]
# ## Tracking
# `run.tracker=mlflow` logs the config as parameters and every epoch's metrics to `<run>/mlflow.db`; the run also
# writes its evaluation report and model card (`run.report`, on by default).

# %%
run = train("run.tracker=mlflow")
client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(run.run_dir / 'mlflow.db').resolve()}")
tracked = client.search_runs(client.get_experiment_by_name("imgcls").experiment_id)[0]
history = {m: client.get_metric_history(tracked.info.run_id, m) for m in ("train_loss", "val_loss")}
fig = Figure(figsize=(5, 3), layout="constrained")
ax = fig.subplots()
for name, points in history.items():
    ax.plot([p.step for p in points], [p.value for p in points], marker="o", label=name)
ax.set_xlabel("epoch")
ax.legend()
ax.set_title(f"from MLflow: {len(tracked.data.params)} params logged")
display(fig)

# %% [markdown]
# ## ONNX export, verified and timed
# The export is compared with PyTorch on the run's own test images (largest logit difference, top-1 agreement)
# before it is kept; then the same model is timed in eager PyTorch and in onnxruntime.

# %%
exported = export_checkpoint(run.run_dir, num_images=64)
print("\n".join(exported.report.lines()))
timing = bench(
    run.run_dir, batch_sizes=(1, 32), backends=("eager", "onnx-fp32"), onnx_path=exported.path, min_seconds=0.3
)
for r in timing.rows:
    print(f"{r.backend:>10} batch {r.batch_size:>2}: {r.p50_ms:.3f} ms median, {r.images_per_s:,.0f} images/s")

# %% [markdown]
# ## A model registry with versions, aliases and model cards
# Two runs become versions 1 and 2 of the model `digits`; the alias `prod` points at the better one. Anything that
# takes a checkpoint takes `models:/digits@prod` (`imgcls predict`, `eval`, `export`, `serve`), and the card travels
# with each version.

# %%
second = train("run.seed=1", "run.tracker=none")
for r in (run, second):
    register_run(r.run_dir, "digits")
best = max((run, second), key=lambda r: r.test.acc)
version = "1" if best is run else "2"
set_alias("digits", version, "prod")
for v in list_versions():
    print(f"models:/{v.name}/{v.version} aliases={v.aliases} run={v.tags['imgcls_run']} test_acc={v.tags['test_acc']}")
card = (best.run_dir / "MODEL_CARD.md").read_text()
display(Markdown(card.split("\n---\n", 1)[1][:2500]))  # the sections (the YAML header is for the Hub)

# %% [markdown]
# ## The inference pipeline and its edge cases
# `Predictor` decodes any image file the way training saw its data: colour or grey, any size, 16-bit, transparent.
# What cannot be used (not an image, a truncated file) raises one clear error.

# %%
predictor = Predictor.from_checkpoint("models:/digits@prod")
cases = RUNS / "cases"
cases.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(cases / "large_rgb.jpg")
Image.fromarray(rng.integers(0, 255, (3, 3), dtype=np.uint8)).save(cases / "tiny_3x3.png")
Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").save(cases / "transparent.png")
Image.fromarray((rng.integers(0, 65535, (16, 16))).astype(np.uint16)).save(cases / "sixteen_bit.png")
(cases / "not_an_image.png").write_text("hello")
(cases / "truncated.jpg").write_bytes((cases / "large_rgb.jpg").read_bytes()[:2000])  # a download cut short
for path in sorted(cases.iterdir()):
    try:
        top = predictor.topk(predictor.predict_proba(predictor.load_image(path)[None]), 2)[0]
        print(f"{path.name:>18}: " + ", ".join(f"{c} {p:.2f}" for c, p in top))
    except BadImageError as e:
        print(f"{path.name:>18}: refused: {e}")

# %% [markdown]
# ## Try next on CIFAR-10
# - `imgcls train cifar10_resnet18 run.tracker=mlflow`, then `mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`.
# - `imgcls export RUN --format onnx --dynamic-batch`, `imgcls quantize RUN/checkpoints/best.onnx` (INT8) and
#   `imgcls bench RUN --batch-sizes 1,8,32`.
# - `imgcls registry register RUN --name cifar10`, `imgcls registry alias cifar10 1 prod`, then
#   `imgcls serve models:/cifar10@prod` and open http://127.0.0.1:8000/.
