"""A plain baseline CNN: a few conv-BN-act blocks with max-pooling, then global average pooling and a linear head."""

from __future__ import annotations

import torch
from torch import nn

from imgcls.models.base import ImageClassifier
from imgcls.models.layers import get_activation
from imgcls.models.registry import register_model


class SimpleCNN(ImageClassifier):
    """``len(widths)`` stages of two 3x3 convs each; every stage but the last halves the resolution.

    Args:
        num_classes: output classes.
        in_chans: input channels.
        widths: channels per stage.
        activation: activation name.
        dropout_rate: dropout before the head.
    """

    cam_layer = "stages.2"

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128),
        activation: str = "relu",
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, widths[-1]
        stages = []
        prev = in_chans
        for i, w in enumerate(widths):
            layers: list[nn.Module] = []
            for j in range(2):
                layers += [nn.Conv2d(prev if j == 0 else w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)]
                layers.append(get_activation(activation))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.cam_layer = f"stages.{len(widths) - 1}"
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def stage_groups(self) -> list[nn.Module]:
        return list(self.stages)


@register_model
def simple_cnn(image_size: int | None = None, **kwargs) -> SimpleCNN:
    """Three-stage baseline CNN (about 0.29M parameters). Any input size works (global pooling)."""
    return SimpleCNN(**kwargs)


@register_model
def simple_cnn_tiny(image_size: int | None = None, **kwargs) -> SimpleCNN:
    """Two narrow stages: for tests and smoke runs."""
    return SimpleCNN(widths=(8, 16), **kwargs)
