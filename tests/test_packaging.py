"""Every third-party library the package imports is declared in pyproject.toml
(a range) and pinned in requirements.lock: one that only arrives through
another package can vanish when that package drops it."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib

from conftest import ROOT


def _name(requirement: str) -> str:
    """A distribution's name as pip compares it (PEP 503: case and -_. folded)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group()).lower()


def _imported_modules() -> dict[str, str]:
    """``{top-level module: a file importing it}`` over dsr_tune/, every import at any depth."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "dsr_tune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                found.setdefault(top, str(path.relative_to(ROOT)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m != "dsr_tune"}


def _undeclared(modules: dict[str, str], declared: set[str], owners) -> list[str]:
    """One line per imported module none of whose distributions is declared."""
    out = []
    for module, where in sorted(modules.items()):
        dists = sorted({_name(d) for d in owners.get(module, ())})
        if not set(dists) & declared:
            out.append(f"{where} imports {module}: declare {' or '.join(dists) or 'its distribution'} "
                       "in pyproject.toml")
    return out


def _declared() -> set[str]:
    return {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}


def test_every_imported_library_is_declared_and_pinned():
    modules = _imported_modules()
    assert {"torch", "numpy", "pydantic", "PIL", "yaml", "scipy"} <= set(modules)  # imports at any depth are seen
    declared = _declared()
    assert not _undeclared(modules, declared, md.packages_distributions())
    pinned = {_name(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.lstrip().startswith("#")}
    assert declared <= pinned, f"declared but not pinned in requirements.lock: {sorted(declared - pinned)}"


def test_an_import_that_only_arrives_through_another_package_is_named():
    owners = md.packages_distributions()
    declared = _declared() - {"pillow"}  # as before pillow was declared: torchvision and matplotlib bring it
    assert _undeclared({"PIL": "dsr_tune/data/files.py", "torch": "dsr_tune/checkpoint.py"}, declared, owners) == [
        "dsr_tune/data/files.py imports PIL: declare pillow in pyproject.toml"]
    assert _name("ray[tune,train]>=2.60") == "ray" and _name("pydantic_core>=2") == _name("pydantic-core==2.50.4")
