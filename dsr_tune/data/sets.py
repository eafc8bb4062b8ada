"""The built-in data sets, registered (see :mod:`.registry`). Torch-free: each
hook imports its loader when called."""

from __future__ import annotations

from .checks import check_cifar_files, check_tree_files
from .registry import AUGMENTED, OPTIONAL, DataSet, register

TREE = tuple(OPTIONAL)  # a class-folder tree reads every optional key


def _digits(cfg, r):
    from .tensors import digits, with_validation

    return with_validation(*digits(cfg.test_fraction), r["val_fraction"])  # the fixed test split stays


def _digits_norm(cfg, r):
    from .tensors import digits_norm

    mean, std = digits_norm(cfg.test_fraction)
    return [mean], [std]


def _synthetic(cfg, r):
    from .tensors import synthetic, with_validation

    return with_validation(*synthetic(cfg.synthetic_size, r["image_size"]), r["val_fraction"])


def _cifar10(cfg, r):
    from .images import cifar10

    return (*cifar10(cfg.root, cfg.download, r), 10, 3)


def _cifar10_norm(cfg, r):
    from .images import CIFAR_MEAN, CIFAR_STD

    return list(CIFAR_MEAN), list(CIFAR_STD)


def _tree(cfg, r):
    from .images import class_tree

    return class_tree(cfg, r)


def _tree_norm(cfg, r):
    from .choices import tree_stats

    return tree_stats(cfg, r)


def _digits_arrays(cfg, r):
    from .tensors import digits_arrays

    return digits_arrays(cfg.test_fraction, r["val_fraction"])


def _synthetic_arrays(cfg, r):
    from .tensors import synthetic_arrays

    return synthetic_arrays(cfg.synthetic_size, r["image_size"], r["val_fraction"])


def _cifar10_arrays(cfg, r):
    from .images import cifar10_arrays

    return cifar10_arrays(cfg.root, cfg.download, r)


def _tree_arrays(cfg, r):
    from .images import tree_arrays

    return tree_arrays(cfg, r)


def _tree_bytes(cfg, r):
    from pathlib import Path

    from .files import scan_split

    root = Path(cfg.root).expanduser()
    files = sum(len(scan_split(root / split)[1]) for split in ("train", "val"))
    return files * r["channels"] * r["image_size"] ** 2


FLOAT32 = 4  # bytes: digits and synthetic are kept as the float tensors they are made as


def _imagenet_norm(cfg, r):
    if r["channels"] != 3:  # ImageNet's constants are colour ones: a grey tree gets its own
        return _tree_norm(cfg, r)
    from .images import IMAGENET_MEAN, IMAGENET_STD

    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def _tree_counts(cfg) -> tuple[int, int, int, int]:
    """A class-folder tree's sizes, counted from its files (cached per process)."""
    from pathlib import Path

    from .files import scan_split

    root = Path(cfg.root).expanduser()
    classes, samples = scan_split(root / "train")
    return len(samples), len(scan_split(root / "val", list(classes))[1]), len(classes), 0


def _imagenet_counts(cfg) -> tuple[int, int, int, int]:
    """Its files' sizes when they are here, else ImageNet-1k's (ILSVRC-2012: 1,281,167 training and
    50,000 validation images, 1,000 classes, colour)."""
    from pathlib import Path

    if cfg.root and (Path(cfg.root).expanduser() / "train").is_dir():
        return _tree_counts(cfg)
    return 1_281_167, 50_000, 1000, 3


def _digits_counts(cfg) -> tuple[int, int, int, int]:
    test = int(round(1797 * cfg.test_fraction))  # as tensors.digits splits them
    return 1797 - test, test, 10, 1


register(DataSet("digits", "scikit-learn's 1,797 real 8x8 digits, a fixed test split (no download)", _digits,
                 channels=1, image_size=8, in_memory=True, normalisation=_digits_norm, counts=_digits_counts,
                 arrays=_digits_arrays, decoded_bytes=lambda cfg, r: 1797 * 8 * 8 * FLOAT32))
register(DataSet("cifar10", "torchvision's CIFAR-10 under data.root, the paper's augmentation", _cifar10,
                 reads=AUGMENTED, channels=3, image_size=32, hflip=True, crop_padding=4, needs_root=True,
                 downloads=True, normalisation=_cifar10_norm, check_files=check_cifar_files,
                 counts=lambda cfg: (50_000, 10_000, 10, 3), arrays=_cifar10_arrays,
                 decoded_bytes=lambda cfg, r: 60_000 * 3 * 32 * 32))
# ImageNet's val/ is what papers report as test, so its validation is a 1% slice of train (~12,800 images)
register(DataSet("imagenet", "a train/ and val/ tree of class folders, ImageNet's crops and constants", _tree,
                 reads=TREE, default_size=224, hflip=True, random_resized_crop=True, val_fraction=0.01,
                 needs_root=True, normalisation=_imagenet_norm, check_files=check_tree_files, counts=_imagenet_counts))
register(DataSet("folder", "any such tree (grey or colour), its mean and std from its own training images", _tree,
                 reads=TREE, hflip=True, needs_root=True, normalisation=_tree_norm, check_files=check_tree_files,
                 counts=_tree_counts, arrays=_tree_arrays, decoded_bytes=_tree_bytes))
register(DataSet("synthetic", "random tensors with a learnable label (tests and benchmarks)", _synthetic,
                 channels=3, default_size=32, in_memory=True,
                 counts=lambda cfg: (cfg.synthetic_size, cfg.synthetic_size // 4, 10, 3), arrays=_synthetic_arrays,
                 decoded_bytes=lambda cfg, r: (cfg.synthetic_size * 5 // 4) * 3 * r["image_size"] ** 2 * FLOAT32))
