"""The interface every imgcls model shares (the timm contract).

``forward(x) == forward_head(forward_features(x))``; ``forward_head(f, pre_logits=True)`` returns the pooled
penultimate features used for embeddings and linear probes. ``stage_groups()`` lists the modules that freezing and
gradual unfreezing work on, in input-to-output order (the head is never part of it). ``data_cfg`` describes the
input the model expects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """Base class: subclasses build ``self.head`` (see :meth:`reset_classifier`) and implement the abstract parts."""

    num_classes: int
    num_features: int
    in_chans: int = 3
    #: name of the module Grad-CAM should look at by default (a conv layer late in the network)
    cam_layer: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.data_cfg: dict[str, Any] = {
            "input_size": (3, 32, 32),
            "mean": None,
            "std": None,
            "interpolation": "bilinear",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features: [B, C, H, W] for CNNs, [B, tokens, dim] for transformers."""
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global pooling of ``forward_features`` output to [B, num_features]."""
        if features.ndim == 4:
            return features.mean(dim=(2, 3))
        return features

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(features)
        if pre_logits:
            return pooled
        return self.head(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised linear layer with ``num_classes`` outputs (0: identity)."""
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes).to(device) if num_classes > 0 else nn.Identity()

    def stage_groups(self) -> list[nn.Module]:
        """Backbone modules in order (stem first) for freeze_layers / gradual unfreezing."""
        raise NotImplementedError
