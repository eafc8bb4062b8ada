"""Data inputs refused before any work starts (no torch, no torchvision).

Each function takes the DataConfig and raises :class:`ConfigError` with one
line naming the key or path and what is allowed. Two halves, because a node
that only launches onto a cluster may not hold the data:

- :func:`check_keys` -- the data keys together, without the file system;
- :func:`check_files` -- the data set on disk where training runs.

:func:`check` runs both. What can only show during training (an image that
fails to decode at epoch 7) raises :class:`DataError` from the loaders.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path

from ..schema import ConfigError
from . import registry
from .files import (IMG_EXTENSIONS, class_mismatch, first_images, infer_channels, is_image, scan_split, tree_key,
                    verify_images)

log = logging.getLogger("dsr_tune")

VERIFY_LIMIT = 20_000  # a tree with at most this many files has every image opened up front
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta")


def _error(key: str, message: str) -> ConfigError:
    return ConfigError(key, message)


def check(cfg) -> None:
    """Both halves: the keys, then the files."""
    check_keys(cfg)
    check_files(cfg)


def check_keys(cfg) -> None:
    """The data keys that only make sense together, or for some data sets."""
    data = registry.get(cfg.name)
    if data.needs_root and not cfg.root:
        raise _error("data.root", f"None: data set {cfg.name!r} needs a root directory")
    if not (data.image_size or data.default_size) and cfg.image_size == 0:
        raise _error("data.image_size", f"0: data set {cfg.name!r} needs an image size (e.g. 64)")
    if cfg.download and not data.downloads:
        raise _error("data.download", f"true: only {' or '.join(registry.names(downloads=True))} can be "
                                      f"downloaded, not {cfg.name!r}")
    for key, neutral in registry.OPTIONAL.items():  # any other value would be silently ignored
        value = getattr(cfg, key)
        if value != neutral and key not in data.reads:
            raise _error(f"data.{key}", f"{value!r} applies to data.name={' or '.join(registry.reading(key))}, "
                                        f"not {cfg.name!r}; leave it {'null' if neutral is None else repr(neutral)}")
    if data.channels and cfg.channels not in (0, data.channels):
        raise _error("data.channels", f"{cfg.channels}: {cfg.name!r} has {data.channels} channel(s); leave it 0")
    _check_normalisation(cfg, data)
    if cfg.resident is True:
        from .choices import resident_refusal

        refusal = resident_refusal(cfg)
        if refusal:
            raise _error("data.resident", f"true: {refusal}; use auto or false")
    rrc = data.random_resized_crop if cfg.random_resized_crop is None else cfg.random_resized_crop
    if rrc and cfg.crop_padding:
        by_default = " and ".join(registry.names(random_resized_crop=True))
        raise _error("data.crop_padding", f"{cfg.crop_padding} with random-resized crops (data.random_resized_crop, "
                                          f"true by default for {by_default}): choose one random crop (crop_padding "
                                          "0 or null, or random_resized_crop=false)")


def _check_normalisation(cfg, data: registry.DataSet) -> None:
    if (cfg.mean is None) != (cfg.std is None):
        given, missing = ("mean", "std") if cfg.std is None else ("std", "mean")
        raise _error(f"data.{missing}", f"null while data.{given} is set: give both (one value per channel) or neither")
    if cfg.mean is None:
        return
    if len(cfg.mean) != len(cfg.std):
        raise _error("data.std", f"{cfg.std}: {len(cfg.std)} values but data.mean has {len(cfg.mean)}; "
                                 "one value per channel in both")
    channels = data.channels or cfg.channels
    if channels and len(cfg.mean) != channels:
        raise _error("data.mean", f"{cfg.mean}: {len(cfg.mean)} values for {channels} channel(s) "
                                  f"({cfg.name if data.channels else 'data.channels'}); one per channel")
    if not channels and len(cfg.mean) not in (1, 3):
        raise _error("data.mean", f"{cfg.mean}: {len(cfg.mean)} values; one per channel (1 or 3)")


def check_files(cfg) -> None:
    """The data set is where the config says and holds what training needs.
    Called through ``config.check_paths`` where training runs (and by the CLI
    on the machine it starts from, unless it joins a cluster); messages name
    the host that looked (a cluster's nodes may differ)."""
    data = registry.get(cfg.name)
    if data.check_files is not None and cfg.root:
        data.check_files(cfg, Path(cfg.root).expanduser(), f" on {socket.gethostname()}")
    if cfg.resident is True and data.arrays is not None:
        _check_resident_size(cfg)


def _check_resident_size(cfg) -> None:
    """data.resident=true on a set over the fixed cap (a GPU's share is checked where it is known)."""
    from .choices import decoded_bytes

    size = decoded_bytes(cfg)
    if size > registry.RESIDENT_CAP_MIB * 2**20:
        where = f" under {cfg.root}" if cfg.root else ""
        raise _error("data.resident", f"true: {cfg.name}{where} takes {registry.mib(size)} decoded, over the cap "
                                      f"of {registry.RESIDENT_CAP_MIB:,} MiB; use auto (batches loaded from the "
                                      "files) or false")


def check_tree_files(cfg, root: Path, where: str) -> None:
    """A class-folder tree: train/ and val/ with the same classes and readable images."""
    if not root.is_dir():
        raise _error("data.root", f"{cfg.root!r} does not exist{where}; expected a folder with train/ and val/ "
                                  "class folders")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise _error("data.root", f"{cfg.root!r} has no {split}/ folder{where}; expected "
                                      f"{cfg.root}/train/<class>/*.jpg and {cfg.root}/val/<class>/*.jpg")
    _check_tree(str(root.resolve()), tree_key(root / "train"), tree_key(root / "val"), cfg.skip_bad_images)
    if cfg.mean is not None and not cfg.channels:  # one value per channel of what the files are
        channels = infer_channels(first_images(root / "train"))
        if len(cfg.mean) != channels:
            kind = "grey (1 channel)" if channels == 1 else "colour (3 channels)"
            raise _error("data.mean", f"{cfg.mean}: {len(cfg.mean)} values, but the images under {root}/train/ "
                                      f"are {kind}; give {channels} values in data.mean and data.std, "
                                      "or set data.channels")


def check_cifar_files(cfg, root: Path, where: str) -> None:
    """torchvision's CIFAR-10 python layout under data.root (or data.download to fetch it)."""
    batches = root / "cifar-10-batches-py"
    if cfg.download:
        return  # torchvision fetches what is missing
    if not root.is_dir():
        raise _error("data.root", f"{cfg.root!r} does not exist{where}; set data.download=true or point at "
                                  "an existing copy")
    if not batches.is_dir():
        raise _error("data.root", f"{cfg.root!r} holds no cifar-10-batches-py/{where}; set data.download=true "
                                  "or point at an existing copy")
    missing = [f for f in CIFAR_FILES if not (batches / f).is_file()]
    if missing:
        raise _error("data.root", f"{str(batches)!r} lacks {', '.join(missing)}{where}; expected torchvision's "
                                  f"CIFAR-10 python layout ({', '.join(CIFAR_FILES)}) or data.download=true")


@functools.lru_cache(maxsize=16)
def _check_tree(root: str, train_key: tuple, val_key: tuple, skip_bad: bool) -> None:
    """Class folders and images of a tree (cached per listing: configs are
    validated more than once per process, and verifying is the slow part).
    With ``skip_bad`` an unreadable image is only reported: the loaders drop it."""
    train_classes, val_classes = [c for c, _ in train_key], [c for c, _ in val_key]
    if len(train_classes) < 2:
        found = f"only {train_classes[0]!r}" if train_classes else "none"
        raise _error("data.root", f"{root}/train/ needs at least 2 class folders, found {found}: "
                                  "one class trains to a meaningless 100%")
    problem = class_mismatch(train_classes, val_classes)
    if problem:
        raise _error("data.root", f"{root}: {problem}")
    for c in train_classes:
        if not _has_image(Path(root) / "train" / c):
            raise _error("data.root", f"{root}/train/{c}/ holds no image (files ending in "
                                      f"{', '.join(IMG_EXTENSIONS)})")
    if not any(_has_image(Path(root) / "val" / c) for c in val_classes):
        raise _error("data.root", f"{root}/val/ holds no image in any class folder")
    small = _count_files(Path(root), VERIFY_LIMIT + 1) <= VERIFY_LIMIT
    if small:
        paths = [p for split in ("train", "val") for p, _ in scan_split(Path(root) / split, train_classes)[1]]
        bad = verify_images(paths)
        if bad and skip_bad:
            log.warning("unreadable image %s; data.skip_bad_images=true drops such files while training", bad)
        elif bad:
            raise _error("data.root", f"unreadable image {bad}; remove or replace it, or set "
                                      "data.skip_bad_images=true to drop such files while training")


def _has_image(folder: Path) -> bool:
    """At least one image below ``folder``. Stops at the first one: scandir
    reads a directory lazily, so an ImageNet class folder costs one read."""
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_dir():
                    pending.append(Path(entry.path))
                elif is_image(entry.name):
                    return True
    return False


def _count_files(root: Path, limit: int) -> int:
    """Image files under train/ and val/, counting no further than ``limit``."""
    n = 0
    for split in ("train", "val"):
        for _, _, files in os.walk(root / split, followlinks=True):
            n += sum(1 for f in files if is_image(f))
            if n >= limit:
                return n
    return n
