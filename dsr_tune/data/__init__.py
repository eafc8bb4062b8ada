"""Data sets by name (see :mod:`.registry`; the built-in ones: :mod:`.sets`),
as train / validation / test loaders.

Automatic choices are made concrete by :func:`resolve`; bad inputs are
refused before any work by :func:`check`. Importing this package, its
registry and its checks imports no torch (the CLI's pre-check): the loaders
and torch load on first use of ``build_data`` and friends.

Modules: registry and sets (no torch), files (listing, reading, DataError;
no torch), checks (pre-checks; no torch), choices (resolve(), the validation
split), images (CIFAR-10, class-folder trees, the crop recipe), device
(decoding and augmenting batches on the training device, decode=gpu),
tensors (digits, synthetic), loaders (build_data, DataBundle).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import sets  # noqa: F401  (registers the built-in data sets)
from .registry import REGISTRY, DataSet, register

if TYPE_CHECKING:
    from .checks import check, check_files, check_keys  # noqa: F401
    from .device import decode_images, device_transform, encoded_batch_to_device  # noqa: F401
    from .files import DataError  # noqa: F401
    from .loaders import DataBundle, auto_workers, build_data, datasets  # noqa: F401
    from .choices import resolve, resolved_comment  # noqa: F401
    from .files import split_indices  # noqa: F401

# name -> module: imported when first used, so `import dsr_tune.data.checks`
# (the CLI's pre-check) does not pull in torch
_EXPORTS = {
    "DataBundle": "loaders", "build_data": "loaders", "datasets": "loaders", "auto_workers": "loaders",
    "resolve": "choices", "split_indices": "files", "resolved_comment": "choices", "DataError": "files",
    "check": "checks", "check_keys": "checks", "check_files": "checks",
    "decode_images": "device", "device_transform": "device", "encoded_batch_to_device": "device",
}
__all__ = sorted([*_EXPORTS, "REGISTRY", "DataSet", "register"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
