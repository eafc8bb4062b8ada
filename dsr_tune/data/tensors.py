"""In-memory data sets: scikit-learn's digits, and random synthetic images."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

from .files import split_indices


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (1797, 8, 8) grey levels and their labels.

    scikit-learn ships them as ``datasets/data/digits.csv.gz`` (64 pixels and
    the label per row), which its ``load_digits`` parses with numpy. Importing
    scikit-learn costs about a second (scipy.stats) in every fresh worker
    process, so the file is read directly when it is where scikit-learn keeps
    it, and ``load_digits`` is the fallback.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
        if data.shape == (1797, 65):
            return _frozen(data[:, :64].reshape(-1, 8, 8), data[:, 64].astype(np.int64))
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    return _frozen(d.images, d.target)


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Read-only: the arrays are cached and shared by every caller."""
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _digits_split(test_fraction: float):
    """Grey levels in 0..1, labels, and the fixed (train, test) index split."""
    images, target = _load_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(12345))
    n_test = int(round(len(y) * test_fraction))
    return x, y, order[n_test:], order[:n_test]


def digits_norm(test_fraction: float = 0.2) -> tuple[float, float]:
    """The scalar mean and std the digits are standardised with (of the
    training part, the part the test split leaves)."""
    x, _, train, _ = _digits_split(test_fraction)
    return float(x[train].mean()), float(x[train].std())


def digits(test_fraction: float = 0.2):
    """1,797 real 8x8 digits (0-16 grey levels), standardised, split with a
    fixed seed so the test set is the same for every run and seed."""
    x, y, train, test = _digits_split(test_fraction)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10, 1


def digits_arrays(test_fraction: float, val_fraction: float):
    """The samples of :func:`digits` after :func:`with_validation` as tensors, for data.resident."""
    full, test, classes, channels = digits(test_fraction)  # the one source of the splits
    return (*split_arrays(*_tensors(full), val_fraction), _tensors(test), classes, channels)


def synthetic_arrays(n: int, size: int, val_fraction: float):
    """The samples of :func:`synthetic` after :func:`with_validation` as tensors, for data.resident."""
    full, test, classes, channels = synthetic(n, size)
    return (*split_arrays(*_tensors(full), val_fraction), _tensors(test), classes, channels)


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a data set of (image, label) samples."""
    if isinstance(data, TensorDataset):
        return data.tensors[0], data.tensors[1]
    x, y = zip(*(data[i] for i in range(len(data))))
    return torch.stack(x), torch.as_tensor(y, dtype=torch.long)


def synthetic(n: int = 512, size: int = 32, classes: int = 10, channels: int = 3):
    """Random images whose label is a linear function of the pixels: learnable,
    so tests can check that accuracy rises."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + n // 4, channels, size, size, generator=g)
    proj = torch.randn(channels * size * size, classes, generator=g)
    y = (x.flatten(1) @ proj).argmax(1)
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:]), classes, channels


def with_validation(full, test, classes: int, channels: int, val_fraction: float):
    """(train, val, test, classes, channels): validation a fixed-seed slice of ``full``."""
    train_idx, val_idx = split_indices(len(full), val_fraction)
    return Subset(full, train_idx), Subset(full, val_idx), test, classes, channels


def split_arrays(x: torch.Tensor, y: torch.Tensor, val_fraction: float):
    """((x, y) train part, (x, y) validation part): the samples :func:`with_validation`'s subsets hold."""
    train_idx, val_idx = split_indices(len(x), val_fraction)
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
