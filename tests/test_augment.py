"""Per-sample augmentations (torchvision v2 pipeline) and batch mixing (CutMix, MixUp, switching)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torchvision.transforms import v2

from imgcls.config import ConfigError, MixConfig, TrainAugConfig
from imgcls.data import CutMix, MixParams, MixSwitch, MixUp, build_mixer, soft_targets, transforms
from imgcls.data.transforms import (
    AUGMENTATIONS,
    STAGES,
    Cutout,
    FixChannels,
    augmentations_for,
    build_eval_transform,
    build_train_transform,
    register_augmentation,
)
from imgcls.registry import Registry

#: every registered augmentation -> the augmentation.train values that switch it on
SWITCHES: dict[str, dict] = {name: dict(AUGMENTATIONS.meta(name)["example"]) for name in AUGMENTATIONS.ordered()}
TORCH_PATH = [name for name in SWITCHES if AUGMENTATIONS.meta(name)["torch"]]
ALL_ON = {k: v for name in TORCH_PATH for k, v in SWITCHES[name].items()}  # everything the per-sample pipeline does


def _tf(aug: TrainAugConfig, *, chans: int = 3, size: int = 12, resize: bool = False) -> v2.Compose:
    # mean 0 / std 1: outputs stay in [0, 1] units, so range checks are easy
    return build_train_transform(
        aug, image_size=size, resize=resize, in_chans=chans, mean=[0.0] * chans, std=[1.0] * chans
    )


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_registered_augmentation_is_well_formed(name: str) -> None:
    meta = AUGMENTATIONS.meta(name)
    assert isinstance(meta["torch"], bool) and isinstance(meta["device"], bool) and meta["stage"] in STAGES
    assert meta["torch"] or meta["device"], "an augmentation no loader can apply"
    assert hasattr(TrainAugConfig(), name) and name in meta["example"]  # the switch is the field named like the entry
    fn = AUGMENTATIONS.get(name)
    assert fn(TrainAugConfig(), image_size=12, in_chans=3) is None, "off by default"
    assert fn(TrainAugConfig(**SWITCHES[name]), image_size=12, in_chans=3) is not None, "the example switches it on"


@pytest.mark.parametrize("name", TORCH_PATH)
@pytest.mark.parametrize("chans", [1, 3])
def test_each_augmentation_keeps_dtype_shape_range(name: str, chans: int, image: torch.Tensor) -> None:
    torch.manual_seed(1)
    tf = _tf(TrainAugConfig(**SWITCHES[name]), chans=chans)
    for _ in range(5):
        out = tf(image)
        assert out.dtype == torch.float32
        assert out.shape == (chans, 12, 12)
        assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", TORCH_PATH)
def test_augmentations_change_the_image(name: str, image: torch.Tensor) -> None:
    torch.manual_seed(0)
    plain = build_eval_transform(image_size=12, resize=False, in_chans=3, mean=[0.0] * 3, std=[1.0] * 3)(image)
    tf = _tf(TrainAugConfig(**SWITCHES[name]))
    assert any(not torch.equal(tf(image), plain) for _ in range(10)), name
    # off (the defaults, or the example with the whole train augmentation disabled): exactly the eval pipeline
    for off in (TrainAugConfig(), TrainAugConfig(enabled=False, **SWITCHES[name])):
        assert torch.equal(_tf(off)(image), plain)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_augmentation_runs_in_its_declared_stage_or_is_refused(name: str) -> None:
    aug = TrainAugConfig(**SWITCHES[name])
    meta = AUGMENTATIONS.meta(name)
    assert [n for n, _ in augmentations_for(aug, image_size=12, in_chans=3)] == [name]
    assert [n for n, _ in augmentations_for(aug, stage=meta["stage"], image_size=12, in_chans=3)] == [name]
    if not meta["torch"]:  # batch-only: the per-sample pipeline refuses it, naming the key and the fix
        with pytest.raises(ConfigError, match=f"augmentation.train.{name}=.*data.loader=device"):
            _tf(aug)
        return
    ops = _tf(aug).transforms
    (op,) = [t for t in ops[1:] if not isinstance(t, v2.ToDtype | v2.Normalize)]  # ops[0]: FixChannels
    normalize_at = next(i for i, t in enumerate(ops) if isinstance(t, v2.Normalize))
    assert (ops.index(op) < normalize_at) == (meta["stage"] == "uint8")


def test_registry_order_reproduces_the_hand_written_pipeline(image: torch.Tensor) -> None:
    """The pipeline as written before the registry (same ops, same order): the same draws give the same images."""
    aug = TrainAugConfig(
        random_crop=True,
        crop_padding=2,
        hflip=0.5,
        rotation=30.0,
        color_jitter=0.5,
        randaugment=True,
        autoaugment=True,
        trivialaugment=True,
        cutout=4,
        cutout_count=2,
        random_erasing=0.7,
    )
    mean, std = [0.3] * 3, [0.2] * 3
    by_hand = v2.Compose(
        [
            FixChannels(3),
            v2.RandomCrop(12, padding=2, padding_mode="reflect"),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomRotation(30.0),
            v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5),
            v2.RandAugment(num_ops=2, magnitude=9),
            v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            v2.TrivialAugmentWide(),
            Cutout(4, 2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
            v2.RandomErasing(p=0.7, scale=(0.02, 0.33), value=0),
        ]
    )
    built = build_train_transform(aug, image_size=12, resize=False, in_chans=3, mean=mean, std=std)
    for seed in range(5):
        torch.manual_seed(seed)
        a = built(image)
        torch.manual_seed(seed)
        assert torch.equal(a, by_hand(image)), seed


def test_register_augmentation_checks_its_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transforms, "AUGMENTATIONS", Registry("augmentation"))
    with pytest.raises(ValueError, match="TrainAugConfig field of the same name"):
        register_augmentation("grayscale", torch=True, device=False, example={"grayscale": 0.5})
    with pytest.raises(ValueError, match="not TrainAugConfig fields"):
        register_augmentation("rotation", torch=True, device=False, example={"rotatoin": 5.0})
    with pytest.raises(ValueError, match="stage"):
        register_augmentation("rotation", torch=True, device=False, example={"rotation": 5.0}, stage="int8")  # type: ignore

    @register_augmentation("rotation", torch=False, device=True, example={"rotation": 5.0})
    def batch_only(aug: TrainAugConfig, *, image_size: int, in_chans: int) -> object:
        return object() if aug.rotation > 0 else None

    with pytest.raises(ConfigError, match=r"data.loader=torch cannot apply augmentation.train.rotation=5.0.*device"):
        _tf(TrainAugConfig(rotation=5.0))
    assert isinstance(_tf(TrainAugConfig()), v2.Compose)


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
