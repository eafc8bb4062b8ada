"""The metric-logger interface and its JSON-lines implementation.

A record is a dict with ``kind`` = "epoch" or "realloc". Trackers (MLflow,
Ray) implement the same three methods; the trainer calls them on rank 0 only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    def log_params(self, params: dict) -> None: ...
    def log_record(self, record: dict) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class JsonlLogger:
    """Appends one JSON object per record to ``metrics.jsonl``, flushed each time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)

    def log_params(self, params: dict) -> None:
        pass  # the resolved config.yaml beside the file holds them

    def log_record(self, record: dict) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def close(self, status: str = "FINISHED") -> None:
        self._f.close()


def read_records(path: str | Path) -> list[dict]:
    """Every record of a metrics.jsonl (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_records(path: str | Path, epoch: int, step: int) -> None:
    """Keep only what a checkpoint at (``epoch`` done, ``step``) has seen, so a
    resumed run does not log the lost part of an epoch twice."""
    path = Path(path)
    keep = [r for r in read_records(path)
            if (r.get("kind") == "epoch" and r["epoch"] < epoch)
            or (r.get("kind") == "realloc" and r["step"] <= step)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in keep))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
