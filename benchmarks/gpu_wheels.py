"""Fetch, here, the wheels the GPU machine lacks, into ``.whl/`` (git-ignored).

    .venv/bin/python benchmarks/gpu_wheels.py          # then carry .whl with the device command

The lent GPU machine has no network and its image (Python 3.12) has PyTorch,
torchvision, PyYAML, SciPy and pytest but not pydantic, which ``dsr_tune.config``
is built on. This downloads pydantic and what it needs, at the versions
``requirements.lock`` pins, as manylinux wheels for CPython 3.12, so the device
command (docs/gpu.md, the one to run) can start with

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || echo "...";

and go on without them if that fails (gpu_check.py then marks the sections that need
pydantic and runs the others). Exit 2 when the lock does not pin one of them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pydantic's own needs (its METADATA's Requires-Dist, without extras); typing_extensions
# is in the image but older than pydantic asks
NAMES = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path = ROOT / "requirements.lock") -> list[str]:
    """``name==version`` for every name in NAMES, as the lock pins it."""
    pinned = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            pinned[_norm(m.group(1))] = f"{m.group(1)}=={m.group(2)}"
    missing = [n for n in NAMES if _norm(n) not in pinned]
    if missing:
        raise SystemExit(f"gpu_wheels: error: requirements.lock pins no {', '.join(missing)} "
                         "(expected name==version lines)")
    return [pinned[_norm(n)] for n in NAMES]


def command(dest: Path, python_version: str = "3.12") -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    return cmd + pins()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl", help="folder for the wheels (default: .whl)")
    ap.add_argument("--python-version", default="3.12", help="the GPU image's Python (default 3.12)")
    args = ap.parse_args(argv)
    try:
        cmd = command(args.dest, args.python_version)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    rc = subprocess.run(cmd).returncode
    if rc == 0:
        wheels = sorted(args.dest.glob("*.whl"))
        size = sum(w.stat().st_size for w in wheels) / 2**20
        print(f"gpu_wheels: {len(wheels)} wheels, {size:.1f} MiB in {args.dest}: " + ", ".join(w.name for w in wheels))
    return rc


if __name__ == "__main__":
    sys.exit(main())
