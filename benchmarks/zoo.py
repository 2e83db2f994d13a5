"""The model zoo on CIFAR-10: every family trained with a recipe that suits it, one row each in a results table.

Each row: model, parameters, MACs per 32x32 image, training images/s (of the run itself: images over training-step
seconds), inference images/s (eager PyTorch and onnxruntime INT8, batch 64), epochs reached, test accuracy without
TTA and with TTA (views named), and the exact commands that reproduce it. Written as ``zoo.csv`` and ``zoo.md`` in
``--out``; with the full data (no ``--subset``) also into the package (``src/imgcls/models/zoo_results.csv``), where
``imgcls models`` shows each model's measured accuracy and budget.

Two modes:

- ``--device cpu`` (default): a **budgeted** run, ``--budget`` minutes of training per model (default 10). The
  recipe's epochs do not fit, so the run gets as many epochs as its measured throughput allows in the budget (the
  schedule, warmup and mixing-off epochs compressed to them), and ``training.max_minutes`` stops it at the budget in
  any case, mid-epoch if need be (``epochs reached`` then has a fraction). This measures the budget, not the recipe.
- ``--device cuda``: the GPU recipes (the ``cifar10_*`` presets, ``speedrun``) run to their end; ``--budget`` caps
  them only if given.

Data: ../shared/data/cifar10_jpg.tar.gz (50,000 train / 10,000 test JPEGs; ``--data`` for another copy). Models train
on all 50k train images (no validation split: the test split is the measurement; best.pt is the last epoch).

    python benchmarks/zoo.py                                   # all models, 10 min each on CPU (~2 h on 2 cores)
    python benchmarks/zoo.py --budget 0.3 --models simple_cnn,resnet_tiny --subset 2000 --out /tmp/zoo
    python benchmarks/zoo.py --device cuda                     # the GPU recipes, to the end
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.config import build_config
from imgcls.engine.build import build_model_for, seed_everything
from imgcls.engine.loop import autocast_context
from imgcls.engine.threads import apply_threads
from imgcls.engine.train import train
from imgcls.evaluate.run_eval import run_eval
from imgcls.export.bench import bench
from imgcls.models.complexity import count_macs, count_params
from imgcls.models.zoo_results import RESULTS_FILE, ZOO_FIELDS, write_results

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpg.tar.gz"
TRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class ZooEntry:
    """One row of the zoo: a model and its recipe (a preset), plus what a CPU run must change (``cpu``)."""

    model: str
    preset: str
    cpu: tuple[str, ...] = ()


#: the families of the guide's claims, smallest first; airbench's presets are the speedrun recipes
ZOO = (
    ZooEntry("simple_cnn", "cifar10_simple_cnn"),
    ZooEntry("resnet_tiny", "cifar10_resnet_tiny"),
    ZooEntry("efficientnet_tiny", "cifar10_efficientnet_tiny"),
    ZooEntry("airbench_small", "cpu_speedrun"),
    ZooEntry("airbench", "speedrun", cpu=("training.compile=false",)),  # inductor was slower than eager on CPU
    ZooEntry("resnet18", "cifar10_resnet18"),
    ZooEntry("timm:resnet10t", "cifar10_timm"),
    ZooEntry("cnn_transformer_small", "cifar10_cnn_transformer"),
    ZooEntry("vit_tiny", "cifar10_vit_tiny"),
    ZooEntry("efficientnet_b0", "cifar10_efficientnet_b0"),
    ZooEntry("resnet50", "cifar10_resnet50"),
)

#: every run: the data, all 50k train images, no per-run report or tracker, a plain log
COMMON = ("data.val_fraction=0", "run.report=false", "run.tracker=none", "run.progress=false")
#: on CPU: the in-memory loader with batch augmentation where the recipe allows it (data.loader=auto), NHWC, and bf16
#: autocast where the CPU has native bf16 (3x fp32 on this project's AMX Xeon, see benchmarks/README.md; emulated bf16
#: is slower than fp32, so elsewhere the run stays fp32)
CPU_SPEED = ("run.device=cpu", "data.loader=auto", "training.channels_last=true")


def cpu_speed() -> list[str]:
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return [*CPU_SPEED, f"training.amp={'true' if native_bf16 else 'false'}"]


def measure_train_speed(preset: str, overrides: list[str], seconds: float = 8.0) -> float:
    """Images/s of training steps (forward, backward, SGD step) on random 32x32 inputs at the recipe's batch size,
    precision and layout, after 2 warm-up steps: what sets the epochs a budget allows."""
    cfg = build_config(preset, overrides)
    seed_everything(0)
    model = build_model_for(cfg, num_classes=10, in_chans=3, image_size=32)
    memory = torch.channels_last if cfg.training.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    bs = cfg.data.batch_size
    x = torch.randn(bs, 3, 32, 32).contiguous(memory_format=memory)
    y = torch.randint(0, 10, (bs,))
    device = torch.device("cpu")

    def step() -> None:
        with autocast_context(device, cfg.training.amp, cfg.training.amp_dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += bs
    return n / (time.perf_counter() - t0)


def budget_overrides(preset: str, epochs: int) -> list[str]:
    """The recipe compressed to ``epochs``: warmup and the mixing-off tail scaled by the same factor."""
    cfg = build_config(preset, [])
    factor = epochs / cfg.training.epochs
    out = [f"training.epochs={epochs}"]
    if cfg.training.scheduler.warmup_epochs:
        out.append(f"training.scheduler.warmup_epochs={round(cfg.training.scheduler.warmup_epochs * factor, 3):g}")
    if cfg.augmentation.mix.off_last_epochs:
        out.append(f"augmentation.mix.off_last_epochs={max(1, round(cfg.augmentation.mix.off_last_epochs * factor))}")
    return out


def tta_views(preset: str) -> int:
    """The recipe's TTA views, else 2 (identity + mirror)."""
    return max(2, build_config(preset, []).run.test_tta)


def command(preset: str, overrides: list[str]) -> str:
    return shlex.join(["imgcls", "train", preset, *overrides])


def run_entry(entry: ZooEntry, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train one model, test it with and without TTA, time inference; returns its row."""
    name = f"zoo-{entry.model.replace(':', '_')}"
    base = [f"data.root={args.data}", *COMMON, f"run.dir={out / 'runs'}", f"run.name={name}"]
    if args.subset:
        base.append(f"data.subset={args.subset}")
    if args.threads:
        base.append(f"run.threads={args.threads}")
    n_train = args.subset or TRAIN_IMAGES
    overrides = [*base, *(cpu_speed() if args.device == "cpu" else ["run.device=cuda"])]
    if args.device == "cpu":
        overrides += entry.cpu
        speed = measure_train_speed(entry.preset, overrides)
        # 85% of the step rate: loading, the epoch's tail and bookkeeping take the rest
        recipe = build_config(entry.preset, []).training.epochs
        epochs = min(recipe, max(1, math.floor(args.budget * 60 * speed * 0.85 / n_train)))
        print(f"{entry.model}: {speed:,.0f} img/s in training steps -> {epochs} epoch(s) in {args.budget:g} min")
        overrides += budget_overrides(entry.preset, epochs)
    if args.budget is not None:
        overrides.append(f"training.max_minutes={args.budget:g}")
    cfg = build_config(entry.preset, overrides)
    result = train(cfg)
    summary = result.summary
    with (result.run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r["seconds"]) for r in rows)
    images = sum(float(r["images_per_s"]) * float(r["seconds"]) for r in rows)
    stop = summary.get("budget_stop")
    views = tta_views(entry.preset)
    best = result.run_dir / "checkpoints" / "best.pt"
    _, tta = run_eval(best, tta=views, report=False, quiet=True, out_dir=result.run_dir / "eval-tta")
    speeds = bench(best, batch_sizes=(64,), backends=("eager", "onnx-int8"), min_seconds=2.0, threads=args.threads)
    model = build_model_for(cfg, num_classes=10, in_chans=3, image_size=32)
    return {
        "model": entry.model,
        "preset": entry.preset,
        "device": args.device,
        "budget_min": args.budget if args.budget is not None else "",
        "train_images": n_train,
        "params": count_params(model)[0],
        "macs": count_macs(model, 32),
        "train_img_s": round(images / max(seconds, 1e-9), 1),
        "eager_img_s": round(speeds.row("eager", 64).images_per_s, 1) if speeds.row("eager", 64) else "",
        "int8_img_s": round(speeds.row("onnx-int8", 64).images_per_s, 1) if speeds.row("onnx-int8", 64) else "",
        "epochs_reached": round(stop["epochs_reached"] if stop else summary["epochs_run"], 2),
        "recipe_epochs": build_config(entry.preset, []).training.epochs,
        "train_minutes": round(seconds / 60, 2),
        "test_acc": round(summary["test_acc"], 4),
        "test_acc_tta": round(tta["accuracy"], 4),
        "tta_views": views,
        "command": command(entry.preset, overrides),
        "tta_command": shlex.join(["imgcls", "eval", str(result.run_dir), "--tta", str(views)]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
    }


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {_threads()}"
    except OSError:
        pass
    return f"CPU, {_threads()}"


def _threads() -> str:
    n = torch.get_num_threads()
    native = "native" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native"
    return f"{n} thread{'s' if n > 1 else ''}, {native} bf16"


def markdown(rows: list[dict[str, Any]], mode: str) -> str:
    """The table, with ``mode`` (what was measured, where) above it and the reproducing commands below."""
    head = f"{mode}\n\n" + (
        "| model | params | MACs | train img/s | eager img/s | ONNX INT8 img/s | epochs reached | test acc | "
        "test acc (TTA) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:,.1f}M | {r['train_img_s']:,.0f} | "
            f"{_num(r['eager_img_s'])} | {_num(r['int8_img_s'])} | {r['epochs_reached']:g} of {r['recipe_epochs']} | "
            f"{100 * r['test_acc']:.2f}% | {100 * r['test_acc_tta']:.2f}% ({r['tta_views']} views) |"
        )
    lines.append("")
    lines.append(
        "Inference: batch 64 on the CPU with the benchmark's threads (eager PyTorch; onnxruntime INT8: static QDQ, "
        "per-channel). Train img/s: the run's own, images over training-step seconds."
    )
    lines.append("")
    lines.append("Commands (train, then the TTA evaluation of its run folder):")
    lines.append("")
    lines += [f"- `{r['model']}`: `{r['command']}`; `{r['tta_command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--budget", type=float, default=None, help="minutes of training per model (CPU default: 10)")
    p.add_argument("--models", default="", help="comma-separated subset of: " + ", ".join(e.model for e in ZOO))
    p.add_argument("--subset", type=int, default=None, help="train on this many images (a smoke run, not a result)")
    p.add_argument("--data", type=Path, default=CIFAR)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("zoo-results"))
    p.add_argument(
        "--no-package", action="store_true", help=f"do not write the rows into {RESULTS_FILE.name} (full data only)"
    )
    args = p.parse_args(argv)
    if args.device == "cpu" and args.budget is None:
        args.budget = 10.0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device here", file=sys.stderr)
        return 2
    if not args.data.exists():
        print(f"skipped: no CIFAR-10 at {args.data} (--data PATH)")
        return 0
    known = {e.model: e for e in ZOO}
    wanted = [m for m in args.models.split(",") if m] or list(known)
    unknown = [m for m in wanted if m not in known]
    if unknown:
        print(f"error: unknown zoo model(s) {', '.join(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    threads = apply_threads(args.threads)[0]
    args.threads = args.threads or threads
    if args.device == "cpu":
        mode = (
            f"CPU: this measures a BUDGETED run, {args.budget:g} min of training per model on {machine()}, with the "
            "epochs the model's throughput allows in it (schedule compressed) - not the recipe's end. "
            "--device cuda runs the recipes to the end."
        )
    else:
        budget = f", capped at {args.budget:g} min each" if args.budget is not None else ""
        mode = f"GPU: the recipes to their end on {machine()}{budget}."
    data = f"{args.subset:,} of the 50,000 train images" if args.subset else "all 50,000 train images"
    mode += f" CIFAR-10: {data}, the 10,000 test images."
    print(mode)
    if args.subset:
        print(f"--subset {args.subset}: a smoke run on part of the train split; not written into the package")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in wanted:
        rows.append(run_entry(known[name], args, args.out))
        with (args.out / "zoo.csv").open("w", newline="") as f:  # after every model: a crash keeps the rows so far
            writer = csv.DictWriter(f, fieldnames=ZOO_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        (args.out / "zoo.md").write_text(markdown(rows, mode))
    print(markdown(rows, mode))
    (args.out / "zoo.json").write_text(json.dumps(rows, indent=2))
    if not args.subset and not args.no_package:
        write_results(rows)
        print(f"rows written into {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
