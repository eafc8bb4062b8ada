"""In-memory data sets: scikit-learn's digits, and random synthetic images."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def digits(test_fraction: float = 0.2):
    """1,797 real 8x8 digits (0-16 grey levels), standardised, split with a
    fixed seed so the test set is the same for every run and seed."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(12345))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10, 1


def synthetic(n: int = 512, size: int = 32, classes: int = 10, channels: int = 3):
    """Random images whose label is a linear function of the pixels: learnable,
    so tests can check that accuracy rises."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + n // 4, channels, size, size, generator=g)
    proj = torch.randn(channels * size * size, classes, generator=g)
    y = (x.flatten(1) @ proj).argmax(1)
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:]), classes, channels
