"""The model registry and ``create_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from imgcls.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model entry point under its function name."""
    return MODELS.register()(fn)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern`` (shell-style). ``timm:<name>`` models are not listed."""
    return MODELS.list(pattern)


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build model ``name``. ``None`` kwargs are dropped so that unset options mean "the model's default".

    ``timm:<name>`` builds any timm model wrapped in the imgcls interface.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith("timm:"):
        from imgcls.models.timm_models import create_timm_model

        return create_timm_model(name[len("timm:") :], num_classes=num_classes, in_chans=in_chans, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
