"""A small CNN for 8x8 digits (and other tiny images): three convs, two linears."""

from __future__ import annotations

from torch import nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        c1, c2, c3, h = (max(1, round(c * width)) for c in (16, 32, 64, 128))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(c3 * 4, h)  # after two 2x2 poolings and a 2x2 adaptive pool
        self.fc = nn.Linear(h, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.fc(F.relu(self.fc1(x)))


def build(width: float, depth: int, num_classes: int, in_channels: int) -> SmallCNN:
    return SmallCNN(width, num_classes, in_channels)  # no depth: three convs


def sparse_rule(model: SmallCNN) -> list[str]:
    """Inner convs and the hidden linear layer; first conv and classifier dense."""
    return ["conv2.weight", "conv3.weight", "fc1.weight"]
