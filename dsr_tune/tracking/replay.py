"""Replay one run folder into its MLflow run: what ``dsr-tune sync`` and a
trial that ran without a live logger both do. Idempotent: params, metric
steps and artifacts MLflow already holds are not logged again. Which run
that is (found by tag, or created under the sweep's parent) is the
tracker's business: :meth:`~.tracker.SweepTracker.sync`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import runfolder
from ..records import SCORED, TERMINAL, Status
from . import mlflow_runs
from .logger import OFFLINE_FILE
from .mlflow_runs import read_run_file, update_run_file


@dataclass
class SyncSummary:
    runs: int = 0            # run folders looked at
    created: int = 0         # MLflow runs that did not exist
    metrics: int = 0         # metric values logged
    params: int = 0
    artifacts: int = 0
    failed: list[str] = field(default_factory=list)  # run keys that still failed
    running: int = 0         # left alone: still RUNNING (their trial may be logging them)


def replay(client, run_id: str, run_dir: Path, summary: SyncSummary) -> None:
    """Make MLflow's run ``run_id`` hold everything ``run_dir`` has (idempotent)."""
    from .artifacts import log_files

    info = read_run_file(run_dir) or {}
    replay_records(client, run_id, run_dir, summary)
    status = info.get("status")
    if status in SCORED:  # KILLED: stopped early by ASHA; its model is not the final one
        summary.artifacts += log_files(client, run_id, run_dir, title=info["run_name"], model=status == Status.FINISHED)
    if status in TERMINAL and client.get_run(run_id).info.status != status:  # again: a new end time
        client.set_terminated(run_id, status=status)
    (run_dir / OFFLINE_FILE).unlink(missing_ok=True)
    update_run_file(run_dir, run_id=run_id, synced=status in TERMINAL, error=None)


def replay_records(client, run_id: str, run_dir: Path, summary: SyncSummary) -> None:
    """The params and metric steps of ``run_dir`` that ``run_id`` lacks."""
    from .. import config as C

    if (run_dir / runfolder.CONFIG).exists():
        last = runfolder.last_epoch(run_dir) or {}  # the device, as the trainer logs it (records name it)
        device = {"device": last["device"]} if last.get("device") else {}
        summary.params += mlflow_runs.log_params(client, run_id, C.load(run_dir / runfolder.CONFIG).flat() | device)
    triples = [t for r in runfolder.read_records(run_dir) for t in mlflow_runs.record_metrics(r)]
    done = mlflow_runs.logged_steps(client, run_id, {k for k, _, _ in triples})
    summary.metrics += mlflow_runs.log_metrics(client, run_id, triples, skip=done)
