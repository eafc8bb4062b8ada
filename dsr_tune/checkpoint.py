"""Checkpoint files: written atomically, read without running any code.

Every ``torch.load`` of the tool goes through :func:`load`, which uses
``weights_only=True``: PyTorch's restricted unpickler that rebuilds tensors,
numbers, strings and containers and nothing else. The tool's own files
(checkpoints, init.pt, exported models) hold only those types: model and
optimizer state dicts, masks, generator states (byte tensors), config dicts
and metric records. A file that needs anything else (a crafted pickle that
would call a function on load) is refused with a :class:`ConfigError` naming
the file and the key it came from; nothing in it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .runfolder import CHECKPOINT, atomic_write
from .schema import ConfigError


def save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`dsr_tune.runfolder.atomic_write` (a crash while
    saving never breaks the previous file)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: Any = "cpu", *, key: str = "") -> dict:
    """Read a file the tool wrote (a folder: its checkpoint.pt).

    key: the config key or option the path came from, named in errors
    (``sparsity.mask_from``, ``--resume``, ...). Raises FileNotFoundError
    when there is no file, ConfigError when it is not one of the tool's files.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(key, f"{str(path)!r} is not a checkpoint this tool wrote and was not loaded (it holds "
                               f"more than tensors and plain data: {first[:160]})") from None
    except (RuntimeError, EOFError, ValueError) as exc:  # truncated, not a torch file at all
        raise ConfigError(key, f"{str(path)!r} cannot be read as a checkpoint "
                               f"({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})"
                          ) from None


def load_weights(model: torch.nn.Module, path: str | Path, key: str, *, part: str | None = None) -> None:
    """Load a state dict (``state[part]`` if given and present) from a tool's file
    into ``model``; a ConfigError naming ``key`` when it does not fit."""
    state = load(path, key=key)
    if part is not None and isinstance(state, dict) and part in state:
        state = state[part]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(key, f"{str(path)!r} does not fit this model ({first[0] if first else exc}); "
                               "the model section must match the run it comes from") from None
