"""ResNet-50 built from torchvision's Bottleneck, with a width multiplier.

At width 1.0 the module tree and parameter names are torchvision's
``resnet50`` exactly (25,557,032 parameters with 1000 classes), so its
weights load. Other widths scale every channel count (stem, bottleneck
planes, hence outputs), which is what a thin dense baseline needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from torchvision.models.resnet import ResNet


def _scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


def resnet50(width: float = 1.0, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    # torchvision costs ~1 s to import: only when a ResNet is built, not in every trial process
    from torchvision.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
    if width == 1.0 and in_channels == 3:
        return model
    # Rebuild every stage with scaled widths. torchvision's ResNet takes only
    # a bottleneck width, so we size the stem and stages ourselves and reuse
    # its own _make_layer (it reads self.inplanes, which we set first).
    stem = _scaled(64, width)
    model.inplanes = stem
    model.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    model.layer1 = model._make_layer(Bottleneck, _scaled(64, width), 3)
    model.layer2 = model._make_layer(Bottleneck, _scaled(128, width), 4, stride=2)
    model.layer3 = model._make_layer(Bottleneck, _scaled(256, width), 6, stride=2)
    model.layer4 = model._make_layer(Bottleneck, _scaled(512, width), 3, stride=2)
    model.fc = nn.Linear(_scaled(512, width) * Bottleneck.expansion, num_classes)
    for m in model.modules():  # same init as torchvision's constructor
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def build(width: float, depth: int, num_classes: int, in_channels: int) -> ResNet:
    return resnet50(width, num_classes, in_channels)  # depth is 50


def sparse_rule(model: ResNet) -> list[str]:
    """The paper's split: every bottleneck conv and the final FC are sparse;
    the 7x7 stem and the 1x1 downsample convs stay dense."""
    return [n for n, p in model.named_parameters()
            if (n.startswith("layer") and ".conv" in n and p.dim() == 4) or n == "fc.weight"]
