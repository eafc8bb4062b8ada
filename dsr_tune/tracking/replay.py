"""Replay one run folder into MLflow: what ``dsr-tune sync`` and a trial that
ran without a live logger both do. Idempotent: params, metric steps and
artifacts MLflow already holds are not logged again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runfolder
from . import runs
from .logger import OFFLINE_FILE
from .runs import TERMINAL, read_run_file, update_run_file

if TYPE_CHECKING:
    from .tracker import SweepTracker


@dataclass
class SyncSummary:
    runs: int = 0            # run folders looked at
    created: int = 0         # MLflow runs that did not exist
    metrics: int = 0         # metric values logged
    params: int = 0
    artifacts: int = 0
    failed: list[str] = field(default_factory=list)  # run keys that still failed
    running: int = 0         # left alone: still RUNNING (their trial may be logging them)


def replay(client, tracker: SweepTracker, run_dir: Path, summary: SyncSummary) -> None:
    """Make MLflow hold everything ``run_dir`` has (idempotent)."""
    from .artifacts import log_files

    info = read_run_file(run_dir) or {}
    run_id, created = runs.ensure(client, tracker.experiment_id, runs.run_key(tracker.sweep_id, info["key"]),
                                  info["run_name"], tracker.child_tags(info), parent_id=tracker.parent_id,
                                  reopen=False)
    summary.created += created
    replay_records(client, run_id, run_dir, summary)
    status = info.get("status")
    if status in ("FINISHED", "KILLED"):  # KILLED: stopped early by ASHA; its model is not the final one
        summary.artifacts += log_files(client, run_id, run_dir, title=info["run_name"], model=status == "FINISHED")
    if status in TERMINAL:
        client.set_terminated(run_id, status=status)
    (run_dir / OFFLINE_FILE).unlink(missing_ok=True)
    update_run_file(run_dir, run_id=run_id, synced=status in TERMINAL, error=None)


def replay_records(client, run_id: str, run_dir: Path, summary: SyncSummary) -> None:
    """The params and metric steps of ``run_dir`` that ``run_id`` lacks."""
    from .. import config as C

    if (run_dir / runfolder.CONFIG).exists():
        summary.params += runs.log_params(client, run_id, C.load(run_dir / runfolder.CONFIG).flat())
    triples = [t for r in runfolder.read_records(run_dir) for t in runs.record_metrics(r)]
    done = runs.logged_steps(client, run_id, {k for k, _, _ in triples})
    summary.metrics += runs.log_metrics(client, run_id, triples, skip=done)
