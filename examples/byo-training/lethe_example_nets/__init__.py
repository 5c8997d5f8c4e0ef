"""The user's own models (not Lethe's zoo): a small CNN of their own, or torchvision's
MobileNetV3-Small adapted to one-channel 28 x 28 images."""

from __future__ import annotations

import torch
from torch import nn


class FashionNet(nn.Module):
    """A user's own small CNN with BatchNorm: conv-bn-relu twice, pooled, then a linear head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def mobilenet(num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV3-Small for 1-channel 28 x 28 images (upsampled to 64 x 64)."""
    from torchvision.models import mobilenet_v3_small

    net = mobilenet_v3_small(num_classes=num_classes)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(1, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
    return nn.Sequential(nn.Upsample(size=(64, 64), mode="bilinear", align_corners=False), net)


def build(arch: str = "fashion-net", width: int = 16, num_classes: int = 10) -> nn.Module:
    """The factory Lethe calls with the ``model_kwargs`` the run recorded."""
    if arch == "mobilenet":
        return mobilenet(num_classes)
    return FashionNet(width, num_classes)
