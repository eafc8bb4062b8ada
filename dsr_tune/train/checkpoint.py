"""Checkpoints written atomically: a crash while saving never breaks the latest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LATEST = "checkpoint.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename
    over ``path`` (rename is atomic on POSIX file systems)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power loss
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | Path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / LATEST
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # our own files: they hold generator states and config dicts, not just tensors
    return torch.load(path, map_location=map_location, weights_only=False)
