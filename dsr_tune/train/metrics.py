"""The metric-logger interface, its JSON-lines implementation, the progress line.

A record is a :mod:`dsr_tune.records` record (epoch or realloc). Trackers (MLflow,
Ray) implement the same three methods; the trainer calls them on rank 0 only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..records import EPOCH, Status
from ..runfolder import StorageError, append_line, record_line


class MetricLogger(Protocol):
    def log_params(self, params: dict) -> None: ...
    def log_record(self, record: dict) -> None: ...
    def close(self, status: str = Status.FINISHED) -> None: ...


class JsonlLogger:
    """Appends one JSON object per record to ``metrics.jsonl``, each written
    whole or not at all (a full disk raises :class:`StorageError`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(self.path, exc) from exc

    def log_params(self, params: dict) -> None:
        pass  # the resolved config.yaml beside the file holds them

    def log_record(self, record: dict) -> None:
        append_line(self._fd, self.path, record_line(record))

    def close(self, status: str = Status.FINISHED) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def duration(seconds: float) -> str:
    """``4m17s``, ``1h05m``, ``9s``: an ETA as progress lines print it."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(record: dict, records: list[dict], epochs: int, epoch_s: float) -> str:
    """The epoch's line: loss, accuracies (validation first: what selection
    reads), the budget, LR, throughput, the best validation accuracy so far
    and the run's ETA (``epoch_s``: mean seconds per epoch of this process)."""
    e = record["epoch"]
    parts = [f"epoch {e + 1}/{epochs}", f"loss {record['train_loss']:.4f}", f"train {100 * record['train_acc']:.2f}%"]
    if "val_acc" in record:
        best = max(r["val_acc"] for r in records if r.get("kind") == EPOCH and "val_acc" in r)
        parts.append(f"val {100 * record['val_acc']:.2f}% (best {100 * best:.2f}%)")
    test = f"test {100 * record['test_acc']:.2f}%"
    if "test_acc5" in record:
        test += f" (top-5 {100 * record['test_acc5']:.2f}%)"
    parts += [test, f"nonzero {record['nonzero_params']}", f"lr {record['lr']:.4g}",
              f"{record['samples_per_s']:.0f} samples/s", f"ETA {duration(epoch_s * (epochs - e - 1))}"]
    return "  ".join(parts)
