"""What many test files share: the checkout's paths and loading a script as a module.

Each file keeps its own short-run overrides (SHORT, FAST, TINY): their
lengths and schedules are tuned to what that file asserts, so they differ
on purpose."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")  # the embedded default: real 8x8 digits, no download
DEMO = str(ROOT / "search_spaces" / "digits_demo.yaml")


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """A script outside the package (scripts/, benchmarks/) imported as a module,
    kept in sys.modules under ``name`` (its dataclasses look their module up there)."""
    path = Path(path)
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]
