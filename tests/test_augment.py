"""Per-sample augmentations (torchvision v2 pipeline) and batch mixing (CutMix, MixUp, switching)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torchvision.transforms import v2

from imgcls.config import MixConfig, TrainAugConfig
from imgcls.data import CutMix, MixParams, MixSwitch, MixUp, build_mixer, soft_targets
from imgcls.data.transforms import Cutout, FixChannels, build_eval_transform, build_train_transform

SWITCHES: dict[str, dict] = {
    "random_crop": dict(random_crop=True, crop_padding=2),
    "hflip": dict(hflip=1.0),
    "rotation": dict(rotation=30.0),
    "color_jitter": dict(color_jitter=0.5),
    "randaugment": dict(randaugment=True, randaugment_num_ops=3, randaugment_magnitude=15),
    "autoaugment": dict(autoaugment=True),
    "trivialaugment": dict(trivialaugment=True),
    "cutout": dict(cutout=4, cutout_count=2),
    "random_erasing": dict(random_erasing=1.0, random_erasing_scale=[0.1, 0.3]),
}
ALL_ON = {k: v for d in SWITCHES.values() for k, v in d.items()}


def _tf(aug: TrainAugConfig, *, chans: int = 3, size: int = 12, resize: bool = False) -> v2.Compose:
    # mean 0 / std 1: outputs stay in [0, 1] units, so range checks are easy
    return build_train_transform(aug, image_size=size, resize=resize, in_chans=chans, mean=[0.0] * chans,
                                 std=[1.0] * chans)  # fmt: skip


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", list(SWITCHES))
@pytest.mark.parametrize("chans", [1, 3])
def test_each_augmentation_keeps_dtype_shape_range(name: str, chans: int, image: torch.Tensor) -> None:
    torch.manual_seed(1)
    tf = _tf(TrainAugConfig(**SWITCHES[name]), chans=chans)
    for _ in range(5):
        out = tf(image)
        assert out.dtype == torch.float32
        assert out.shape == (chans, 12, 12)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_augmentations_change_the_image(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    plain = build_eval_transform(image_size=12, resize=False, in_chans=3, mean=[0.0] * 3, std=[1.0] * 3)(image)
    for name, kw in SWITCHES.items():
        tf = _tf(TrainAugConfig(**kw))
        assert any(not torch.equal(tf(image), plain) for _ in range(10)), name


def test_all_switches_with_resize_and_channel_change() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    for chans in (1, 3):
        out = _tf(TrainAugConfig(**ALL_ON), chans=chans, size=16, resize=True)(x)
        assert out.shape == (chans, 16, 16) and out.dtype == torch.float32


def test_enabled_false_disables_everything(image: torch.Tensor) -> None:
    tf = _tf(TrainAugConfig(enabled=False, **ALL_ON))
    plain = build_eval_transform(image_size=12, resize=False, in_chans=3, mean=[0.0] * 3, std=[1.0] * 3)
    for _ in range(5):
        assert torch.equal(tf(image), plain(image))


def test_train_transform_pickles_with_every_switch_on(image: torch.Tensor) -> None:
    tf = _tf(TrainAugConfig(**ALL_ON))
    clone = pickle.loads(pickle.dumps(tf))
    torch.manual_seed(3)
    a = tf(image)
    torch.manual_seed(3)
    b = clone(image)
    assert torch.equal(a, b)  # same ops, same parameters, same draws


def test_hflip_fixed_and_crop_fixed_give_known_outputs(image: torch.Tensor) -> None:
    flipped = _tf(TrainAugConfig(hflip=1.0))(image)
    assert torch.allclose(flipped, image.flip(-1).float() / 255)
    # RandomCrop with padding p draws the top-left corner in [0, 2p]; fixed at (p, p) it is the identity
    padded = v2.functional.pad(image, [2], padding_mode="reflect")
    assert torch.equal(v2.functional.crop(padded, 2, 2, 12, 12), image)
    # reflect: row -1 is row 1 (edge pixel not repeated)
    assert torch.equal(v2.functional.crop(padded, 0, 2, 12, 12)[:, 1], image[:, 1])


def test_cutout_fixed_params() -> None:
    img = torch.full((1, 8, 8), 200, dtype=torch.uint8)
    out = Cutout(4).apply(img, [(4, 4)])
    assert out.dtype == torch.uint8
    assert (out[0, 2:6, 2:6] == 0).all() and (out == 0).sum() == 16
    corner = Cutout(4).apply(img, [(0, 0)])  # clipped at the border, as in the paper
    assert (corner[0, :2, :2] == 0).all() and (corner == 0).sum() == 4
    two = Cutout(2, count=2).apply(img, [(1, 1), (6, 6)])
    assert (two == 0).sum() == 8
    params = Cutout.get_params(8, 8, 3)
    assert len(params) == 3 and all(0 <= y < 8 and 0 <= x < 8 for y, x in params)


def test_fix_channels() -> None:
    gray = torch.randint(0, 256, (1, 4, 4), dtype=torch.uint8)
    assert torch.equal(FixChannels(3)(gray), gray.expand(3, 4, 4))
    rgb = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    assert FixChannels(1)(rgb).shape == (1, 4, 4)
    with pytest.raises(ValueError):
        FixChannels(3)(torch.zeros(2, 4, 4))


# --------------------------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------------------------


def _batch(b: int = 4, k: int = 5, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    # image i is constant i + 1, so every pixel says where it came from
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, size, size).clone()
    return images, torch.arange(b) % k


def test_cutmix_fixed_box_gives_known_output() -> None:
    images, labels = _batch()
    cm = CutMix(1.0, num_classes=5)
    out, targets = cm.apply(images, labels, MixParams("cutmix", 0.75, (0, 4, 0, 4)))
    assert out.shape == images.shape and out.dtype == images.dtype
    for i in range(4):
        partner = (i - 1) % 4 + 1  # roll(1): image i pastes from image i - 1
        assert (out[i, :, :4, :4] == partner).all()
        assert (out[i, :, 4:, :] == i + 1).all() and (out[i, :, :, 4:] == i + 1).all()
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert targets[1, 1] == pytest.approx(0.75) and targets[1, 0] == pytest.approx(0.25)


def test_cutmix_lambda_equals_kept_area_fraction() -> None:
    torch.manual_seed(0)
    images, labels = _batch(size=10)
    cm = CutMix(1.0, num_classes=5)
    for _ in range(200):
        params = cm.get_params(10, 10)
        y0, y1, x0, x1 = params.box
        assert 0 <= y0 <= y1 <= 10 and 0 <= x0 <= x1 <= 10
        out, targets = cm.apply(images, labels, params)
        kept = (out[1] == images[1]).float().mean().item()  # pixels that still belong to image 1
        assert params.lam == pytest.approx(kept)
        assert targets[1, labels[1]] == pytest.approx(kept)
        assert targets[1, labels[0]] == pytest.approx(1 - kept)


def test_cutmix_box_clipping_corrects_lambda() -> None:
    box, kept = CutMix.box_for(0.75, 10, 10, 0.0, 0.0)  # a 5x5 box centred on the corner: only 3x3 inside
    assert box == (0, 3, 0, 3)
    assert kept == pytest.approx(1 - 9 / 100)


def test_mixup_targets_are_convex_combinations() -> None:
    torch.manual_seed(0)
    images, labels = _batch(k=5)
    mu = MixUp(0.4, num_classes=5)
    params = mu.get_params()
    assert params.kind == "mixup" and 0.0 <= params.lam <= 1.0
    fixed = MixParams("mixup", 0.3)
    out, targets = mu.apply(images, labels, fixed)
    a, b = soft_targets(labels, 5), soft_targets(labels.roll(1), 5)
    assert torch.allclose(targets, 0.3 * a + 0.7 * b)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert torch.allclose(out, 0.3 * images + 0.7 * images.roll(1, 0))


def test_mixing_accepts_soft_labels() -> None:
    images, _ = _batch()
    soft = torch.softmax(torch.randn(4, 5), 1)
    out, targets = MixUp(1.0, num_classes=5).apply(images, soft, MixParams("mixup", 0.6))
    assert torch.allclose(targets, 0.6 * soft + 0.4 * soft.roll(1, 0))
    _, targets = CutMix(1.0, num_classes=5).apply(images, soft, MixParams("cutmix", 0.5, (0, 4, 0, 8)))
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_mixup_needs_float_images_and_shapes_are_checked() -> None:
    labels = torch.arange(2)
    with pytest.raises(TypeError, match="floating-point"):
        MixUp(1.0, num_classes=2).apply(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), labels, MixParams("mixup", 0.5))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        CutMix(1.0, num_classes=2)(torch.zeros(1, 4, 4), labels)
    with pytest.raises(ValueError):
        soft_targets(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError):
        CutMix(0.0, num_classes=2)


def test_prob_and_switch() -> None:
    torch.manual_seed(0)
    images, labels = _batch()
    assert MixUp(1.0, prob=0.0, num_classes=5).get_params().kind == "none"
    out, targets = CutMix(1.0, prob=0.0, num_classes=5)(images, labels)
    assert torch.equal(out, images) and torch.equal(targets, soft_targets(labels, 5))
    cm, mu = CutMix(1.0, num_classes=5), MixUp(1.0, num_classes=5)
    assert all(MixSwitch(cm, mu, switch_prob=1.0).get_params(8, 8).kind == "cutmix" for _ in range(20))
    assert all(MixSwitch(cm, mu, switch_prob=0.0).get_params(8, 8).kind == "mixup" for _ in range(20))
    kinds = [MixSwitch(cm, mu, switch_prob=0.5, prob=0.5).get_params(8, 8).kind for _ in range(2000)]
    assert 0.45 < kinds.count("none") / 2000 < 0.55
    assert 0.2 < kinds.count("cutmix") / 2000 < 0.3
    out, targets = MixSwitch(cm, mu)(images, labels)
    assert out.shape == images.shape and targets.shape == (4, 5)


def test_build_mixer_and_pickling() -> None:
    assert build_mixer(MixConfig(), 10) is None
    assert isinstance(build_mixer(MixConfig(cutmix_alpha=1.0), 10), CutMix)
    assert isinstance(build_mixer(MixConfig(mixup_alpha=0.2), 10), MixUp)
    both = build_mixer(MixConfig(cutmix_alpha=1.0, mixup_alpha=0.2, switch_prob=0.3, prob=0.8), 10)
    assert isinstance(both, MixSwitch) and both.switch_prob == 0.3 and both.prob == 0.8
    clone = pickle.loads(pickle.dumps(both))
    assert repr(clone) == repr(both)
    assert dataclasses.is_dataclass(MixParams("none", 1.0))
