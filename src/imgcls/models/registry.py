"""The model registry: entry points registered by name (``create_model`` in :mod:`imgcls.models.factory` builds them).

This module imports no architecture, so every architecture module can import :func:`register_model` from it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from imgcls.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model entry point under its function name."""
    return MODELS.register()(fn)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern`` (shell-style). ``timm:<name>`` models are not listed."""
    return MODELS.list(pattern)
