"""Knowledge distillation on the bundled digits: teacher, student alone, and student distilled from the teacher.

The teacher (``simple_cnn``, ~0.29M parameters) is trained once per seed; the student (``simple_cnn_tiny``, ~5k
parameters) is trained twice with the same recipe and seed: alone (cross-entropy) and with
``training.distill.teacher=<teacher best.pt>`` (loss ``(1 - alpha) CE + alpha T^2 KL(teacher_T || student_T)``).
Everything goes through the ordinary runner, :func:`imgcls.engine.train.train`. Test accuracy (best checkpoint, the
held-out 20% test split) is reported as mean ± std over seeds.

    python benchmarks/distill.py [--seeds 0 1 2] [--epochs 15] [--temperature 4] [--alpha 0.7] [--subset N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from imgcls.config import build_config
from imgcls.engine.train import train

COMMON = [
    "data.name=digits",
    "data.image_size=16",
    "data.batch_size=32",
    "training.optimizer.name=sgd",
    "training.optimizer.lr=0.05",
    "training.optimizer.momentum=0.9",
    "training.scheduler.name=cosine",
    "training.scheduler.warmup_epochs=1",
    "augmentation.train.random_crop=true",
    "augmentation.train.crop_padding=2",
    "run.progress=false",
    "run.tracker=none",
    "run.report=false",
]


def run(overrides: list[str]) -> tuple[float, Path]:
    """Train; returns (test accuracy of the best checkpoint, its path)."""
    result = train(build_config(None, [*COMMON, *overrides]))
    assert result.test is not None
    return result.test.acc, result.run_dir / "checkpoints" / "best.pt"


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--teacher", default="simple_cnn")
    p.add_argument("--student", default="simple_cnn_tiny")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--subset", type=int, default=None, help="cap the training split (distillation helps most here)")
    args = p.parse_args(argv)

    extra = [f"training.epochs={args.epochs}"] + ([f"data.subset={args.subset}"] if args.subset else [])
    acc: dict[str, list[float]] = {"teacher": [], "student alone": [], "student distilled": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            common = [*extra, f"run.seed={seed}", f"run.dir={tmp}"]
            teacher_acc, teacher_ckpt = run([*common, f"model.name={args.teacher}", "run.name=teacher"])
            alone, _ = run([*common, f"model.name={args.student}", "run.name=student"])
            distilled, _ = run(
                [
                    *common,
                    f"model.name={args.student}",
                    "run.name=distilled",
                    f"training.distill.teacher={teacher_ckpt}",
                    f"training.distill.temperature={args.temperature}",
                    f"training.distill.alpha={args.alpha}",
                ]
            )
            for key, value in zip(acc, (teacher_acc, alone, distilled), strict=True):
                acc[key].append(value)
            print(
                f"[seed {seed}] teacher {teacher_acc:.4f}  student alone {alone:.4f}  distilled {distilled:.4f}",
                flush=True,
            )

    subset = f", train subset {args.subset}" if args.subset else ""
    print(
        f"\ndigits (16x16), {args.epochs} epochs, seeds {args.seeds}, T={args.temperature:g}, alpha={args.alpha:g}"
        f"{subset}; {time.perf_counter() - t0:.0f}s in all\n"
    )
    print("| model | params | test acc (%) |")
    print("|---|---|---|")
    from imgcls.models import create_model

    for key, name in (("teacher", args.teacher), ("student alone", args.student), ("student distilled", args.student)):
        n = sum(q.numel() for q in create_model(name, num_classes=10, in_chans=1).parameters())
        print(f"| {key} ({name}) | {n:,} | {_fmt(acc[key])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
