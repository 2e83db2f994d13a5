"""Data pipeline: class weights, balanced sampling, long-tail splits, the device loader (and its agreement with the
torch path), corrupt-file handling, mixing schedule and the augment preview."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from imgcls.config import Config, ConfigError, TrainAugConfig
from imgcls.data import BalancedBatchSampler, get_class_weights
from imgcls.data.build import TooManyBadFilesError, build_loaders, choose_loader, data_image_size, drop_bad_files
from imgcls.data.datasets import RawDataset, TensorSource, imagefolder, make_splits
from imgcls.data.device_loader import BatchAugment, BatchAugParams, DeviceLoader, prepare_images
from imgcls.data.loaders import Loaders, PreprocessInfo, set_epoch
from imgcls.data.transforms import AUGMENTATIONS, Cutout, build_eval_transform, build_train_transform

# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _raw(n_per_class: list[int], size: int = 8, chans: int = 3, seed: int = 0) -> RawDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(n_per_class)])
    images = torch.randint(0, 256, (len(labels), chans, size, size), dtype=torch.uint8, generator=g)
    return RawDataset(train=TensorSource(images, labels), classes=[f"c{k}" for k in range(len(n_per_class))])


def _preprocess(size: int = 8, chans: int = 3, resize: bool = False) -> PreprocessInfo:
    return PreprocessInfo(image_size=size, in_chans=chans, mean=[0.5] * chans, std=[0.25] * chans, resize=resize)


def _coded_image(size: int = 8) -> torch.Tensor:
    """Channel 0 encodes the row, channel 1 the column (20 * (index + 1)), so an output pixel says where it came
    from."""
    ar = torch.arange(size, dtype=torch.uint8)
    rows = (20 * (ar + 1)).view(size, 1).expand(size, size)
    cols = (20 * (ar + 1)).view(1, size).expand(size, size)
    return torch.stack([rows, cols, torch.zeros(size, size, dtype=torch.uint8)])


def _decode(out: torch.Tensor, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs in [0, 1] units [N, 3, S, S] -> (row shift, column shift, flipped) per sample.

    Output row i shows source row ``i + dy``; unflipped column j shows ``j + dx``; flipped (crop, then flip) column j
    shows ``S - 1 - j + dx``. The centre pixels never touch the padding for |shift| <= S/2 - 2.
    """
    codes = (out * 255).round().long() // 20 - 1
    c = size // 2
    dy = codes[:, 0, c, c] - c
    step = codes[:, 1, c, c + 1] - codes[:, 1, c, c]
    flipped = step < 0
    dx = torch.where(flipped, codes[:, 1, c, c] - (size - 1 - c), codes[:, 1, c, c] - c)
    return dy, dx, flipped


def _check_uniform_shift_and_flip(dy: torch.Tensor, dx: torch.Tensor, flipped: torch.Tensor, pad: int) -> None:
    n = len(dy)
    for shift in (dy, dx):
        counts = torch.bincount(shift + pad, minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1  # nothing outside [-pad, pad]
        expected = n / (2 * pad + 1)
        assert (counts - expected).abs().max() < 0.25 * expected, counts.tolist()
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


# --------------------------------------------------------------------------------------------------------------------
# Class weights, balanced sampler, long tail
# --------------------------------------------------------------------------------------------------------------------


def test_class_weights_inverse_frequency_mean_one() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    w = get_class_weights(labels)
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert w.mean().item() == pytest.approx(1.0)
    assert (w[1] / w[0]).item() == pytest.approx(2.0) and (w[2] / w[0]).item() == pytest.approx(6.0)
    # numpy, lists, datasets with .targets, Splits, explicit num_classes with an absent class
    assert torch.allclose(get_class_weights(labels.numpy()), w)
    assert torch.allclose(get_class_weights(labels.tolist()), w)
    w4 = get_class_weights(labels, num_classes=4)
    assert w4[3] == 0 and torch.allclose(w4[:3], w)
    splits = make_splits(_raw([60, 30, 10]), val_fraction=0.0, test_fraction=0.0, seed=0)
    assert torch.allclose(get_class_weights(splits), w)
    assert torch.allclose(get_class_weights(splits.train), w)


def test_runner_class_weights_use_get_class_weights() -> None:
    from imgcls.engine.build import class_weights_for

    splits = make_splits(_raw([40, 20, 10]), val_fraction=0.0, test_fraction=0.0, seed=0)
    assert torch.allclose(class_weights_for(splits), get_class_weights(splits.train.targets, 3))


def test_balanced_sampler_batches_are_balanced() -> None:
    labels = np.array([0] * 500 + [1] * 50 + [2] * 10 + [3] * 5)
    sampler = BalancedBatchSampler(labels, batch_size=16, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 16
    for batch in batches:
        assert len(batch) == 16
        counts = np.bincount(labels[batch], minlength=4)
        assert counts.min() == 4 and counts.max() == 4
    # every member of the rare class is used, about equally often
    used = np.bincount(np.concatenate(batches), minlength=len(labels))
    rare = used[labels == 3]
    assert rare.min() >= 1 and rare.max() - rare.min() <= 1
    # batch_size not a multiple of K: counts differ by at most one
    for batch in BalancedBatchSampler(labels, batch_size=10, seed=1):
        counts = np.bincount(labels[batch], minlength=4)
        assert counts.max() - counts.min() <= 1
    # fewer slots than classes: distinct classes
    many = np.arange(100) % 20
    for batch in BalancedBatchSampler(many, batch_size=8):
        assert len(set(many[batch].tolist())) == 8


def test_balanced_sampler_epochs_and_ddp_shards() -> None:
    labels = np.arange(400) % 4
    s = BalancedBatchSampler(labels, batch_size=8, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    assert list(s) == e0  # same (seed, epoch) -> same batches
    s.set_epoch(1)
    assert list(s) != e0
    shards = []
    for rank in range(2):
        r = BalancedBatchSampler(labels, batch_size=8, seed=3, num_replicas=2, rank=rank)
        r.set_epoch(5)
        shards.append(list(r))
    assert len(shards[0]) == len(shards[1]) == 400 // 16
    assert all(a != b for a, b in zip(shards[0], shards[1], strict=True))


def test_long_tail_imbalance_counts() -> None:
    raw = _raw([100] * 5)
    splits = make_splits(raw, val_fraction=0.0, test_fraction=0.0, seed=0, imbalance=0.1)
    counts = torch.bincount(splits.train.targets, minlength=5).tolist()
    expected = [int(round(100 * 0.1 ** (k / 4))) for k in range(5)]
    assert counts == expected == [100, 56, 32, 18, 10]


# --------------------------------------------------------------------------------------------------------------------
# Device loader
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_batch_augment_fixed_params_match_torchvision(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    aug = BatchAugment(image_size=8, crop_padding=3, padding_mode=mode, hflip=0.5)
    top, left = torch.tensor([0, 3, 6, 1, 5, 2]), torch.tensor([6, 3, 0, 4, 2, 5])
    flip = torch.tensor([False, True, False, True, True, False])
    out = aug.apply(images, BatchAugParams(top, left, flip))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(6):
        pad_kw = dict(padding_mode="reflect") if mode == "reflect" else dict(fill=0)
        ref = v2.functional.crop(v2.functional.pad(images[i], [3], **pad_kw), int(top[i]), int(left[i]), 8, 8)
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref), i
    # gathering from a larger tensor by index equals augmenting the selected rows
    idx = torch.tensor([5, 0, 2, 2, 1, 3])
    assert torch.equal(
        aug.apply(images, BatchAugParams(top, left, flip), index=idx),
        aug.apply(images[idx], BatchAugParams(top, left, flip)),
    )


def test_batch_cutout_matches_per_sample_cutout() -> None:
    img = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    aug = BatchAugment(image_size=8, cutout=4, cutout_count=2)
    centres = [(0, 0), (5, 6)]
    params = BatchAugParams(
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.bool),
        torch.tensor([centres]),
    )
    assert torch.equal(aug.apply(img, params)[0], Cutout(4, 2).apply(img[0], centres))


def test_device_and_torch_paths_have_the_same_augmentation_statistics() -> None:
    pad, n = 2, 1500
    img = _coded_image()
    aug_cfg = TrainAugConfig(random_crop=True, crop_padding=pad, hflip=0.5)
    torch.manual_seed(0)
    tf = build_train_transform(aug_cfg, image_size=8, resize=False, in_chans=3, mean=[0.0] * 3, std=[1.0] * 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker: tiny per-sample ops are slow with an intra-op thread pool
    try:
        torch_out = torch.stack([tf(img) for _ in range(n)])
    finally:
        torch.set_num_threads(threads)
    _check_uniform_shift_and_flip(*_decode(torch_out), pad=pad)

    augment = BatchAugment.from_config(aug_cfg, 8)
    assert augment is not None and augment.padding_mode == "reflect"
    loader = DeviceLoader(
        img.expand(n, 3, 8, 8).contiguous(),
        torch.zeros(n, dtype=torch.long),
        batch_size=500,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        augment=augment,
        shuffle=True,
    )
    device_out = torch.cat([x for x, _ in loader])
    assert device_out.shape == (n, 3, 8, 8) and device_out.dtype == torch.float32
    _check_uniform_shift_and_flip(*_decode(device_out), pad=pad)
    # the same set of distinct outputs: 5 x 5 shifts x 2 flips
    assert len({tuple(x.flatten().tolist()) for x in torch_out}) == len(
        {tuple(x.flatten().tolist()) for x in device_out}
    )


def test_device_loader_normalisation_matches_eval_transform() -> None:
    raw = _raw([10, 10], size=6)
    images = raw.train.images
    pre = _preprocess(size=6)
    loader = DeviceLoader(images, raw.train.targets, batch_size=7, mean=pre.mean, std=pre.std)
    eval_tf = build_eval_transform(image_size=6, resize=False, in_chans=3, mean=pre.mean, std=pre.std)
    x, y = next(iter(loader))
    assert torch.allclose(x, torch.stack([eval_tf(im) for im in images[:7]]), atol=1e-5)
    assert torch.equal(y, raw.train.targets[:7])
    assert len(loader) == 3 and sum(len(b) for _, b in loader) == 20  # no drop_last: 7 + 7 + 6


def test_device_loader_resize_and_grayscale_match_torch_path() -> None:
    raw = _raw([6, 6], size=10, chans=1)
    splits = make_splits(raw, val_fraction=0.0, test_fraction=0.0, seed=0)
    prepared = prepare_images(splits.train, image_size=16, resize=True, in_chans=3)
    assert prepared.shape == (12, 1, 16, 16) and prepared.dtype == torch.uint8  # 1 -> 3 happens per batch
    loader = DeviceLoader(prepared, splits.train.targets, batch_size=12, mean=[0.4] * 3, std=[0.2] * 3, in_chans=3)
    x, _ = next(iter(loader))
    eval_tf = build_eval_transform(image_size=16, resize=True, in_chans=3, mean=[0.4] * 3, std=[0.2] * 3)
    ref = torch.stack([eval_tf(splits.train.get(i)[0]) for i in range(12)])
    assert x.shape == (12, 3, 16, 16)
    assert torch.allclose(x, ref, atol=1e-5)


def test_device_loader_epochs_drop_last_and_shards() -> None:
    n = 50
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n)
    kw = dict(batch_size=8, mean=[0.0], std=[1.0 / 255], shuffle=True, drop_last=True, seed=1)
    loader = DeviceLoader(images, labels, **kw)
    assert len(loader) == 6
    set_epoch(loader, 0)
    e0 = [y for _, y in loader]
    assert len(e0) == 6 and all(len(y) == 8 for y in e0)
    for x, y in loader:  # images still match their labels after shuffling
        assert torch.equal(x[:, 0, 0, 0].round().long(), y)
    assert all(torch.equal(a, b) for a, b in zip(e0, [y for _, y in loader], strict=True))
    set_epoch(loader, 1)
    assert not all(torch.equal(a, b) for a, b in zip(e0, [y for _, y in loader], strict=True))
    # DDP: disjoint equal shards for training; rank::world without padding for evaluation
    seen = [torch.cat([y for _, y in DeviceLoader(images, labels, num_replicas=2, rank=r, **kw)]) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 24 and not set(seen[0].tolist()) & set(seen[1].tolist())
    ev = [
        DeviceLoader(images, labels, batch_size=8, mean=[0.0], std=[1.0], num_replicas=3, rank=r, even_shards=False)
        for r in range(3)
    ]
    assert sorted(torch.cat([y for loader in ev for _, y in loader]).tolist()) == list(range(n))


def _cfg(**data: object) -> Config:
    cfg = Config()
    cfg.data.batch_size = 8
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_build_loaders_device_path() -> None:
    splits = make_splits(_raw([30, 30, 30]), val_fraction=0.2, test_fraction=0.2, seed=0)
    cfg = _cfg(loader="device")
    cfg.augmentation.train = TrainAugConfig(random_crop=True, crop_padding=2, hflip=0.5, cutout=3)
    cfg.augmentation.mix.cutmix_alpha = 1.0
    loaders = build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu"))
    assert isinstance(loaders.train, DeviceLoader) and loaders.mix is not None
    set_epoch(loaders.train, 2)
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(loaders.train) == len(splits.train) // 8
    assert sum(len(y) for _, y in loaders.val) == len(splits.val)
    assert sum(len(y) for _, y in loaders.test) == len(splits.test)
    images, targets = loaders.mix(x, y)
    assert targets.shape == (8, 3)
    cfg.data.sampler = "balanced"
    loaders = build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu"))
    _, y = next(iter(loaders.train))
    assert torch.bincount(y, minlength=3).max() - torch.bincount(y, minlength=3).min() <= 1


@pytest.mark.parametrize("name", AUGMENTATIONS.ordered())
def test_device_path_applies_or_rejects_each_augmentation_as_registered(name: str) -> None:
    splits = make_splits(_raw([10, 10]), val_fraction=0.0, test_fraction=0.0, seed=0)
    cfg = _cfg(loader="device")
    for key, value in AUGMENTATIONS.meta(name)["example"].items():
        setattr(cfg.augmentation.train, key, value)
    if not AUGMENTATIONS.meta(name)["device"]:
        with pytest.raises(ConfigError, match=f"augmentation.train.{name}.*data.loader=torch"):
            build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu"))
        cfg.augmentation.train.enabled = False  # switched off as a whole: fine
        build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu"))
        return
    # a batch op: it runs in the device loader and changes the batch (same shuffle as without augmentation)
    augmented = next(iter(build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu")).train))[0]
    cfg.augmentation.train.enabled = False
    plain = next(iter(build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu")).train))[0]
    assert augmented.shape == plain.shape == (8, 3, 8, 8) and augmented.dtype == plain.dtype == torch.float32
    assert not torch.equal(augmented, plain)
    assert BatchAugment.from_config(TrainAugConfig(**AUGMENTATIONS.meta(name)["example"]), 8) is not None


def test_torch_path_balanced_sampler() -> None:
    splits = make_splits(_raw([80, 10]), val_fraction=0.0, test_fraction=0.0, seed=0)
    loaders = build_loaders(_cfg(sampler="balanced"), splits, _preprocess(), device=torch.device("cpu"))
    set_epoch(loaders.train, 0)
    batches = [y for _, y in loaders.train]
    assert len(batches) == 90 // 8
    assert all(torch.equal(torch.bincount(y, minlength=2), torch.tensor([4, 4])) for y in batches)


def test_mixing_off_for_the_last_epochs() -> None:
    mix = object()
    loaders = Loaders(train=[], val=None, test=None, eval_transform=lambda x: x, mix=mix, mix_off_last_epochs=2)  # type: ignore[arg-type]
    assert [loaders.batch_transform_for(e, 5) is mix for e in range(5)] == [True, True, True, False, False]
    always = Loaders(train=[], val=None, test=None, eval_transform=lambda x: x, mix=mix)  # type: ignore[arg-type]
    assert all(always.batch_transform_for(e, 5) is mix for e in range(5))
    cfg = _cfg()
    cfg.augmentation.mix.mixup_alpha = 0.2
    cfg.augmentation.mix.off_last_epochs = 1
    splits = make_splits(_raw([10, 10]), val_fraction=0.0, test_fraction=0.0, seed=0)
    built = build_loaders(cfg, splits, _preprocess(), device=torch.device("cpu"))
    assert built.batch_transform_for(0, 3) is not None and built.batch_transform_for(2, 3) is None


# --------------------------------------------------------------------------------------------------------------------
# Corrupt files
# --------------------------------------------------------------------------------------------------------------------


def _image_folder(root: Path, per_class: int = 10, truncated: int = 1) -> list[Path]:
    rng = np.random.default_rng(0)
    bad = []
    for c in ("ants", "bees"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.jpg", quality=90)
    for i in range(truncated):
        path = root / "bees" / f"{i}.jpg"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # a truncated JPEG: the header parses, the decode fails
        bad.append(path)
    return bad


def test_corrupt_files_are_reported_and_skipped(tmp_path: Path) -> None:
    bad = _image_folder(tmp_path, per_class=30)
    splits = make_splits(imagefolder(str(tmp_path)), val_fraction=0.2, test_fraction=0.2, seed=0)
    n_before = len(splits.train) + len(splits.val) + len(splits.test)
    cfg = _cfg(max_bad_fraction=0.05)
    loaders = build_loaders(cfg, splits, _preprocess(size=12), device=torch.device("cpu"))
    assert [b["file"] for b in loaders.bad_files] == [bad[0].relative_to(tmp_path).as_posix()]  # named from data.root
    assert "truncated" in loaders.bad_files[0]["reason"].lower()
    assert len(splits.train) + len(splits.val) + len(splits.test) == n_before - 1
    for loader in (loaders.train, loaders.val, loaders.test):  # every remaining file decodes
        for x, _ in loader:
            assert x.shape[1:] == (3, 12, 12)


def test_too_many_corrupt_files_stop_the_run(tmp_path: Path) -> None:
    bad = _image_folder(tmp_path, per_class=10, truncated=2)
    splits = make_splits(imagefolder(str(tmp_path)), val_fraction=0.0, test_fraction=0.0, seed=0)
    with pytest.raises(TooManyBadFilesError, match=r"2 of 20 image files \(10.0%\)") as err:
        build_loaders(_cfg(max_bad_fraction=0.01), splits, _preprocess(size=12), device=torch.device("cpu"))
    assert (
        "bees/0.jpg" in str(err.value) and str(tmp_path) in str(err.value) and "data.max_bad_fraction" in str(err.value)
    )
    dropped = drop_bad_files(splits, max_bad_fraction=0.2)
    assert [b.file for b in dropped] == sorted(p.relative_to(tmp_path).as_posix() for p in bad)


def test_auto_loader_picks_what_the_data_supports(tmp_path: Path) -> None:
    """data.loader=auto: the device loader for in-memory data with batch-op augmentations; the DataLoader (and a line
    saying why) for image files or an augmentation without a batch form; an explicit loader is left alone."""
    memory = make_splits(_raw([30, 30, 30]), val_fraction=0.2, test_fraction=0.2, seed=0)
    cfg = _cfg(loader="auto")
    cfg.augmentation.train = TrainAugConfig(random_crop=True, crop_padding=2, hflip=0.5)
    loaders = build_loaders(cfg, memory, _preprocess(), device=torch.device("cpu"))
    assert isinstance(loaders.train, DeviceLoader) and loaders.kind == "device" and loaders.note == ""
    cfg.augmentation.train.rotation = 10.0
    loaders = build_loaders(cfg, memory, _preprocess(), device=torch.device("cpu"))
    assert loaders.kind == "torch" and "augmentation.train.rotation has no batch form" in loaders.note
    assert choose_loader(_cfg(loader="device"), memory, _preprocess()) == ("device", "")
    _image_folder(tmp_path, per_class=3, truncated=0)
    files = make_splits(imagefolder(str(tmp_path)), val_fraction=0.0, test_fraction=0.0, seed=0)
    loaders = build_loaders(_cfg(loader="auto"), files, _preprocess(size=12, resize=True), device=torch.device("cpu"))
    assert loaders.kind == "torch" and "read from image files" in loaders.note


def test_image_size_from_the_data(tmp_path: Path) -> None:
    """Files of different sizes: the median shorter side of the files (from their headers), at most 224 px; in-memory
    data: its own size."""
    for i, (w, h) in enumerate([(40, 30), (50, 36), (64, 48), (300, 400), (1000, 800)]):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.new("RGB", (w, h)).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "a" / "not-an-image.png").write_bytes(b"junk")
    splits = make_splits(imagefolder(str(tmp_path)), val_fraction=0.0, test_fraction=0.0, seed=0)
    assert splits.train.source.typical_size() == 48 and data_image_size(splits) == 48
    big = tmp_path / "big" / "a"
    big.mkdir(parents=True)
    Image.new("RGB", (640, 480)).save(big / "0.png")
    assert data_image_size(make_splits(imagefolder(str(big.parent)), val_fraction=0, test_fraction=0, seed=0)) == 224
    assert data_image_size(make_splits(_raw([4, 4], size=8), val_fraction=0, test_fraction=0, seed=0)) == 8


def test_device_loader_rejects_file_datasets(tmp_path: Path) -> None:
    _image_folder(tmp_path, per_class=3, truncated=0)
    splits = make_splits(imagefolder(str(tmp_path)), val_fraction=0.0, test_fraction=0.0, seed=0)
    with pytest.raises(ConfigError, match="in-memory.*data.loader=torch"):
        build_loaders(_cfg(loader="device"), splits, _preprocess(size=12), device=torch.device("cpu"))


# --------------------------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------------------------


def test_augment_preview_writes_png(tmp_path: Path) -> None:
    from imgcls.cli.preview import add_cli
    from imgcls.config import build_config
    from imgcls.data.preview import augment_preview

    cfg = build_config(
        None,
        [
            "data.name=digits",
            "augmentation.train.hflip=0.5",
            "augmentation.mix.cutmix_alpha=1",
            "augmentation.mix.mixup_alpha=0.4",
            "data.loader=device",
        ],
    )
    out = augment_preview(cfg, tmp_path / "grid.png", n=3)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["augment-preview", "quickstart", "data.subset=50", "--out", "x.png", "--n", "4"])
    assert args.args == ["quickstart", "data.subset=50"] and args.out == "x.png" and args.n == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_loader_on_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    aug = BatchAugment(image_size=8, crop_padding=2, hflip=0.5, cutout=3)
    params = aug.get_params(16, generator=g)
    cuda_params = BatchAugParams(*(t.cuda() for t in (params.top, params.left, params.flip, params.centres)))
    assert torch.equal(aug.apply(images.cuda(), cuda_params).cpu(), aug.apply(images, params))
    loader = DeviceLoader(
        images.cuda(), torch.arange(16), batch_size=8, mean=[0.5] * 3, std=[0.2] * 3, augment=aug, shuffle=True
    )
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and len(loader) == 2
