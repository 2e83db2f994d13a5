"""CIFAR-10 speedruns: the ``cpu_speedrun`` preset on CPU, the ``speedrun`` preset on one GPU.

Reports test accuracy (with the preset's TTA) as mean ± std over seeds, and training time: the sum of the per-epoch
training seconds from metrics.csv (the loop synchronises the device at the end of each epoch, so on a GPU these are
device-complete times; evaluation and checkpointing are excluded, as the record trainers exclude them). With
``training.compile=true`` the first epoch includes compilation; it is reported separately.

On a GPU the baseline is airbench94 itself (Keller Jordan's record trainer, the PyPI package ``airbench==0.1.8``, MIT)
trained on the same GPU in the same process on the same images (written to its own ``cifar10/{train,test}.pt`` format
in a temporary folder, so it downloads nothing); its time is the one it reports itself (CUDA events, whitening init +
training + TTA evaluation). The ratio imgcls / airbench94 is the target (<= 1.5x). Without the package the comparison
is skipped with the install command.

Data: ../shared/data/cifar10_jpg.tar.gz (skips cleanly when absent).

    python benchmarks/speedrun.py --device cpu --seeds 3           # cpu_speedrun, target >= 85% in <= 10 min
    python benchmarks/speedrun.py --device cuda --seeds 3          # speedrun vs airbench94 on the same GPU (<= 1.5x)
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from imgcls.config import build_config
from imgcls.engine.train import train

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpg.tar.gz"


def cpu_description() -> str:
    """CPU model, threads and whether bf16 runs natively (what decides the speed of the bf16 CPU recipe)."""
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return f"{model}, {torch.get_num_threads()} threads, bf16 {'native' if native else 'emulated'}"


def write_airbench_data(archive: Path, folder: Path) -> None:
    """CIFAR-10 from our archive in airbench's cache format: ``{images: uint8 [N, 32, 32, 3], labels, classes}``."""
    from imgcls.data.datasets import imagefolder_archive

    raw = imagefolder_archive(archive)
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    for name, split in (("train", raw.train), ("test", raw.test)):
        data = {
            "images": split.images.permute(0, 2, 3, 1).contiguous(),
            "labels": split.targets.clone(),
            "classes": list(raw.classes),
        }
        torch.save(data, folder / "cifar10" / f"{name}.pt")


def run_airbench94(archive: Path, seeds: int) -> list[dict[str, float]] | None:
    """airbench94 on this GPU: one warm-up run (cudnn autotuning, as airbench's own script does), then ``seeds`` runs.

    Returns per run its reported accuracy (with its TTA) and seconds, or None when the package is missing.
    """
    import contextlib
    import io
    import os

    try:
        import airbench
    except ImportError:
        print("airbench94 comparison skipped: pip install airbench==0.1.8")
        return None
    runs = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        write_airbench_data(archive, Path(tmp))
        os.chdir(tmp)  # airbench reads ./cifar10/{train,test}.pt
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                airbench.warmup94()
            for run in range(seeds):
                torch.manual_seed(run)
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    airbench.train94(run=run)
                # its last table row: | eval | ... | tta_val_acc | total_time_seconds |
                last = [line for line in out.getvalue().splitlines() if line.startswith("|")][-1]
                cells = [c.strip() for c in last.strip("|").split("|")]
                runs.append({"acc": float(cells[-2]), "seconds": float(cells[-1])})
                print(f"airbench94 run {run}: test acc {runs[-1]['acc']:.4f}, {runs[-1]['seconds']:.2f} s", flush=True)
        finally:
            os.chdir(cwd)
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", default=str(CIFAR))
    p.add_argument("--no-baseline", action="store_true", help="GPU: skip the airbench94 comparison")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides")
    args = p.parse_args()
    if not Path(args.data).is_file():
        print(f"skipped: CIFAR-10 archive not found at {args.data}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device (the GPU speedrun needs one)")
        return 0
    preset = "speedrun" if args.device == "cuda" else "cpu_speedrun"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            cfg = build_config(
                preset,
                [
                    f"data.root={args.data}",
                    f"run.seed={seed}",
                    f"run.device={args.device}",
                    f"run.dir={tmp}",
                    "run.progress=false",
                    "run.tracker=none",
                    *args.overrides,
                ],
            )
            result = train(cfg)
            with (result.run_dir / "metrics.csv").open() as f:
                epochs = list(csv.DictReader(f))
            seconds = [float(r["seconds"]) for r in epochs]
            images = sum(float(r["images_per_s"]) * float(r["seconds"]) for r in epochs)
            rows.append(
                {
                    "seed": seed,
                    "acc": result.test.acc,
                    "train_s": sum(seconds),
                    "first_epoch_s": seconds[0],
                    "img_s": images / sum(seconds),
                    "epochs": len(epochs),
                }
            )
            print(f"seed {seed}: test acc {result.test.acc:.4f}, training {sum(seconds):.1f} s", flush=True)
    accs = [r["acc"] * 100 for r in rows]
    times = [r["train_s"] for r in rows]
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_description()
    print(f"\n{preset} on {device}, {len(rows)} seeds, {rows[0]['epochs']} epochs, torch {torch.__version__}")
    print(f"{'seed':>5}{'test acc %':>12}{'train s':>10}{'epoch 1 s':>11}{'img/s':>8}")
    for r in rows:
        print(
            f"{r['seed']:>5}{r['acc'] * 100:>12.2f}{r['train_s']:>10.1f}{r['first_epoch_s']:>11.1f}{r['img_s']:>8.0f}"
        )
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    mean_acc, mean_s = statistics.mean(accs), statistics.mean(times)
    print(f"mean test accuracy {mean_acc:.2f} ± {std:.2f} %, mean training time {mean_s:.1f} s")
    if args.device == "cuda" and not args.no_baseline:
        ref = run_airbench94(Path(args.data), args.seeds)
        if ref:
            ref_acc = statistics.mean(r["acc"] for r in ref) * 100
            ref_s = statistics.mean(r["seconds"] for r in ref)
            print(f"\n{'trainer':<12}{'test acc %':>12}{'seconds':>10}")
            print(f"{'airbench94':<12}{ref_acc:>12.2f}{ref_s:>10.2f}")
            print(f"{'imgcls':<12}{mean_acc:>12.2f}{mean_s:>10.2f}")
            print(f"ratio imgcls / airbench94: {mean_s / ref_s:.2f}x time (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
