"""Models by name, and which of their weights are sparse.

``build_model("wrn", depth=28, width=2.0, num_classes=10)``; every entry
takes ``width`` (a real multiplier) so thin dense baselines can be sized.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..sparse import select_names
from . import resnet, small_cnn, wrn

# name -> (factory(width, depth, num_classes, in_channels), sparse rule)
REGISTRY: dict[str, tuple[Callable[..., nn.Module], Callable[[nn.Module], list[str]]]] = {
    "small_cnn": (lambda width, depth, num_classes, in_channels:
                  small_cnn.SmallCNN(width, num_classes, in_channels), small_cnn.sparse_rule),
    "wrn": (lambda width, depth, num_classes, in_channels:
            wrn.WideResNet(depth, width, num_classes, in_channels), wrn.sparse_rule),
    "resnet50": (lambda width, depth, num_classes, in_channels:
                 resnet.resnet50(width, num_classes, in_channels), resnet.sparse_rule),
}


def build_model(name: str, *, width: float = 1.0, depth: int = 28, num_classes: int = 10,
                in_channels: int = 3) -> nn.Module:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name][0](width, depth, num_classes, in_channels)


def sparse_names(name: str, model: nn.Module, include: list[str] | None = None,
                 exclude: list[str] | None = None) -> list[str]:
    """The sparse weights: the model's own rule, or ``include`` patterns if given,
    minus ``exclude`` patterns."""
    names = select_names(model, include) if include is not None else REGISTRY[name][1](model)
    if exclude:
        drop = set(select_names(model, exclude))
        names = [n for n in names if n not in drop]
    return names


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
