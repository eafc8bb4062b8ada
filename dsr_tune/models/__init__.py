"""Models by name (see :mod:`.registry`), and which of their weights are sparse.

``build_model("wrn", depth=28, width=2.0, num_classes=10)``. Adding a model:
its network in a module here with ``build`` and ``sparse_rule`` functions, and
its ``register`` line below. Nothing here imports torch until a model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import REGISTRY, Model, get, lazy, names, register

if TYPE_CHECKING:
    from torch import nn

register(Model("small_cnn", "three convs and two linears, for 8x8 digits and other tiny images",
               lazy("small_cnn", "build"), lazy("small_cnn", "sparse_rule")))
register(Model("wrn", "Wide ResNet WRN-depth-width (pre-activation), the paper's CIFAR-10 network",
               lazy("wrn", "build"), lazy("wrn", "sparse_rule")))
register(Model("resnet50", "torchvision's ResNet-50 with a width multiplier, the paper's ImageNet network",
               lazy("resnet", "build"), lazy("resnet", "sparse_rule"), min_image_size=32))

__all__ = ["REGISTRY", "Model", "build_model", "count_params", "get", "lazy", "names", "register", "sparse_names"]


def build_model(name: str, *, width: float = 1.0, depth: int = 28, num_classes: int = 10,
                in_channels: int = 3) -> nn.Module:
    return get(name).build(width, depth, num_classes, in_channels)


def sparse_names(name: str, model: nn.Module, include: list[str] | None = None,
                 exclude: list[str] | None = None) -> list[str]:
    """The sparse weights: the model's own rule, or ``include`` patterns if given,
    minus ``exclude`` patterns."""
    from ..sparse import select_names

    names_ = select_names(model, include) if include is not None else get(name).sparse_rule(model)
    if exclude:
        drop = set(select_names(model, exclude))
        names_ = [n for n in names_ if n not in drop]
    return names_


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
