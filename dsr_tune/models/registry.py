"""The model registry: every network registered once, with its factory, its
sparse rule and the traits the rest of the tool asks for by name. The
``model.name`` choices, ``dsr-tune keys`` and the tests derive from it.

Importing this module imports no torch (the config validates model names on
the CLI's fast path): a built-in model's factory and rule import its module
when first called (:func:`lazy`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Model:
    """One network.

    build: ``build(width, depth, num_classes, in_channels) -> nn.Module``; every
        model takes a real ``width`` multiplier, so a thin dense baseline can be
        sized to a parameter count (``depth`` may be ignored).
    sparse_rule: ``sparse_rule(model) -> [parameter names]``: the weights the
        paper makes sparse (``model.sparse_layers`` / ``dense_layers`` override it).
    min_image_size: images of a data set smaller than this are refused before
        any work (ResNet-50 downsamples 32x).
    """

    name: str
    doc: str
    build: Callable[[float, int, int, int], Any]
    sparse_rule: Callable[[Any], list[str]]
    min_image_size: int = 1


REGISTRY: dict[str, Model] = {}


def register(model: Model) -> Model:
    """Add ``model`` (names are unique)."""
    if model.name in REGISTRY:
        raise ValueError(f"model {model.name!r} is registered twice")
    REGISTRY[model.name] = model
    return model


def get(name: str) -> Model:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every value ``model.name`` may hold, in order of registration."""
    return tuple(REGISTRY)


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """``dsr_tune.models.<module>.<attr>``, imported on the first call (torch loads
    when a model is built, not when a config names it)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(f".{module}", __package__), attr)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{attr}"
    return call
