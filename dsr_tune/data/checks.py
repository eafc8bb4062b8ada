"""Checks of a data set's files, before any work starts (no torch imported)."""

from __future__ import annotations

from pathlib import Path

from ..schema import ConfigError


def check(cfg) -> None:
    """``cfg`` (a DataConfig) names a data set that is where it says."""
    if cfg.name not in ("cifar10", "imagenet", "folder") or not cfg.root:
        return
    root = Path(cfg.root).expanduser()
    if cfg.name == "cifar10" and not cfg.download and not (root / "cifar-10-batches-py").is_dir():
        raise ConfigError("data.root", f"{cfg.root!r} holds no cifar-10-batches-py/; set data.download=true or "
                                       "point at an existing copy")
    if cfg.name in ("imagenet", "folder"):
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise ConfigError("data.root", f"{cfg.root!r} has no {split}/ folder; expected "
                                               f"{cfg.root}/train/<class>/*.jpg and {cfg.root}/val/<class>/*.jpg")
