"""``dsr-tune sync``: log what MLflow lost, from a sweep's run folders.

The sweep's tracker comes back from ``sweep.json``; each run folder (one
holding ``tracking.json``) is replayed into its child run, which logs only
what MLflow does not hold yet, so running it twice logs nothing the second
time. A run still marked RUNNING is left alone (its trial may be logging it
right now) unless ``everything`` is asked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import runfolder
from ..records import TERMINAL
from . import store
from .replay import SyncSummary
from .mlflow_runs import read_run_file
from .tracker import SweepTracker

log = logging.getLogger("dsr_tune")

SWEEP_FILE = runfolder.SWEEP


class SyncError(RuntimeError):
    """The store cannot be reached or the folder is not a sweep."""


def load_tracker(sweep_dir: str | Path, uri: str | None = None) -> SweepTracker:
    """The sweep's tracker from its sweep.json; ``uri`` moves it to another store."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise SyncError(f"{sweep_dir} is not a sweep folder (no {SWEEP_FILE}) nor the run folder of dsr-tune "
                        f"train (no {runfolder.TRACKING} of one)")
    tracker = SweepTracker.from_json(json.loads(path.read_text())["tracker"])
    tracker.target = store.resolve(uri) if uri else store.with_credentials(tracker.target)
    tracker.experiment_id = tracker.parent_id = None
    return tracker


def run_folders(sweep_dir: str | Path) -> list[Path]:
    """Every run folder of a sweep (those holding a tracking.json), sorted."""
    return sorted(p.parent for p in (Path(sweep_dir) / runfolder.RUNS).glob(f"**/{runfolder.TRACKING}"))


def sync_sweep(sweep_dir: str | Path, uri: str | None = None, everything: bool = False) -> SyncSummary:
    """Sync every ended run folder not marked synced (every run folder, the
    RUNNING ones included, with ``everything``; every ended one when moving
    to another store with ``uri``). ``sweep_dir`` may also be the run folder
    of a ``dsr-tune train`` run."""
    from .trainrun import TrainTracker

    train = TrainTracker.load(sweep_dir, uri)
    if train is not None:
        return _sync_train(train, everything)
    tracker = load_tracker(sweep_dir, uri)
    meta = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    # a parent created here gets the params the sweep gives a live one (sweep.json keeps them)
    error = tracker.connect(meta.get("parent_params"), reopen=False)
    if error:
        raise SyncError(error)
    client = store.client(tracker.target)
    status = meta.get("status")
    # a parent created here (the sweep ran offline) gets the sweep's outcome; once (again: a new end time)
    if status in TERMINAL and client.get_run(tracker.parent_id).info.status != status:
        client.set_terminated(tracker.parent_id, status=status)
    summary = SyncSummary()
    for run_dir in run_folders(sweep_dir):
        info = read_run_file(run_dir) or {}
        if "key" not in info or (info.get("synced") and not everything and not uri):
            continue
        if info.get("status") not in TERMINAL and not everything:
            summary.running += 1  # its trial may still be logging it
            continue
        summary.runs += 1
        try:
            tracker.sync(client, run_dir, summary)
        except Exception as exc:  # noqa: BLE001 (report it, go on with the other runs)
            log.warning("sync of %s failed: %s", run_dir, str(exc).splitlines()[0] if str(exc) else exc)
            summary.failed.append(info["key"])
    return summary


def _sync_train(tracker, everything: bool) -> SyncSummary:
    """A ``dsr-tune train`` run folder: the run's records, artifacts and status (left alone while RUNNING)."""
    summary = SyncSummary()
    status = (read_run_file(tracker.run_dir) or {}).get("status")
    if status not in TERMINAL and not everything:
        summary.running += 1
        return summary
    summary.runs += 1
    error = tracker.close(status if status in TERMINAL else Status.RUNNING, summary, refresh=False)
    if error:
        raise SyncError(error)
    return summary
