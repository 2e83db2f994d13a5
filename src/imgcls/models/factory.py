"""``create_model``: build a registered model or any timm model (``timm:<name>``) by name.

It sits above both the registry and the timm wrapper, so neither has to import the other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from imgcls.models.registry import MODELS
from imgcls.models.timm_models import create_timm_model

TIMM_PREFIX = "timm:"


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build model ``name``. ``None`` kwargs are dropped so that unset options mean "the model's default".

    ``timm:<name>`` builds any timm model wrapped in the imgcls interface.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name[len(TIMM_PREFIX) :], num_classes=num_classes, in_chans=in_chans, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
