"""Small image files in the formats users have, written by the data tests."""

from __future__ import annotations

import pickle

import numpy as np
from PIL import Image


def smooth_image(rng, size, channels: int) -> np.ndarray:
    """A photo-like image: smooth colour gradients plus mild noise, so JPEG
    and resize kernels behave as on real pictures (pure noise would make
    every decoder difference look large)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    layers = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy + rng.uniform()))
              for _ in range(channels)]
    img = 127.5 + 100 * np.stack(layers, -1) + rng.normal(0, 8, (h, w, channels))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def write_tree(root, classes=3, per_class=4, size=(40, 30), channels=3, ext="jpg", val_per_class=None, seed=0):
    """root/{train,val}/class<c>/<i>.<ext>: ``channels`` 1 writes grey ('L') files."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class or per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                hw = (size[0] + int(rng.integers(0, 9)), size[1] + int(rng.integers(0, 9)))
                Image.fromarray(smooth_image(rng, hw, channels)).save(folder / f"{i}.{ext}")
    return root


def write_cifar(root, n_train=20, n_test=10):
    """The CIFAR-10 python layout: cifar-10-batches-py/data_batch_1..5, test_batch."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root
