"""A small convolutional net with BatchNorm (running statistics: buffers that change in
the forward pass) and LayerNorm, registered by entry point, not by Lethe's zoo."""

from __future__ import annotations

import torch
from torch import nn


class NormNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 32)
        self.ln = nn.LayerNorm(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.head(torch.relu(self.ln(self.fc(x.flatten(1)))))


def build(*, in_channels: int, num_classes: int) -> nn.Module:
    """The factory Lethe calls (it passes only the arguments named here)."""
    return NormNet(in_channels, num_classes)
