"""Every registered model honours the imgcls model interface; layers and complexity helpers behave."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from imgcls.models import MODELS, create_model, list_models
from imgcls.models.complexity import count_macs, count_params, model_table
from imgcls.models.layers import DropBlock2D, StochasticDepth, drop_path_rates

# Big models are still built and trained for a step, at 32x32 with batch 2; only the slowest are marked.
SLOW_MODELS = {"resnet152", "resnet101", "cnn_transformer_base"}
TIMM_MODELS = ["timm:resnet10t", "timm:test_vit"]
ALL_MODELS = list_models() + TIMM_MODELS


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in names]


@pytest.mark.parametrize("name", _params(ALL_MODELS))
def test_model_interface(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=3, image_size=32)
    x = torch.randn(2, 3, 32, 32)

    # Train step: finite output, every trainable parameter receives a gradient, an SGD step changes the weights.
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    head_before = model.get_classifier().weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(head_before, model.get_classifier().weight)

    # Eval: deterministic, and forward == forward_head(forward_features).
    model.eval()
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        assert torch.allclose(out, model.forward_head(features), atol=1e-6)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        assert torch.isfinite(out).all()

    # The interface's metadata.
    assert model.num_classes == 7
    assert len(model.data_cfg["input_size"]) == 3
    groups = model.stage_groups()
    assert groups, "stage_groups() must list the backbone"
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    grouped = {id(p) for g in groups for p in g.parameters()}
    assert not grouped & head_ids, "the head must not be in a stage group"
    assert grouped | head_ids == {id(p) for p in model.parameters()}, "stage groups + head must cover every parameter"
    if model.cam_layer:
        assert isinstance(model.get_submodule(model.cam_layer), nn.Module)

    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    assert model.num_classes == 3


# Options the config sets for any model (model.activation, ...); a model that does not declare one must refuse it.
COMMON_OPTIONS = ("activation", "dropout_rate", "drop_path_rate", "stem", "image_size", "pretrained")


@pytest.mark.parametrize("name", _params(list_models()))
def test_entry_point_signature_is_truthful(name: str) -> None:
    """The signature is what the config check reads: it must list exactly the keyword arguments the model takes."""
    entry = MODELS.get(name)
    params = inspect.signature(entry).parameters
    kinds = {p.name: p.kind for p in params.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds.values(), f"{name} swallows **kwargs"
    assert inspect.Parameter.VAR_POSITIONAL not in kinds.values(), f"{name} swallows *args"
    assert {"num_classes", "in_chans", "image_size"} <= set(params)
    assert all(p.default is not inspect.Parameter.empty for p in params.values()), "every option has a default"

    # Every declared option is accepted: build the model tiny with each one passed explicitly.
    torch.manual_seed(0)
    model = entry(**{**{n: p.default for n, p in params.items()}, "num_classes": 3, "in_chans": 3, "image_size": 32})
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)

    # Every other option is refused with a TypeError naming it.
    for option in [*(o for o in COMMON_OPTIONS if o not in params), "not_an_option"]:
        with pytest.raises(TypeError, match=option):
            entry(num_classes=3, **{option: 0.1})


@pytest.mark.parametrize("name", ["vit_micro", "cnn_transformer_small", "vit_tiny"])
def test_attention_maps(name: str) -> None:
    model = create_model(name, num_classes=5, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x).shape[1]
    for layer in (0, -1):
        with torch.no_grad():
            maps = model.get_attention_maps(x, layer)
        assert maps.shape == (2, model.num_heads, tokens, tokens)
        assert torch.allclose(maps.sum(-1), torch.ones(2, model.num_heads, tokens), atol=1e-5)
        assert (maps >= 0).all()
    with pytest.raises(IndexError):
        model.get_attention_maps(x, len(model.blocks))


def test_vit_other_resolution_and_patch_size() -> None:
    model = create_model("vit_micro", num_classes=4, image_size=32).eval()
    assert model.embed.grid == (8, 8)  # patch 4 for small inputs
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 4)  # positional embedding is resized
    assert create_model("vit_micro", image_size=224).embed.grid == (14, 14)  # patch 16 for large inputs


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "swish", "leaky_relu", "mish"])
@pytest.mark.parametrize("name", ["resnet_tiny", "efficientnet_tiny", "vit_micro"])
def test_activations(name: str, activation: str) -> None:
    model = create_model(name, num_classes=3, activation=activation, dropout_rate=0.1, drop_path_rate=0.1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_activation_and_model() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        create_model("resnet_tiny", activation="relu7")
    with pytest.raises(KeyError, match="resnet18"):
        create_model("resnet81")
    with pytest.raises(KeyError, match="unknown timm model"):
        create_model("timm:resnet_does_not_exist")


def test_resnet_stems() -> None:
    assert create_model("resnet18", image_size=32).stem[0].kernel_size == (3, 3)
    big = create_model("resnet18", image_size=224)
    assert big.stem[0].kernel_size == (7, 7) and big.data_cfg["input_size"] == (3, 224, 224)
    assert create_model("resnet18", image_size=224, stem="cifar").stem[0].kernel_size == (3, 3)
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", stem="bogus")


def test_efficientnet_stem_and_scaling() -> None:
    small, large = create_model("efficientnet_b0", image_size=32), create_model("efficientnet_b0", image_size=224)
    assert small.stem[0].stride == (1, 1) and large.stem[0].stride == (2, 2)
    b3 = create_model("efficientnet_b3")
    assert b3.paper_resolution == 300 and b3.num_features == 1536  # 1280 * 1.2, rounded to a multiple of 8
    assert sum(len(s) for s in b3.stages) > sum(len(s) for s in small.stages)  # depth x1.4
    assert count_params(create_model("efficientnet_b0", num_classes=1000))[0] == pytest.approx(5.29e6, rel=0.01)


def test_drop_path_rates_rise_linearly() -> None:
    assert drop_path_rates(0.2, 3) == [0.0, 0.1, 0.2]
    model = create_model("resnet_tiny", drop_path_rate=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    blocks = create_model("resnet18", drop_block_rate=0.1).modules()
    assert sum(isinstance(m, DropBlock2D) for m in blocks) == 4  # the last two stages


def test_stochastic_depth() -> None:
    torch.manual_seed(0)
    layer = StochasticDepth(0.3)
    x = torch.rand(20000, 4) + 0.5
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    dropped = (y == 0).all(dim=1)
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.02)  # whole samples are dropped
    assert torch.allclose(y[~dropped], x[~dropped] / 0.7)  # survivors rescaled
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.02)  # expectation kept


def test_dropblock() -> None:
    torch.manual_seed(0)
    layer = DropBlock2D(drop_prob=0.15, block_size=3)
    x = torch.rand(4, 2, 12, 12) + 0.5
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    y = layer(torch.ones(256, 2, 12, 12))
    assert (y == 0).float().mean().item() == pytest.approx(0.15, abs=0.05)
    assert torch.equal(y[:, 0] == 0, y[:, 1] == 0)  # blocks are shared across channels
    mean = torch.stack([layer(x) for _ in range(400)]).mean(0)
    assert torch.allclose(mean, x, rtol=0.12)  # every activation, border ones too, keeps its expectation


def test_count_params_and_macs() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    conv[0].weight.requires_grad_(False)
    assert count_params(conv) == (3 * 8 * 9 + 128 * 2 + 2, 128 * 2 + 2)
    assert count_macs(conv, (3, 4, 4)) == 3 * 8 * 9 * 16 + 128 * 2
    # attention is counted too: ViT-Tiny at 32 px is 345.6M MACs of linear layers plus 19.5M of attention
    assert count_macs(create_model("vit_tiny"), 32) == pytest.approx(365.1e6, rel=0.001)


def test_model_table() -> None:
    rows = model_table(["resnet_tiny", "vit_micro"], num_classes=10)
    assert [r["name"] for r in rows] == ["resnet_tiny", "vit_micro"]
    assert all(r["params"] == r["trainable_params"] > 0 and r["macs"] > 0 for r in rows)
    frozen = model_table(["resnet_tiny"], freeze_backbone=True)[0]
    assert frozen["trainable_params"] == 128 * 10 + 10  # the head only
    at_64 = model_table(["resnet_tiny"], input_size=64)[0]
    assert at_64["input_size"] == (3, 64, 64) and at_64["macs"] == pytest.approx(4 * rows[0]["macs"], rel=0.01)


# --------------------------------------------------------------------------------------------------------------------
# EfficientNet in eval mode (issue 17: efficientnet_tiny predicted one class after a short CIFAR-10 run)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["efficientnet_tiny", "efficientnet_b0"])
def test_efficientnet_init_gives_every_batchnorm_inputs_of_unit_order(name: str) -> None:
    """BatchNorm's running variance starts at 1; a layer whose inputs start far below it is over-estimated in eval
    mode until ~ln(1/var)/0.1 steps have passed. Depthwise convs initialised by ``kaiming_normal_(mode="fan_out")``
    (which ignores groups) started at 0.001-0.016 in efficientnet_tiny."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, image_size=32).train()
    variances: dict[str, float] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, i, o, n=n: variances.update({n: i[0].var(dim=(0, 2, 3)).mean().item()}))
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))
    low = {n: round(v, 4) for n, v in variances.items() if not 0.1 <= v <= 10}
    assert not low, f"BatchNorm inputs of variance far from 1 at init: {low}"


def test_efficientnet_tiny_does_not_collapse_in_eval_mode_after_a_short_run() -> None:
    """40 AdamW steps on the digits (16 px): eval mode must predict about as well as train mode. Before the fix it
    predicted one class (10%; train mode 95%): the stale running statistics of ~20 BatchNorms in a chain without
    residuals compounded until the features were a constant (their spread across images 0.0007 instead of 0.3)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    x = nn.functional.interpolate(x, size=16, mode="bilinear")
    x, y = (x - x.mean()) / x.std(), torch.tensor(digits.target)
    model = create_model("efficientnet_tiny", num_classes=10, in_chans=1, image_size=16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=0.05)
    for _ in range(40):
        i = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_mode = (model(x[:512]).argmax(1) == y[:512]).float().mean().item()
        pred = model.eval()(x[:512]).argmax(1)
    eval_acc = (pred == y[:512]).float().mean().item()
    assert train_mode > 0.8
    assert len(pred.unique()) == 10 and eval_acc > 0.6, f"eval {eval_acc:.3f} vs train mode {train_mode:.3f}"
