"""Data pipeline throughput: ``data.loader=device`` (uint8 tensor + batch ops) vs ``data.loader=torch`` (DataLoader).

Measures images/s of (1) the data pipeline alone and (2) end-to-end training steps (fetch, forward, cross-entropy,
backward, SGD step) of a small CNN (``simple_cnn``), on CIFAR-10 decoded from
``../shared/data/cifar10_jpg.tar.gz``, with the same augmentation in both paths: random crop (padding 4, reflect),
horizontal flip, normalisation. Loaders come from :func:`imgcls.data.build.build_loaders`, i.e. the code training
uses. The first batches (worker start-up, allocator warm-up) are excluded from the timings, and the paths alternate
in rounds so both see the same background load (a conservative set-up for the device path: the torch path's workers
prefetch a few batches while the device path is measured).

On a shared, oversubscribed CPU machine, OpenMP's default spin-waiting makes every multi-threaded op (data and model
alike) many times slower and the figures meaningless; run with ``OMP_WAIT_POLICY=PASSIVE`` there (it applies to both
paths and to the DataLoader workers).

    python benchmarks/loader.py [--archive PATH] [--workers 2] [--batch-size 128] [--pipeline-images 7680]
                                [--train-steps 18] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from imgcls.config import Config
from imgcls.data.build import build_loaders
from imgcls.data.datasets import DatasetNotFoundError, imagefolder_archive, make_splits
from imgcls.data.loaders import PreprocessInfo, set_epoch

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpg.tar.gz"
WARMUP_BATCHES = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(loader: str, *, batch_size: int, workers: int) -> Config:
    cfg = Config()
    cfg.data.loader = loader  # type: ignore[assignment]
    cfg.data.batch_size = batch_size
    cfg.data.num_workers = workers if loader == "torch" else 0
    aug = cfg.augmentation.train
    aug.random_crop, aug.crop_padding, aug.hflip = True, 4, 0.5
    return cfg


class Batches:
    """An endless iterator over a loader's batches (re-iterates at the end of an epoch), so rounds can alternate."""

    def __init__(self, loader: object) -> None:
        self.loader, self.epoch = loader, 0
        self.it = iter(loader)  # type: ignore[call-overload]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            set_epoch(self.loader, self.epoch)
            self.it = iter(self.loader)  # type: ignore[call-overload]
            return next(self.it)


def pipeline_rate(batches: Batches, n_images: int, device: torch.device) -> float:
    """Images/s of pulling ``n_images`` from the loader onto ``device``."""
    _sync(device)
    seen = 0
    t0 = time.perf_counter()
    while seen < n_images:
        x, _ = batches.next()
        x = x.to(device, non_blocking=True)
        seen += x.shape[0]
    _sync(device)
    return seen / (time.perf_counter() - t0)


def train_step_times(
    batches: Batches, steps: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> list[float]:
    """Wall seconds of each of ``steps`` SGD steps (fetching the batch included)."""
    model.train()
    times = []
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = batches.next()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        now = time.perf_counter()
        times.append(now - t0)
        t0 = now
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torch path")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--pipeline-images", type=int, default=7680, help="images per path for the pipeline-only figure"
    )
    parser.add_argument("--train-steps", type=int, default=18, help="timed training steps per path")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds per path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if not args.archive.is_file():
        print(f"skipped: {args.archive} not found (CIFAR-10 as train/<class>/*.jpg in a .tar.gz)")
        return 0
    try:
        raw = imagefolder_archive(args.archive)  # cached as .npz after the first (slow) decode
    except DatasetNotFoundError as e:
        print(f"skipped: {e}")
        return 0
    device = torch.device(args.device)
    splits = make_splits(
        raw, val_fraction=0.0, test_fraction=0.0, seed=0, mean=[0.4913, 0.4821, 0.4465], std=[0.2452, 0.2428, 0.2606]
    )
    preprocess = PreprocessInfo(image_size=32, in_chans=3, mean=splits.mean, std=splits.std, resize=False)
    print(
        f"CIFAR-10 train: {len(splits.train)} images 32x32; batch {args.batch_size}; crop(pad 4, reflect) + hflip "
        f"+ normalise; device {device}; torch threads {torch.get_num_threads()}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    from imgcls.models import create_model

    paths: dict[str, dict] = {}
    for kind in ("torch", "device"):
        cfg = _config(kind, batch_size=args.batch_size, workers=args.workers)
        t0 = time.perf_counter()
        loaders = build_loaders(cfg, splits, preprocess, device=device)
        build_s = time.perf_counter() - t0
        set_epoch(loaders.train, 0)
        batches = Batches(loaders.train)
        torch.manual_seed(0)
        model = create_model("simple_cnn", num_classes=splits.num_classes, in_chans=3).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        train_step_times(batches, WARMUP_BATCHES, model, optimizer, device)  # worker start-up, allocator warm-up
        label = f"torch ({args.workers} workers)" if kind == "torch" else "device"
        paths[kind] = dict(
            label=label, build_s=build_s, batches=batches, model=model, optimizer=optimizer, pipe=[], steps=[]
        )
    # The two paths alternate in rounds so that both see the same background load on a shared machine; the pipeline
    # figure is the best round, the training figure uses the median step time (robust to stalls from other jobs).
    for _ in range(args.rounds):
        for p in paths.values():
            p["pipe"].append(pipeline_rate(p["batches"], args.pipeline_images // args.rounds, device))
            p["steps"] += train_step_times(
                p["batches"], max(1, args.train_steps // args.rounds), p["model"], p["optimizer"], device
            )
    rows = {}
    for kind, p in paths.items():
        rows[kind] = (p["label"], p["build_s"], max(p["pipe"]), args.batch_size / statistics.median(p["steps"]))

    print()
    print(f"| {'loader':<20} | {'build s':>8} | {'pipeline img/s':>14} | {'train step img/s':>16} |")
    print(f"| {'-' * 20} | {'-' * 8}:| {'-' * 14}:| {'-' * 16}:|")
    for label, build_s, pipe, train in rows.values():
        print(f"| {label:<20} | {build_s:>8.2f} | {pipe:>14,.0f} | {train:>16,.0f} |")
    pipe_ratio = rows["device"][2] / rows["torch"][2]
    train_ratio = rows["device"][3] / rows["torch"][3]
    print(
        f"\ndevice / torch: pipeline {pipe_ratio:.1f}x, end-to-end training {train_ratio:.2f}x "
        f"(load average at the end {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
