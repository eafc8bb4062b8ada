"""Data sets by name, as train / validation / test loaders.

- digits: scikit-learn's 1,797 real 8x8 handwritten digits, a fixed test
  split (the embedded default: no download, no GPU).
- cifar10: torchvision's CIFAR-10 under ``root`` (downloaded on request),
  with the paper's augmentation.
- imagenet: a ``train/`` and ``val/`` tree of class folders, standard
  ImageNet transforms (random-resized crop 224, resize 256 + center crop).
- folder: any such tree (grey or colour), resized to ``image_size``, its
  mean and std computed from its own training images.
- synthetic: random tensors of a given shape (tests and benchmarks).

Every data set gets a validation split: a fixed-seed slice of its training
data (``data.val_fraction``), the same for every train.seed. Automatic
choices are made concrete by :func:`resolve`; bad inputs are refused before
any work by :func:`check` (torch-free, like this package's import: the
loaders and torch load on first use of ``build_data`` and friends).

Modules: files (listing, reading, DataError; no torch), checks (pre-checks;
no torch), choices (resolve(), the validation split), images (CIFAR-10,
folder data sets, the crop recipe), device (decoding and augmenting batches
on the training device, decode=gpu), tensors (digits, synthetic), loaders
(build_data, DataBundle).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
