"""Small models for fast tests and the digits / Fashion-MNIST benchmarks.

Layers are named (``fc1``, ``conv1``, ``head``) so ``state_dict`` keys read as layer names in
per-layer metrics.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from unlearning_core.errors import ModelError
from unlearning_core.models.registry import register_model


@register_model("mlp")
def mlp(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Flatten -> 256 -> 128 -> classes, ReLU between."""
    features = in_channels * image_size[0] * image_size[1]
    return nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(features, 256)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(256, 128)),
                ("relu2", nn.ReLU()),
                ("head", nn.Linear(128, num_classes)),
            ]
        )
    )


@register_model("small-cnn")
def small_cnn(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Two conv3x3 + ReLU + maxpool blocks (16, 32 channels), then 64 -> classes.

    Padding 1 keeps the size through each conv, so only the two pools shrink it: 8x8 ends at
    2x2 and 28x28 at 7x7.
    """
    h, w = image_size[0] // 4, image_size[1] // 4
    if h < 1 or w < 1:
        raise ModelError(
            f"small-cnn needs images of at least 4x4, got {image_size[0]}x{image_size[1]}"
        )
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(16, 32, kernel_size=3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(32 * h * w, 64)),
                ("relu3", nn.ReLU()),
                ("head", nn.Linear(64, num_classes)),
            ]
        )
    )
