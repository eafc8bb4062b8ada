"""MLflow runs of a sweep: a parent per sweep, a child per trial, found by tag.

Every run carries the tag ``dsr_tune.run = <sweep id>/<key>`` (``parent`` for
the sweep's own run, the trial's job key for a child). Runs are looked up by
that tag before one is created, so a restarted trial, a resumed sweep or
``dsr-tune sync`` never makes a second run for the same trial.

Records (dicts from the trainer, see :mod:`dsr_tune.train.metrics`) become
metrics by :func:`record_metrics`: epoch records at step = epochs done,
reallocation records at step = the global training step. Both the live logger
and ``sync`` use it, and both skip (key, step) pairs already logged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from .. import runfolder
from ..records import EPOCH_METRICS, LAYER_TOTALS, REALLOC_METRICS, Status, turnover
from ..records import EPOCH as EPOCH_KIND, REALLOC as REALLOC_KIND



def read_run_file(run_dir: str | Path) -> dict | None:
    return runfolder.read_json(Path(run_dir) / runfolder.TRACKING)


def update_run_file(run_dir: str | Path, **fields) -> dict:
    """Merge ``fields`` into the run folder's tracking.json (atomic rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = read_run_file(run_dir) or {}
    data.update(fields)
    runfolder.write_json(run_dir / runfolder.TRACKING, data)
    return data

TAG_RUN = "dsr_tune.run"          # <sweep id>/<key>: the identity of a run
TAG_SWEEP = "sweep"               # the sweep id, on the parent and every child
TAG_ROLE = "role"                 # a dsr_tune.records.Role
TAG_GIT = "git_revision"
TAG_GIT_MLFLOW = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
EPOCH_KEYS, REALLOC_KEYS = EPOCH_METRICS, REALLOC_METRICS  # what becomes a metric (dsr_tune.records)
EPOCH, REALLOC = "epoch/", "realloc/"  # metric-name prefixes: per epoch, per reallocation
MAX_PARAMS = 100   # MLflow's limits per log_batch call
MAX_METRICS = 1000


def run_key(sweep_id: str, key: str) -> str:
    return f"{sweep_id}/{key}"


def find(client, experiment_id: str, key: str):
    """The run tagged ``dsr_tune.run = key`` (oldest first if several), or None."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_RUN}` = '{key}'",
                              order_by=["attributes.start_time ASC"], max_results=5)
    return runs[0] if runs else None


def find_or_create(client, experiment_id: str, key: str, run_name: str, tags: dict[str, str],
                   parent_id: str | None = None, reopen: bool = True) -> str:
    """The run id for ``key``: the existing run (its tags refreshed; with
    ``reopen``, set RUNNING again: a restarted trial) or a new one."""
    return ensure(client, experiment_id, key, run_name, tags, parent_id, reopen)[0]


def ensure(client, experiment_id: str, key: str, run_name: str, tags: dict[str, str],
           parent_id: str | None = None, reopen: bool = True) -> tuple[str, bool]:
    """:func:`find_or_create`, plus whether the run was created here."""
    tags = {k: str(v) for k, v in tags.items() if v is not None}
    tags[TAG_RUN] = key
    if parent_id:
        tags[TAG_PARENT] = parent_id
    run = find(client, experiment_id, key)
    if run is None:
        return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id, True
    from mlflow.entities import RunTag

    stale = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
    if stale:
        client.log_batch(run.info.run_id, tags=stale)
    if reopen and run.info.status != Status.RUNNING:
        client.update_run(run.info.run_id, status=Status.RUNNING)
    return run.info.run_id, False


def log_params(client, run_id: str, params: dict, existing: dict[str, str] | None = None) -> int:
    """Log the params ``run_id`` does not hold yet (MLflow refuses to change
    one); values as strings, cut to MLflow's 6000 characters. Returns how many."""
    from mlflow.entities import Param

    if existing is None:
        existing = client.get_run(run_id).data.params
    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(todo), MAX_PARAMS):
        client.log_batch(run_id, params=todo[i:i + MAX_PARAMS])
    return len(todo)


def epoch_scalars(record: dict) -> dict:
    """An epoch record's scalar values plus ``epochs_done`` (1-based, stable across
    restarts: ASHA's time attribute): what a worker reports to Ray and Tune,
    and what the report reads back from a run folder."""
    out = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool)) and k != "kind"}
    out["epochs_done"] = int(record["epoch"]) + 1
    return out


def last_epoch(run_dir: str | Path) -> dict | None:
    """:func:`epoch_scalars` of a run folder's last epoch record, or None before the first."""
    found = runfolder.epochs(run_dir)
    return epoch_scalars(found[-1]) if found else None


def record_metrics(record: dict) -> list[tuple[str, float, int]]:
    """(key, value, step) triples of one trainer record. Their names say the
    x-axis: ``epoch/<key>`` at step = epochs done, ``realloc/<key>`` at step =
    the training iteration, ``density/<tensor>`` per epoch; ``epoch`` is the
    epochs done (what a chart of anything against epochs plots)."""
    out: list[tuple[str, float, int]] = []
    if record.get("kind") == EPOCH_KIND:
        step = int(record["epoch"]) + 1
        out += [(EPOCH + k, float(record[k]), step) for k in EPOCH_KEYS if isinstance(record.get(k), (int, float))]
        out.append(("epoch", float(step), step))
        for layer, d in (record.get("density") or {}).items():
            out.append((f"density/{layer}", float(d), step))
    elif record.get("kind") == REALLOC_KIND:
        step = int(record["step"])
        layers = (record.get("layers") or {}).values()
        for k in REALLOC_KEYS:
            value = record.get(k)
            if value is None and k in LAYER_TOTALS:  # a record with per-layer counts only
                value = sum(int(layer.get(k, 0)) for layer in layers)
            if isinstance(value, (int, float)):
                out.append((REALLOC + k, float(value), step))
        share = turnover(record)
        if share is not None:  # the share of the budget this reallocation moved
            out.append((REALLOC + "turnover", float(share), step))
    return out


def log_metrics(client, run_id: str, triples: Iterable[tuple[str, float, int]],
                skip: dict[str, set[int]] | None = None) -> int:
    """Log ``(key, value, step)`` triples, leaving out steps in ``skip[key]``. Returns how many."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    skip = skip or {}
    todo = [Metric(k, v, now, s) for k, v, s in triples if s not in skip.get(k, ())]
    for i in range(0, len(todo), MAX_METRICS):
        client.log_batch(run_id, metrics=todo[i:i + MAX_METRICS])
    return len(todo)


def logged_steps(client, run_id: str, keys: Iterable[str]) -> dict[str, set[int]]:
    """``{key: steps already logged}`` for the keys the run has."""
    have = client.get_run(run_id).data.metrics
    return {k: {m.step for m in client.get_metric_history(run_id, k)} for k in set(keys) if k in have}
