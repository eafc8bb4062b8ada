"""Every automatic data choice made concrete: :func:`resolve`.

A null (``None``) or 0 data key means "the data set's default"; resolve()
turns each into the value used, deterministically from the config and the
files, so a run folder can record what it trained on and :func:`build_data`
uses exactly these values. Cheap: the one costly choice (a folder's mean and
std, computed from up to 2,000 training images) is cached per process.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import ConfigError
from . import registry
from .files import DataError, first_images, infer_channels, scan_split, split_indices, tree_key, val_count

STATS_SEED, STATS_IMAGES = 0, 2000  # the sample a folder's mean and std come from


def resolve(cfg, device=None) -> dict:
    """The concrete data choices of a DataConfig: name, image_size, channels,
    mean, std (lists, one value per channel), hflip, crop_padding,
    random_resized_crop, val_fraction, decode, skip_bad_images, and resident
    (on the training ``device``: see :func:`resident_choice`).

    Invariants: len(mean) == len(std) == channels; a key the user set is
    kept as set; the same config and files give the same dict.
    """
    data = registry.get(cfg.name)
    r = {
        "name": cfg.name,
        "image_size": image_size(cfg),
        "channels": _channels(cfg, data),
    }
    for key in ("hflip", "crop_padding", "random_resized_crop", "val_fraction"):
        r[key] = getattr(data, key) if getattr(cfg, key) is None else getattr(cfg, key)
    r.update(decode=cfg.decode, skip_bad_images=cfg.skip_bad_images)
    if cfg.mean is not None:
        r["mean"], r["std"] = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    elif data.normalisation is None:  # its tensors are standardised already
        r["mean"], r["std"] = [0.0] * r["channels"], [1.0] * r["channels"]
    else:
        r["mean"], r["std"] = data.normalisation(cfg, r)
    r["resident"] = resident_choice(cfg, device)[0]
    return r


@dataclass(frozen=True)
class Sizes:
    """A data config's split sizes and image shape, as training will see them."""

    train: int      # the training split (the validation slice taken out)
    val: int
    test: int
    classes: int
    channels: int
    image_size: int

    def per_epoch(self, batch_size: int) -> int:
        """Training images an epoch trains on: whole batches (the loaders drop the last partial one)."""
        return self.train // batch_size * batch_size


def sizes(cfg) -> Sizes:
    """The sizes of a DataConfig, from its registration where the set's size is
    fixed (no file read: a plan prices a sweep whose data is elsewhere), else
    from its files; FileNotFoundError (or the data set's DataError) when
    neither can say."""
    data = registry.get(cfg.name)
    pool, test, classes, channels = data.counts(cfg)
    frac = data.val_fraction if cfg.val_fraction is None else cfg.val_fraction
    val = val_count(pool, frac)
    channels = data.channels or cfg.channels or channels or _channels(cfg, data)  # a tree: from its files
    return Sizes(pool - val, val, test, classes, channels, image_size(cfg))


def image_size(cfg) -> int:
    """The side of the images the model sees for a DataConfig (no file read)."""
    data = registry.get(cfg.name)
    return data.image_size or cfg.image_size or data.default_size


def _channels(cfg, data: registry.DataSet) -> int:
    if data.channels:
        return data.channels
    if cfg.channels:
        return cfg.channels
    # a few headers spread over the classes: grey files stay grey
    return infer_channels(first_images(Path(cfg.root).expanduser() / "train"))


def resident_refusal(cfg) -> str | None:
    """Why ``data.resident`` cannot hold this data set (None: it can, size permitting)."""
    data = registry.get(cfg.name)
    if data.arrays is None:
        return f"{cfg.name!r} is never resident (its images are decoded for every epoch's crops)"
    rrc = data.random_resized_crop if cfg.random_resized_crop is None else cfg.random_resized_crop
    if rrc:
        return "random-resized crops are cut from each original image, which resident data does not keep"
    return None


def decoded_bytes(cfg) -> int:
    """What the data set takes when resident (every split, decoded), from the
    listing and the image size alone: nothing is decoded."""
    data = registry.get(cfg.name)
    return data.decoded_bytes(cfg, {"image_size": image_size(cfg), "channels": _channels(cfg, data)})


def resident_choice(cfg, device=None) -> tuple[bool, str | None]:
    """``data.resident`` made concrete for the training ``device`` (None: not
    known here, so auto means no and true the CPU), and why auto said no to a
    set that could be resident. True over the cap raises ConfigError (true
    where it can never be was refused by the data checks)."""
    if cfg.resident is False or (cfg.resident == "auto" and device is None) or resident_refusal(cfg):
        return False, None
    device = str(device or "cpu")
    cap = registry.RESIDENT_CAP_MIB * 2**20
    if device.startswith("cuda"):
        from .resident import device_cap  # torch

        cap = device_cap(device)
    size = decoded_bytes(cfg)
    if size <= cap:
        return True, None
    if cfg.resident is True:
        raise ConfigError("data.resident", f"true: {cfg.name} takes {registry.mib(size)} decoded, over the "
                                           f"{registry.mib(cap)} it may take on {device}; use auto or false")
    return False, (f"data.resident=auto: {cfg.name} takes {registry.mib(size)} decoded, over the "
                   f"{registry.mib(cap)} it may take on {device}: batches are loaded from the files")


def tree_stats(cfg, r: dict) -> tuple[list[float], list[float]]:
    """The mean and std of a class-folder tree's training images (see :func:`_folder_stats`)."""
    root = Path(cfg.root).expanduser().resolve() / "train"
    mean, std = _folder_stats(root, r["channels"], r["image_size"], r["random_resized_crop"], r["val_fraction"],
                              r["skip_bad_images"], tree_key(root))
    return list(mean), list(std)


@functools.lru_cache(maxsize=8)
def _folder_stats(train_dir: Path, channels: int, size: int, rrc: bool, val_fraction: float, skip_bad: bool,
                  listing: tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels (0..1) the model sees at test
    time, over a seeded sample of at most STATS_IMAGES images of the train
    part (validation images excluded), in float64; rounded to 4 decimals.
    ``listing`` (the tree key) is only part of the cache key."""
    import torch

    from .images import FolderImages, ImageSpec

    samples = scan_split(train_dir)[1]
    train_idx, _ = split_indices(len(samples), val_fraction)
    k = min(STATS_IMAGES, len(train_idx))
    pick = sorted(np.random.default_rng(STATS_SEED).choice(len(train_idx), k, replace=False).tolist())
    spec = ImageSpec(size, channels, (0.0,) * channels, (1.0,) * channels, random_resized_crop=rrc)
    images = FolderImages([samples[train_idx[i]] for i in pick], spec)
    s1 = torch.zeros(channels, dtype=torch.float64)
    s2 = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for x, _, error in images:
        if error:
            if skip_bad:
                continue
            raise DataError(error)
        x = x.double()
        s1 += x.sum((1, 2))
        s2 += (x * x).sum((1, 2))
        pixels += x[0].numel()
    if not pixels:
        raise DataError(f"{train_dir}: no readable image to compute data.mean and data.std from")
    mean = s1 / pixels
    std = (s2 / pixels - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant channel: leave it unscaled
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def clear_caches() -> None:
    """Forget cached listings and statistics (files were changed in place)."""
    from . import files

    _folder_stats.cache_clear()
    files._scan.cache_clear()
    resident = sys.modules.get(f"{__package__}.resident")  # not imported (torch): nothing decoded
    if resident is not None:
        resident._cache.clear()


def resolved_comment(resolved: dict) -> str:
    """Resolved choices (``{"data.channels": 1, "thin_dense.width": 0.66, ...}``) as
    YAML comment lines to append to a run's config.yaml: a record for the reader
    that leaves the keys as given (a resumed run's config then compares equal to
    the one it was started with)."""
    import yaml

    nested: dict = {}
    for key, value in resolved.items():
        head, _, tail = key.partition(".")
        nested.setdefault(head, {})[tail] = value
    body = yaml.safe_dump(nested, sort_keys=False, default_flow_style=None)
    return "# choices resolved from the files and the run (data: dsr_tune.data.resolve):\n" + "".join(
        f"#   {line}\n" for line in body.splitlines())