"""The factories every command shares: config -> model, checkpoint -> model, checkpoint -> model + split, and the
config check that runs before any work.

Training, evaluation, export, explanation, studies and the server all build their objects here, so a model is built
the same way whether it is trained, reloaded or exported. Data factories (splits, preprocessing, loaders) are one layer
down in :mod:`imgcls.data.build`.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import Config, ConfigError, from_dict, parse_override, set_value, validate_config
from imgcls.data.build import build_splits, data_image_size, drop_bad_files, eval_transform_of
from imgcls.data.datasets import DATASETS, Splits, SplitView
from imgcls.data.loaders import PreprocessInfo
from imgcls.data.samplers import get_class_weights
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.loop import MAX_TTA_VIEWS
from imgcls.engine.losses import LOSSES, check_loss_config
from imgcls.engine.optim import OPTIMIZERS
from imgcls.engine.schedules import SCHEDULES
from imgcls.models import MODELS, create_model
from imgcls.models.pretrained import load_pretrained

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
    """Every check that needs no data: types and ranges (:func:`imgcls.config.validate_config`), registry names, the
    model's keyword arguments and the TTA view count. Raises :class:`ConfigError` before any work."""
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
    model_kwargs(cfg, model_entry(cfg), image_size=None)


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
    if native is None and cfg.model.pretrained:
        return None
    return data_image_size(splits) or 224


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
    """Inverse-frequency class weights of the train split, normalised to mean 1 ("balanced")."""
    return get_class_weights(splits.train.targets, splits.num_classes)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights. Returns (model in eval mode, checkpoint)."""
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
    splits = build_splits(cfg)
    drop_bad_files(splits, max_bad_fraction=cfg.data.max_bad_fraction)  # as training did: the same split, cleaned
    view = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if view is None or len(view) == 0:
        raise ConfigError(f"the dataset has no '{split}' split for this config; try --split val")
    return model, ckpt, view, eval_transform_of(PreprocessInfo(**ckpt["preprocess"]))
