"""The run folder: its file names, the one atomic write, reading its records.

Every file the tool writes in a run folder (or a sweep folder) is named here
and written with :func:`atomic_write`: a temporary file in the same folder,
flushed and fsynced, renamed over the target, and the folder fsynced, so a
crash at any instant leaves either the old file or the new one, never half of
one. Temporary files carry the writer's pid; :func:`clean_stale` removes those
whose writer is gone (a run killed while saving) when a run starts again.

Torch-free: reports, sync and the CLI read run folders without importing it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

CONFIG = "config.yaml"          # the resolved config of the run
METRICS = "metrics.jsonl"       # one JSON record per line: "epoch" and "realloc" records
CHECKPOINT = "checkpoint.pt"    # the latest finished epoch: everything to continue exactly
INIT = "init.pt"                # the initial weights and masks (the ablations start from them)
RESULT = "result.json"          # a comparison run's summary, written when it finished
TRACKING = "tracking.json"      # a sweep run's identity and MLflow state
RAY_RUN = "ray_run.json"        # a Ray Train run: its name and where its checkpoints live
WORKERS = "ray_workers"         # a Ray Train run: rank<R>.json per worker
EXPORT = "model.sparse.pt"      # the exported sparse model (dsr-tune export)

_TMP = ".tmp-"  # temporary files: .<name>.tmp-<pid>


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (text, bytes, or a function that writes to a binary file)
    to ``path`` atomically and durably; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=1, default=str) + "\n")


def read_json(path: str | Path) -> dict | None:
    """A JSON file's object, or None when it is missing or torn."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove temporary files in ``folder`` whose writer process is gone
    (a run killed mid-save); returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        head, sep, pid = p.name.rpartition(_TMP)
        if sep and head.startswith(".") and pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------- records


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def record_line(record: dict) -> str:
    """One record as a metrics.jsonl line (non-finite numbers as null)."""
    return json.dumps({k: _clean(v) for k, v in record.items()}) + "\n"


def read_records(path: str | Path) -> list[dict]:
    """Every record of a metrics.jsonl (a folder: its metrics.jsonl); a torn
    last line from a crash is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_records(path: str | Path, records: Iterable[dict]) -> Path:
    """Replace a metrics.jsonl with ``records`` (atomically)."""
    return atomic_write(path, "".join(record_line(r) for r in records))


def epochs(run_dir: str | Path) -> list[dict]:
    return [r for r in read_records(run_dir) if r.get("kind") == "epoch"]


def last_epoch(run_dir: str | Path) -> dict | None:
    """The last epoch record of a run folder, with ``epochs_done``; None if none."""
    found = epochs(run_dir)
    if not found:
        return None
    return {**found[-1], "epochs_done": found[-1]["epoch"] + 1}


def has_run(run_dir: str | Path) -> bool:
    """The folder holds a complete checkpoint of a run (something to lose)."""
    return (Path(run_dir) / CHECKPOINT).is_file()
