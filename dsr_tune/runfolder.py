"""The run folder and the sweep folder: their file names, the one atomic write, reading records.

Every file the tool writes in a run folder, a sweep folder or a local
checkpoint storage is named here and written with :func:`atomic_write` (or
:func:`atomic_copy`, which goes through it): a temporary file in the same
folder, flushed and fsynced, renamed over the target, and the folder fsynced,
so a crash at any instant leaves either the old file or the new one, never
half of one. Nothing else in the package renames files into place.

A write that fails (disk full, a read-only or unwritable folder, an I/O
error) raises :class:`StorageError` naming the file: the previous version
of the file is untouched and no temporary is left. The metrics log is the
one file appended to (:func:`append_line`): a record is in it whole or not
at all.

Temporary files follow one scheme, ``.<name>.tmp-<pid>`` (:func:`temp_path`:
the writer's pid); :func:`clean_stale` removes those whose writer is gone (a
run killed while saving), or all of them in a folder the starting process
owns alone, when a run, a sweep or a worker group starts again.

Torch-free and stdlib-only: reports, sync and the CLI read run folders
without importing torch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from .records import EPOCH

# ---------------------------------------------------------------- names

# a run folder
CONFIG = "config.yaml"          # the resolved config of the run
METRICS = "metrics.jsonl"       # one JSON record per line: epoch and realloc records (dsr_tune.records)
CHECKPOINT = "checkpoint.pt"    # the latest finished epoch: everything to continue exactly
INIT = "init.pt"                # the initial weights and masks (the ablations start from them)
RESULT = "result.json"          # a comparison run's summary, written when it finished
TRACKING = "tracking.json"      # a sweep run's identity and MLflow state: key, name, tags, status, run id, synced
OFFLINE = "mlflow_offline.json"  # MLflow lost records of this run (dsr-tune sync logs them)
RAY_RUN = "ray_run.json"        # a Ray Train run: its name and where its checkpoints live
WORKERS = "ray_workers"         # a Ray Train run: rank<R>.json per worker (:func:`worker_file`)
RAY_STORAGE = "ray"             # a Ray Train run's checkpoint storage when train.storage_path is unset
EXPORT = "model.sparse.pt"      # the exported sparse model (dsr-tune export)

# a Ray Train checkpoint folder in storage (epoch_<5 digits>/): the run record beside the checkpoint
MANIFEST = "manifest.json"      # {"epoch": N, "files": {name: size}}: a cut-off upload is skipped
RUN_RECORD = (METRICS, CONFIG)  # the files that follow the checkpoint around

# a sweep folder
SWEEP = "sweep.json"            # the sweep's identity, phases done, status and tracker
PAIRED = "paired.json"          # the paired runs (baselines, fresh seeds) planned so far
STUDY = "optuna.db"             # the Optuna study (SQLite; -journal, -wal, -shm beside it)
RUNS = "runs"                   # one run folder per trial or paired run
RAY_TRAIN = "ray_train"         # Ray Train's checkpoint storage of the sweep's runs
TUNE = "tune"                   # Ray Tune's experiment state, one folder per phase
REPORTS = ("report", "results")  # stems of report files (report.md, report_dynamics_s0.9.png; results.* of 0.1)


def worker_file(rank: int) -> str:
    """The file of Ray Train worker ``rank`` in a run folder's :data:`WORKERS`."""
    return f"rank{rank}.json"


# ---------------------------------------------------------------- the one atomic write

_TMP = ".tmp-"  # temporary files: .<name>.tmp-<pid>


def temp_path(path: str | Path) -> Path:
    """The temporary name this process writes ``path`` under (``.<name>.tmp-<pid>``,
    beside it); :func:`clean_stale` removes it once this process is gone."""
    path = Path(path)
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}")


def temp_writer(name: str) -> int | None:
    """The writer's pid of a temporary file named by :func:`temp_path`, else None."""
    head, sep, pid = name.rpartition(_TMP)
    return int(pid) if sep and head.startswith(".") and len(head) > 1 and pid.isdigit() else None


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


class StorageError(OSError):
    """A file of a run, sweep or checkpoint folder could not be written: ``path``
    and the OS error (``cause``: no space left, a read-only file system, no
    permission, ...). Whatever was there before is intact. Still an OSError
    (same errno), so code that handles OSError handles it; the CLI reports it
    in one line, a sweep can mark the trial failed with :attr:`reason`.
    ``epochs_kept``: set by the trainer, the epochs the run's last complete
    checkpoint holds (None: it wrote none)."""

    def __init__(self, path: str | Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path, self.cause = Path(path), cause
        self.epochs_kept: int | None = None

    @property
    def reason(self) -> str:
        return self.cause.strerror or str(self.cause) or type(self.cause).__name__

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


class _Watched:
    """The temporary file as a writer sees it, remembering a failed write:
    torch.save reports one only as RuntimeError('unexpected pos ...')."""

    def __init__(self, f: IO[bytes]):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _ours(exc: OSError, path: Path, tmp: Path) -> bool:
    """The error is about writing ``path`` (not, e.g., about a file being copied from)."""
    return exc.filename is None or Path(exc.filename) in (tmp, path, *path.parents)


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (text, bytes, or a function that writes to a binary file)
    to ``path`` atomically and durably; returns the path. A failed write
    raises :class:`StorageError` and leaves the previous file as it was."""
    path = Path(path)
    tmp = temp_path(path)
    watched = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            watched = _Watched(f)
            if callable(data):
                data(watched)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except StorageError:
        raise
    except OSError as exc:
        if not _ours(exc, path, tmp):
            raise
        raise StorageError(path, exc) from exc
    except Exception as exc:  # a writer that hid the failed write (torch.save)
        if watched is None or watched.error is None:
            raise
        raise StorageError(path, watched.error) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that cannot be written holds no temporary either
    return path


def writable(folder: str | Path) -> None:
    """Check that files can be written in ``folder`` (made if missing), before
    a long command starts, and leave the file system as it was; raises
    :class:`StorageError` naming the folder and why. The probe is a temporary
    file (:func:`temp_path`): one left by a kill goes at the next start."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    probe = temp_path(folder / ".write-probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise StorageError(folder, exc) from exc
    finally:
        try:
            probe.unlink(missing_ok=True)
            for p in made:
                p.rmdir()
        except OSError:
            pass  # a folder that could not be made or written holds nothing to remove


def atomic_copy(src, dst: str | Path, opener: Callable[[object], IO[bytes]] | None = None) -> Path:
    """Copy ``src`` over ``dst`` with :func:`atomic_write`. ``opener(src)`` opens
    the source (default: a local file; e.g. a pyarrow file system's
    ``open_input_stream`` for a file in remote storage)."""
    def copy(f: IO[bytes]) -> None:
        with (opener or _open_binary)(src) as source:
            shutil.copyfileobj(source, f, 1 << 20)

    return atomic_write(dst, copy)


def _open_binary(path) -> IO[bytes]:
    return open(path, "rb")


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure written with :func:`atomic_write` (format from the suffix)."""
    path = Path(path)
    return atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png"))


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


def clean_stale(folder: str | Path, *, owned: bool = False) -> list[Path]:
    """Remove the temporary files (and staging folders) in ``folder`` whose
    writer process is gone, a run killed mid-save; with ``owned`` (the starting
    process is the folder's only writer, e.g. a restarted worker group whose
    writer may have run on another node) every one. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        pid = temp_writer(p.name)
        if pid is None or (not owned and _alive(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
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


def append_line(fd: int, path: Path, line: str) -> None:
    """Append ``line`` to the file open as ``fd`` (O_APPEND) whole or not at all:
    after a failed write (disk full) the file is cut back to where it was, so
    no torn record is left for a later append to run into."""
    data = line.encode()
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        try:
            os.ftruncate(fd, end)
        except OSError:
            pass  # read_records skips a torn last line all the same
        raise StorageError(path, exc) from exc


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
    return [r for r in read_records(run_dir) if r.get("kind") == EPOCH]


def last_epoch(run_dir: str | Path) -> dict | None:
    """The last epoch record of a run folder, with ``epochs_done``; None if none."""
    found = epochs(run_dir)
    if not found:
        return None
    return {**found[-1], "epochs_done": found[-1]["epoch"] + 1}


#: an epoch record's cost so far (see dsr_tune.train.flops): cumulative training FLOPs, inference
#: FLOPs per image of the model at the epoch's end, cumulative seconds of epochs and of reallocations
COST_KEYS = ("train_flops", "infer_flops", "train_time", "realloc_time", "device")


def costs(run_dir: str | Path) -> dict | None:
    """What a run cost up to its last finished epoch, from its records (no
    torch): :data:`COST_KEYS` (None where the records lack one), ``epochs_done``
    and ``export_bytes``, the size of its sparse export (None without one).
    None before the first epoch. A derived run's parent (``gmp.dense_from``,
    ``mask_from``, ``init_from`` in its config) is a run folder of its own."""
    last = last_epoch(run_dir)
    if last is None:
        return None
    export = Path(run_dir) / EXPORT
    return {**{k: last.get(k) for k in COST_KEYS}, "epochs_done": last["epochs_done"],
            "export_bytes": export.stat().st_size if export.is_file() else None}


def has_run(run_dir: str | Path) -> bool:
    """The folder holds a complete checkpoint of a run (something to lose)."""
    return (Path(run_dir) / CHECKPOINT).is_file()


def run_file(run: str | Path, name: str) -> Path:
    """``run`` is a run folder (take ``name`` in it) or a file itself."""
    path = Path(run).expanduser()
    return path / name if path.is_dir() else path


def require_run_file(key: str, value: str, name: str) -> None:
    """A run-folder key (``sparsity.mask_from``, ...) points at a folder holding ``name`` or at such a file."""
    from .schema import ConfigError

    if not run_file(value, name).is_file():
        raise ConfigError(key, f"{value!r} is not a run folder holding {name} (nor such a file)")
