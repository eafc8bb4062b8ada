"""What many test files share: the checkout's paths and loading a script as a module.

Each file keeps its own short-run overrides (SHORT, FAST, TINY): their
lengths and schedules are tuned to what that file asserts, so they differ
on purpose."""

from __future__ import annotations

import importlib.util
import os
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


def readme_block(after: str) -> str:
    """The code block README.md shows right after the text ``after`` (a sentence ending in a colon)."""
    return (ROOT / "README.md").read_text().split(f"{after}\n\n```python\n")[1].split("```")[0]


def package_copy(dest: Path, files: dict[str, str], edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of dsr_tune in ``dest`` with ``files`` (path in the package -> text) written and
    each edit (path -> (regex, replacement)) applied once; returns ``dest``, for sys.path."""
    import re
    import shutil

    pkg = dest / "dsr_tune"
    shutil.copytree(ROOT / "dsr_tune", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for path, text in files.items():
        (pkg / path).write_text(text)
    for path, (pattern, replacement) in edits.items():
        text, n = re.subn(pattern, replacement, (pkg / path).read_text(), count=1)
        assert n == 1, f"{path}: {pattern!r} no longer matches"
        (pkg / path).write_text(text)
    return dest


def run_python(code: str, path: Path, timeout: float = 300) -> str:
    """``code`` run by a fresh interpreter that imports dsr_tune from ``path``; its stdout."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=path, capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


class CraftedPickle:
    """A pickle that would create ``marker`` when loaded by an unrestricted unpickler (the
    files the tool must refuse: checkpoints, Tune's state in a sweep folder)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
