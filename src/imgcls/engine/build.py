"""The factories every command shares: config -> model, checkpoint -> model, checkpoint -> model + split, and the
config check that runs before any work.

Training, evaluation, export, explanation, studies and the server all build their objects here, so a model is built
the same way whether it is trained, reloaded or exported. Data factories (splits, preprocessing, loaders) are one layer
down in :mod:`imgcls.data.build`.
"""

from __future__ import annotations

import copy
import inspect
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import (
    Config,
    ConfigError,
    build_config,
    check_image_side,
    from_dict,
    parse_override,
    set_value,
    to_dict,
    validate_config,
)
from imgcls.data.build import build_splits, data_image_size, drop_bad_files, eval_transform_of
from imgcls.data.datasets import DATASETS, Splits, SplitView, load_dataset
from imgcls.data.loaders import PreprocessInfo
from imgcls.data.samplers import get_class_weights, positive_weights
from imgcls.engine.checkpoint import CheckpointError, load_checkpoint
from imgcls.engine.loop import MAX_TTA_VIEWS
from imgcls.engine.losses import LOSSES, check_loss_config, check_loss_values
from imgcls.engine.model_registry import is_model_uri
from imgcls.engine.optim import OPTIMIZERS
from imgcls.engine.schedules import SCHEDULES
from imgcls.engine.tracking import check_tracker
from imgcls.models import MODELS, create_model
from imgcls.models.imagenet import NUM_CLASSES as IMAGENET_CLASSES
from imgcls.models.imagenet import imagenet_classes, imagenet_indices
from imgcls.models.pretrained import PretrainedWeightsError, check_weights_available, load_pretrained

#: config keys whose value names a registry entry, checked by :func:`check_config`
REGISTRY_KEYS: dict[str, Any] = {
    "data.name": DATASETS,
    "model.name": MODELS,
    "training.optimizer.name": OPTIMIZERS,
    "training.scheduler.name": SCHEDULES,
    "training.loss.name": LOSSES,
}


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def check_config(cfg: Config) -> None:
    """Every check that needs no data, before any work: types, ranges and the rules between fields
    (:func:`imgcls.config.validate_config`), registry names, the loss's and the model's options, the TTA view count,
    the device, the tracker's package, and what the model itself knows (:func:`check_model_config`: freeze depth,
    smallest input, pretrained weights). The paths a run reads and writes are checked when it starts
    (:func:`imgcls.engine.runs.check_run_paths`: a config may name a file that an earlier run will write).

    Raises:
        ConfigError: (or another :class:`~imgcls.config.UserFacingError`) one line naming the key, the bad value and
            what is valid.
    """
    validate_config(cfg)
    for key, registry in REGISTRY_KEYS.items():
        value = _get(cfg, key)
        if key == "model.name" and value.startswith("timm:"):
            continue
        if value not in registry:
            raise ConfigError(f"bad value for '{key}': {registry.unknown_message(value)}")
    if not 1 <= cfg.run.test_tta <= MAX_TTA_VIEWS:
        raise ConfigError(
            f"bad value {cfg.run.test_tta} for 'run.test_tta': must be between 1 (off) and {MAX_TTA_VIEWS}"
        )
    check_loss_config(cfg.training.loss)
    check_loss_values(cfg.training.loss)
    model_kwargs(cfg, model_entry(cfg), image_size=None)
    check_device(cfg.run.device)
    check_tracker(cfg.run.tracker)
    check_model_config(cfg)


def check_device(name: str) -> None:
    """``run.device`` names a device this machine has (``auto`` always does).

    Raises:
        ConfigError: a CUDA device without CUDA (or beyond the GPU count), ``mps`` without Apple's Metal backend.
    """
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            built = "" if torch.version.cuda else f", and this torch {torch.__version__} is built without CUDA"
            have = f"{count} CUDA device(s), cuda:0..cuda:{count - 1}" if count else "no CUDA device"
            raise ConfigError(
                f"bad value {name!r} for 'run.device': this machine has {have}{built}; use run.device=cpu or auto"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("bad value 'mps' for 'run.device': Apple's Metal backend is not available here; use cpu")


def check_model_config(cfg: Config) -> None:
    """What only the model knows, asked of a copy built on the meta device (shapes without memory or weights, a few
    ms for small models): ``model.freeze_layers`` at most its stage-group count, ``data.image_size`` (when set) at
    least its smallest input, and the ``model.pretrained`` weights obtainable
    (:func:`~imgcls.models.pretrained.check_weights_available`).

    Raises:
        ConfigError: the model cannot be built with the configured options, or the values above do not fit it.
        PretrainedWeightsError, NoInternetError: the weights cannot be had.
    """
    side = cfg.data.image_size
    model = check_input_side(cfg, side)
    groups = len(model.stage_groups())
    if cfg.model.freeze_layers > groups:
        raise ConfigError(
            f"bad value {cfg.model.freeze_layers} for 'model.freeze_layers': model '{cfg.model.name}' has {groups} "
            f"stage groups, so use 0..{groups} (or model.freeze_backbone=true to freeze them all)"
        )
    if cfg.model.pretrained is True and getattr(model, "pretrained_source", None) is None and side is None:
        # which weights exist may depend on the input size (a ResNet's stem), unknown until the data is loaded
        if getattr(_model_for_checks(cfg, 224), "pretrained_source", None) is not None:
            return
    check_weights_available(model, cfg.model.pretrained)


def check_input_side(cfg: Config, side: int | None) -> nn.Module:
    """The configured model, built for checks (:func:`_model_for_checks`) for ``side`` x ``side`` inputs (None: its
    default), after a forward pass of such a batch on the meta device.

    Raises:
        ConfigError: the model cannot be built, or cannot take that input (naming the smallest side above it that it
            takes).
    """
    try:
        model = _model_for_checks(cfg, side)
    except ConfigError as e:
        smallest = None if side is None else _smallest_side(cfg, side)
        if smallest is None:
            raise
        raise ConfigError(f"{e}; the smallest data.image_size above {side} that it takes is {smallest}") from e
    if side is not None and _on_meta(model):
        reason = _forward_error(model, side, cfg.data.in_chans or 3)
        smallest = None if reason is None else _smallest_side(cfg, side)
        if smallest is not None:
            raise ConfigError(
                f"bad value {side} for 'data.image_size': model '{cfg.model.name}' cannot take {side}x{side} inputs "
                f"({reason}); the smallest side above {side} that it takes is {smallest}"
            )
    return model


def _model_options(cfg: Config) -> str:
    m = cfg.model
    options = {
        "model.activation": m.activation,
        "model.dropout_rate": m.dropout_rate,
        "model.drop_path_rate": m.drop_path_rate,
        "model.stem": m.stem,
        "data.image_size": cfg.data.image_size,
        "data.in_chans": cfg.data.in_chans,
        **{f"model.kwargs.{k}": v for k, v in m.kwargs.items()},
    }
    return ", ".join(f"{k}={v}" for k, v in options.items() if v is not None) or "its defaults"


def _build_on(device: str, cfg: Config, image_size: int | None) -> nn.Module:
    kwargs = model_kwargs(cfg, model_entry(cfg), image_size)
    with torch.device(device):
        return create_model(cfg.model.name, num_classes=2, in_chans=cfg.data.in_chans or 3, **kwargs)


def _model_for_checks(cfg: Config, image_size: int | None) -> nn.Module:
    """The configured model without weights: on the meta device, else (init code that reads values, like timm's
    ``linspace(...).item()`` drop-path rates, cannot run there) on the CPU. Raises :class:`ConfigError` when it
    cannot be built at all."""
    try:
        return _build_on("meta", cfg, image_size)
    except Exception:  # whatever failed on meta tensors, the CPU build below tells whether it is real
        pass
    try:
        return _build_on("cpu", cfg, image_size)
    except (ValueError, TypeError, KeyError, RuntimeError, AssertionError, AttributeError) as e:
        reason = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(
            f"model.name={cfg.model.name} cannot be built with {_model_options(cfg)}: {' '.join(reason.split())}"
        ) from e


def _on_meta(model: nn.Module) -> bool:
    return all(p.device.type == "meta" for p in model.parameters())


def _forward_error(model: nn.Module, side: int, in_chans: int) -> str | None:
    """Why a forward pass of a [2, C, side, side] batch fails on ``model`` (meta device), or None when it runs."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(2, in_chans, side, side, device="meta"))
    except Exception as e:  # any failure; the caller only reports it when a larger input runs
        return " ".join(str(e).split())[:200]
    return None


def _smallest_side(cfg: Config, side: int) -> int | None:
    """The smallest input side above ``side`` (up to 64 more) that the model builds and runs at, or a larger one that
    does; None when none does (then the failure is not about the input size)."""

    def fits(s: int) -> bool:
        try:
            model = _build_on("meta", cfg, s)
        except Exception:  # a model that cannot be built at this size does not fit it
            return False
        return _forward_error(model, s, cfg.data.in_chans or 3) is None

    big = max(4 * side, 64)
    if not fits(big):
        return None
    return next((s for s in range(side + 1, min(big, side + 65)) if fits(s)), big)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def model_entry(cfg: Config) -> Callable[..., nn.Module] | None:
    """The registered entry point of ``model.name`` (None for ``timm:<name>``, which takes what timm takes)."""
    return None if cfg.model.name.startswith("timm:") else MODELS.get(cfg.model.name)


def model_kwargs(cfg: Config, entry: Callable[..., Any] | None, image_size: int | None) -> dict[str, Any]:
    """Config -> keyword arguments for a model entry point (None = its default).

    Raises:
        ConfigError: a set option (``model.activation``, ``model.kwargs.x`` ...) that the entry point does not take.
    """
    wanted: dict[str, Any] = {
        "activation": cfg.model.activation,
        "dropout_rate": cfg.model.dropout_rate,
        "drop_path_rate": cfg.model.drop_path_rate,
        "stem": cfg.model.stem,
        "image_size": image_size,
        **cfg.model.kwargs,
    }
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if entry is None:
        return wanted
    params = inspect.signature(entry).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    unsupported = [k for k in wanted if k not in params and k != "image_size"]
    if unsupported:
        keys = ", ".join(
            k if k in ("activation", "dropout_rate", "drop_path_rate", "stem") else f"kwargs.{k}" for k in unsupported
        )
        takes = ", ".join(p for p in params if p not in ("num_classes", "in_chans", "image_size", "pretrained"))
        raise ConfigError(f"model '{cfg.model.name}' does not take model.{keys}; it takes: {takes or 'nothing'}")
    return {k: v for k, v in wanted.items() if k in params}


def build_model_for(cfg: Config, num_classes: int, in_chans: int, image_size: int | None) -> nn.Module:
    """Create the configured model and load pretrained weights if asked."""
    entry = model_entry(cfg)
    kwargs = model_kwargs(cfg, entry, image_size)
    pretrained = cfg.model.pretrained
    builtin_pretrained = (
        pretrained is True and entry is not None and "pretrained" in inspect.signature(entry).parameters
    )
    if pretrained is True and (entry is None or builtin_pretrained):
        kwargs["pretrained"] = True  # the entry point (timm / efficientnet_lite) loads its own published weights
    model = create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained and "pretrained" not in kwargs:
        load_pretrained(model, pretrained)
    return model


def model_size_hint(cfg: Config, splits: Splits) -> int | None:
    """The input size a model is built for: explicit, else the data's own size; for image files of different sizes
    their typical size (:func:`imgcls.data.build.data_image_size`, 224 px when unknown) unless pretrained weights
    bring their own size (:func:`imgcls.data.build.resolve_preprocess` then reads it)."""
    if cfg.data.image_size:
        return cfg.data.image_size
    native = splits.train.source.image_size
    if native:
        check_native_side(cfg, int(native[0]))
        return int(native[0])
    if cfg.model.pretrained:
        return None
    return data_image_size(splits) or 224


def check_native_side(cfg: Config, side: int) -> None:
    """With ``data.image_size`` unset, the data's own image side (known once it is loaded) must suit the augmentations
    and the model, as a set ``data.image_size`` is checked before any work (:func:`check_config`).

    Raises:
        ConfigError: before the run folder exists, saying that the data's own size was used and what to set.
    """
    trial = copy.deepcopy(cfg)
    trial.data.image_size = side
    try:
        check_image_side(trial)
        check_input_side(trial, side)
    except ConfigError as e:
        raise ConfigError(
            f"data.image_size is unset, so {cfg.data.name}'s own {side}x{side} images are used: {e}"
        ) from e


def data_init_sample(
    splits: Splits,
    eval_transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_images: int = 5000,
    max_files: int = 1000,
) -> torch.Tensor:
    """The first training images, preprocessed as for evaluation (no augmentation): float [N, C, S, S].

    Used by data-dependent initialisation (``model.init_from_data``, e.g. airbench's whitening stem). Taken from the
    split itself rather than the train loader, so it is the same on every DDP rank and consumes no random numbers.
    File datasets are decoded per image, so fewer of them are used.
    """
    view = splits.train
    if view.in_memory:  # gather only the first rows, not a copy of the whole split; v2 ops work on a batch
        return eval_transform(SplitView(view.source, view.indices[:max_images]).images())
    return torch.stack([eval_transform(view.get(i)[0]) for i in range(min(max_files, len(view)))])


def class_weights_for(splits: Splits) -> torch.Tensor:
    """``training.loss.class_weights=balanced``: inverse-frequency class weights of the train split, normalised to
    mean 1; for multi-label data the positive-class weights of each label (:func:`positive_weights`)."""
    if splits.multilabel:
        return positive_weights(splits.train.targets)
    return get_class_weights(splits.train.targets, splits.num_classes)


def is_model_name(text: str | Path) -> bool:
    """``text`` names a model rather than a file: no such path exists, and it is a registered model or timm:<name>."""
    text = str(text)
    return not Path(text).expanduser().exists() and (text in MODELS or text.startswith("timm:"))


def load_published_model(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model ``name`` with its published ImageNet weights (offline for efficientnet_lite0/1/2), described like a
    checkpoint: the 1000 ImageNet class names shipped with imgcls, the weights' preprocessing (input size, mean, std,
    interpolation), and a config whose data is an ImageFolder (``data.root=...`` for ``imgcls eval``).

    Returns:
        (model in eval mode, checkpoint-like dict: ``config``, ``classes``, ``preprocess``, ``path`` (the name),
        ``weights``, ``dataset``, ``published`` = True; no ``model`` state dict).

    Raises:
        ConfigError: the model publishes no ImageNet weights (or their package is not installed), naming the fix.
        NoInternetError: the weights are online and there is no internet.
    """
    cfg = build_config(None, [f"model.name={name}", "model.pretrained=true", "data.name=imagefolder"])
    try:
        check_config(cfg)
        model = build_model_for(cfg, num_classes=IMAGENET_CLASSES, in_chans=3, image_size=None)
    except PretrainedWeightsError as e:
        raise ConfigError(f"'{name}' is neither a checkpoint nor a run folder, and as a model name: {e}") from e
    data_cfg = model.data_cfg
    preprocess = PreprocessInfo(
        image_size=int(data_cfg["input_size"][-1]),
        in_chans=3,
        mean=[float(m) for m in data_cfg["mean"]],
        std=[float(s) for s in data_cfg["std"]],
        interpolation=str(data_cfg.get("interpolation", "bilinear")),
        resize=True,
    )
    ckpt = {
        "config": to_dict(cfg),
        "classes": imagenet_classes(),
        "preprocess": preprocess.to_dict(),
        "path": name,
        "weights": "imagenet",
        "dataset": "ImageNet-1k",
        "published": True,
    }
    return model.to(device).eval(), ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights. Returns (model in eval mode, checkpoint).

    ``path`` may also be a model name with published ImageNet weights (``efficientnet_lite0``, see
    :func:`load_published_model`)."""
    if is_model_name(path):
        return load_published_model(str(path), device)
    if not is_model_uri(path) and not Path(path).expanduser().exists():
        raise CheckpointError(
            f"checkpoint not found: {path} (a checkpoint file, a run folder, or a model name with published ImageNet "
            "weights such as efficientnet_lite0)"
        )
    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = from_dict(ckpt["config"])
    cfg.model.pretrained = False  # the checkpoint holds the weights; never fetch published ones here
    pre = ckpt["preprocess"]
    model = build_model_for(
        cfg, num_classes=len(ckpt["classes"]), in_chans=pre["in_chans"], image_size=pre["image_size"]
    )
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def load_split(
    checkpoint: str | Path, *, split: str = "test", overrides: Sequence[str] = (), device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], SplitView, Callable[[torch.Tensor], torch.Tensor]]:
    """The model of ``checkpoint`` with the split it was trained with and its eval transform.

    Overrides may only touch ``data.*`` (e.g. a new ``data.root``): the model and preprocessing come from the
    checkpoint.

    Returns:
        (model in eval mode, checkpoint dict, split view, eval transform uint8 image -> model input).
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got '{split}'")
    model, ckpt = load_model(checkpoint, device)
    cfg = from_dict(ckpt["config"])
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("data."):
            raise ConfigError(f"eval only takes data.* overrides (the model comes from the checkpoint), got '{key}'")
        set_value(cfg, key, value)
    if ckpt.get("published"):
        return model, ckpt, imagenet_split(cfg, split), eval_transform_of(PreprocessInfo(**ckpt["preprocess"]))
    splits = build_splits(cfg)
    drop_bad_files(splits, max_bad_fraction=cfg.data.max_bad_fraction)  # as training did: the same split, cleaned
    view = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if view is None or len(view) == 0:
        raise ConfigError(f"the dataset has no '{split}' split for this config; try --split val")
    return model, ckpt, view, eval_transform_of(PreprocessInfo(**ckpt["preprocess"]))


def imagenet_split(cfg: Config, split: str) -> SplitView:
    """The ``split`` folder of ``data.root`` (or, when it has no train/val/test folders, every image in it), labelled
    with ImageNet indices: for a model with published ImageNet weights, whose classes are ImageNet's 1000.

    Raises:
        ConfigError: no data.root, the folder lacks that split, or a class folder is not an ImageNet class
            (:func:`imgcls.models.imagenet.imagenet_indices`).
    """
    if not cfg.data.root:
        raise ConfigError(
            "a model with ImageNet weights is evaluated on your images: give data.root=FOLDER, a folder of ImageNet "
            "class folders (<wnid or class name>/<images>, or train/ val/ test/ holding them)"
        )
    raw = load_dataset(cfg.data.name, root=cfg.data.root, in_chans=3, max_image_pixels=cfg.data.max_image_pixels)
    has_splits = raw.val is not None or raw.test is not None or (Path(cfg.data.root).expanduser() / "train").is_dir()
    source = {"train": raw.train, "val": raw.val, "test": raw.test}[split] if has_splits else raw.train
    if source is None:
        raise ConfigError(f"{cfg.data.root} has no {split}/ folder; try --split train or --split val")
    source = copy.copy(source)  # the same images, labelled by ImageNet index instead of folder order
    source.targets = torch.tensor(imagenet_indices(raw.classes))[source.targets]
    splits = Splits(
        train=SplitView(source, np.arange(len(source))),
        val=None,
        test=None,
        classes=imagenet_classes(),
        in_chans=3,
        mean=[],
        std=[],
        read=raw.read,
    )
    drop_bad_files(splits, max_bad_fraction=cfg.data.max_bad_fraction)
    return splits.train
