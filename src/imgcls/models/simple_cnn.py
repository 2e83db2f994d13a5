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
def simple_cnn(
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    widths: tuple[int, ...] = (32, 64, 128),
    activation: str = "relu",
    dropout_rate: float = 0.0,
) -> SimpleCNN:
    """Three-stage baseline CNN (about 0.29M parameters). Options: see :class:`SimpleCNN`.

    Any input size works (global pooling), so ``image_size`` is accepted like every model's and not needed.
    """
    del image_size
    return SimpleCNN(
        num_classes=num_classes, in_chans=in_chans, widths=widths, activation=activation, dropout_rate=dropout_rate
    )


@register_model
def simple_cnn_tiny(
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    activation: str = "relu",
    dropout_rate: float = 0.0,
) -> SimpleCNN:
    """Two narrow stages (8-16 channels): for tests and smoke runs. ``image_size`` as for :func:`simple_cnn`."""
    del image_size
    return SimpleCNN(
        num_classes=num_classes, in_chans=in_chans, widths=(8, 16), activation=activation, dropout_rate=dropout_rate
    )
