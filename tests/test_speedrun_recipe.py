"""The pieces of the speedrun recipe: airbench's whitening stem and identity init, Lookahead, the linear (triangular)
schedule and the translate-and-mirror TTA views. Each is checked against what it should compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config import ConfigError, OptimizerConfig, SchedulerConfig, build_config
from imgcls.engine.loop import tta_views
from imgcls.engine.optim import Lookahead, build_optimizer
from imgcls.engine.schedules import lr_multiplier
from imgcls.models import create_model


def _correlated_images(n: int = 200, channels: int = 3, size: int = 16) -> torch.Tensor:
    """Smooth (neighbouring pixels correlated) images with unequal channel scales: far from white."""
    g = torch.Generator().manual_seed(0)
    low = torch.randn(n, channels, size // 2, size // 2, generator=g)
    scale = torch.linspace(0.5, 2.0, channels).view(1, -1, 1, 1)
    return F.interpolate(low, size=size, mode="bilinear") * scale + 0.3


@pytest.mark.parametrize("in_chans", [1, 3])
def test_whitening_stem_decorrelates_patches_and_is_frozen(in_chans: int) -> None:
    torch.manual_seed(0)
    model = create_model("airbench_small", num_classes=10, in_chans=in_chans)
    conv = model.stem[0]
    assert conv.weight.shape == (8 * in_chans, in_chans, 2, 2) and conv.weight.requires_grad  # trainable until init
    images = _correlated_images(channels=in_chans)
    model.init_from_data(images)
    assert not conv.weight.requires_grad and conv.bias.requires_grad and torch.all(conv.bias == 0)
    dims = 4 * in_chans
    out = F.conv2d(images, conv.weight[:dims]).permute(0, 2, 3, 1).reshape(-1, dims)
    out = out - out.mean(0)
    cov = out.T @ out / len(out)
    # unit variance (up to the eps added to each eigenvalue) and no correlation between output channels
    torch.testing.assert_close(cov, torch.diag(cov.diag()), atol=1e-4, rtol=0)
    assert cov.diag().min() > 0.9 and cov.diag().max() < 1.0001
    # the second half of the filters are the first half negated (GELU would otherwise drop half of each direction)
    torch.testing.assert_close(conv.weight[dims:], -conv.weight[:dims])
    # the frozen filters do not move in a training step; the rest of the network does
    before = conv.weight.detach().clone()
    opt = build_optimizer(model, OptimizerConfig(lr=0.1))
    assert all(p is not conv.weight for g in opt.param_groups for p in g["params"])
    F.cross_entropy(model(images[:8]), torch.arange(8)).backward()
    opt.step()
    assert torch.equal(conv.weight, before)


def test_whitening_init_rejects_wrong_channels_and_is_a_noop_without_whiten() -> None:
    model = create_model("airbench_small", num_classes=10, in_chans=3)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model.init_from_data(torch.randn(4, 1, 16, 16))
    plain = create_model("airbench_small", num_classes=10, whiten=False)
    before = plain.stem[0].weight.detach().clone()
    plain.init_from_data(torch.randn(4, 3, 16, 16))
    assert torch.equal(plain.stem[0].weight, before) and plain.stem[0].weight.requires_grad
    assert isinstance(plain.stem[1], nn.BatchNorm2d)


def test_dirac_init_passes_the_input_through() -> None:
    model = create_model("airbench_small", num_classes=10)
    conv = model.groups[1].conv1  # 32 -> 128 channels
    x = torch.randn(2, conv.in_channels, 8, 8)
    torch.testing.assert_close(conv(x)[:, : conv.in_channels], x)
    off = create_model("airbench_small", num_classes=10, dirac=False).groups[1].conv1
    assert not torch.allclose(off(x)[:, : off.in_channels], x)


def test_train_initialises_the_whitening_stem_from_the_data(tmp_path) -> None:
    from imgcls.engine.train import train

    cfg = build_config(
        "quickstart",
        [
            "model.name=airbench_small",
            "data.image_size=16",
            "data.subset=200",
            "training.epochs=1",
            f"run.dir={tmp_path}",
            "run.progress=false",
            "run.tracker=none",
            "run.report=false",
        ],
    )
    result = train(cfg)
    weights = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]["stem.0.weight"]
    reference = create_model("airbench_small", num_classes=10, in_chans=1)
    assert weights.shape == reference.stem[0].weight.shape == (8, 1, 2, 2)
    torch.testing.assert_close(weights[4:], -weights[:4])  # set by init_from_data, and frozen since
    assert weights.abs().max() > 5 * reference.stem[0].weight.abs().max()  # 1/sqrt(eigenvalue) scaling, not random


def test_linear_schedule_is_a_triangle_with_warmup() -> None:
    cfg = SchedulerConfig(name="linear", warmup_epochs=2, warmup_lr=0.2, eta_min=0.1)

    def mult(step: int) -> float:
        return lr_multiplier(step, total_steps=100, steps_per_epoch=10, cfg=cfg)

    assert mult(0) == pytest.approx(0.2)
    assert mult(10) == pytest.approx(0.6)  # halfway up the warmup
    assert mult(20) == pytest.approx(1.0)
    assert mult(60) == pytest.approx(1.0 - 0.9 * 0.5)  # halfway down the 80 decay steps
    assert mult(100) == pytest.approx(0.1)


def test_lookahead_moves_slow_weights_every_k_steps() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    opt = build_optimizer(
        model,
        OptimizerConfig(
            name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, lookahead=True, lookahead_k=2, lookahead_alpha=0.5
        ),
    )
    assert isinstance(opt, Lookahead)
    w0 = model.weight.detach().clone()
    grad = torch.tensor([[1.0, -2.0, 0.5]])

    def step() -> None:
        model.weight.grad = grad.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.testing.assert_close(model.weight.detach(), w0 - 0.1 * grad)  # a plain fast step
    step()
    # timm starts the slow weights at the first sync (step k), so the first cycle leaves the fast weights alone
    torch.testing.assert_close(model.weight.detach(), w0 - 0.2 * grad)
    step()
    step()
    # after the next k=2 fast steps the slow weights move halfway to the fast ones, and the model is reset to them
    torch.testing.assert_close(model.weight.detach(), w0 - 0.2 * grad + 0.5 * (-0.2 * grad))
    slow = model.weight.detach().clone()
    step()
    opt.sync_lookahead()  # works after zero_grad(set_to_none=True), unlike timm's own
    torch.testing.assert_close(model.weight.detach(), slow + 0.5 * (-0.1 * grad))
    # state survives a state_dict round trip (exact resume)
    other = build_optimizer(model, OptimizerConfig(lr=0.1, lookahead=True, lookahead_k=2))
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lookahead_step"] == 5
    # a group added later (gradual unfreezing) gets the lookahead settings
    extra = nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "lr": 0.1, "initial_lr": 0.1})
    assert opt.param_groups[-1]["lookahead_k"] == 2 and opt.param_groups[-1]["lookahead_step"] == 0


def test_lookahead_settings_are_validated() -> None:
    from imgcls.config import validate_config

    with pytest.raises(ConfigError, match="lookahead_k"):
        validate_config(build_config(None, ["training.optimizer.lookahead_k=0"]))
    with pytest.raises(ConfigError, match="lookahead_alpha"):
        validate_config(build_config(None, ["training.optimizer.lookahead_alpha=1.5"]))


def test_tta_views_translate_with_reflection_and_mirror() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    views = tta_views(x, 10)
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(-1))
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    down_right = padded[..., 2:7, 2:7]  # crop offset (+1, +1): content moves up-left by one pixel
    assert torch.equal(views[2], down_right) and torch.equal(views[3], down_right.flip(-1))
    assert torch.equal(views[2][..., :4, :4], x[..., 1:, 1:])
    assert torch.equal(views[2][..., 4, :4], x[..., 3, 1:])  # the new bottom row reflects (no wrap-around)
    assert torch.equal(views[4], padded[..., 0:5, 0:5])
    assert [len(tta_views(x, n)) for n in range(1, 11)] == list(range(1, 11))
    with pytest.raises(ValueError, match="between 1 and 10"):
        tta_views(x, 11)


def test_bias_lr_mult_puts_biases_and_norms_in_a_faster_group() -> None:
    model = create_model("airbench_small", num_classes=10, bn_scale=False)
    opt = build_optimizer(model, OptimizerConfig(lr=0.5, weight_decay=0.01, bias_lr_mult=64))
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"head", "backbone", "backbone_bias"}
    bn_shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn_shifts <= {id(p) for p in groups["backbone_bias"]["params"]}
    assert all(p.ndim == 1 for p in groups["backbone_bias"]["params"])
    assert groups["backbone_bias"]["lr"] == groups["backbone_bias"]["initial_lr"] == 32.0
    assert groups["backbone_bias"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.01
    # fixed BatchNorm scales (bn_scale=False) are left out of the optimizer altogether
    bn_scales = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert not bn_scales & {id(p) for g in opt.param_groups for p in g["params"]}
    # without the multiplier the grouping is the usual one
    plain = build_optimizer(model, OptimizerConfig(lr=0.5))
    assert [g["name"] for g in plain.param_groups] == ["head", "backbone", "backbone_no_decay"]


def test_tta_view_count_is_validated_before_any_work(tmp_path) -> None:
    from imgcls.cli import main
    from imgcls.engine.build import check_config

    with pytest.raises(ConfigError, match="run.test_tta"):
        check_config(build_config(None, ["run.test_tta=11"]))
    assert main(["eval", str(tmp_path / "missing.pt"), "--tta", "0"]) == 2
    from imgcls.evaluate.run_eval import run_eval

    with pytest.raises(ConfigError, match="--tta 11"):  # before the (missing) checkpoint is even opened
        run_eval(tmp_path / "missing.pt", tta=11)


def test_airbench_trains_under_compile_and_cpu_bf16_autocast() -> None:
    """Regression: with ``amax`` pooling, inductor's CPU bf16 backward gave NaN gradients (the GPU preset compiles)."""
    torch.manual_seed(0)
    model = create_model("airbench_small", num_classes=10)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    model.init_from_data(x)
    compiled = torch.compile(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(compiled(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.groups[0].conv1.weight.grad.abs().sum() > 0
