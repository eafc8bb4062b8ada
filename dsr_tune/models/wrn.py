"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), pre-activation blocks.

Any real widen factor k: group widths are round(16k), round(32k), round(64k),
so a thin dense network can be sized to a parameter count. WRN-28-2 has
1,467,610 parameters with 10 classes.
"""

from __future__ import annotations

from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # 1x1 projection when the shape changes; stays dense in DSR
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: float = 2.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 (>= 10), got {depth}")
        n = (depth - 4) // 6
        widths = [16] + [max(1, round(w * widen_factor)) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, c_in = [], widths[0]
        for g, (c_out, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [Block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)]
            layers.append(nn.Sequential(*blocks))
            c_in = c_out
        self.block1, self.block2, self.block3 = layers
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(width: float, depth: int, num_classes: int, in_channels: int) -> WideResNet:
    return WideResNet(depth, width, num_classes, in_channels)


def sparse_rule(model: WideResNet) -> list[str]:
    """The paper's split: the 3x3 convs inside residual blocks are sparse."""
    return [n for n, p in model.named_parameters()
            if n.startswith("block") and (".conv1." in n or ".conv2." in n) and p.dim() == 4]
