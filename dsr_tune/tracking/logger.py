"""The live MLflow metric logger: built on rank 0 inside a Ray Train worker.

:class:`MlflowLoggerSpec` is the picklable recipe the sweep ships with the
trial (``dsr_tune.distributed.fit(logger_specs=...)``); its ``make()`` builds
an :class:`MlflowLogger` at every (re)start of the worker group. The logger
logs the resolved config as params and each record as metrics (see
:func:`.mlflow_runs.record_metrics`), skipping steps the run already holds, so a
restarted worker group does not log an epoch twice.

It never slows training down nor stops it: every MLflow call (the import,
about 2 s, included) runs on a background thread fed by a queue, so
training starts at once and a slow server only delays the records. The
first MLflow error switches the logger off for the rest of the run and
writes ``mlflow_offline.json`` into the run folder; the records stay in
metrics.jsonl, and ``dsr-tune sync`` logs them later.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import runfolder
from ..records import EPOCH, REALLOC, Status
from . import mlflow_runs, store

log = logging.getLogger("dsr_tune")

OFFLINE_FILE = runfolder.OFFLINE
CLOSE_WAIT_S = 60.0  # close() waits this long for the queue to drain


@dataclass(frozen=True)
class MlflowLoggerSpec:
    """What a worker needs to log into one MLflow run: its ``run_id``, or the
    ``key`` tag of a run the trial is creating meanwhile (in ``experiment_id``;
    the logger waits up to ``wait_s`` for it to appear)."""

    uri: str
    run_dir: str  # absolute: where the offline marker goes
    run_id: str | None = None
    experiment_id: str | None = None
    key: str | None = None
    wait_s: float = 120.0

    def make(self) -> MlflowLogger:
        return MlflowLogger(self)


def mark_offline(run_dir: str | Path, uri: str, error: BaseException | str) -> None:
    """Note in the run folder that MLflow lost records of this run."""
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    note = {"uri": store.redact(uri), "error": store.redact(text), "time": time.time()}
    runfolder.atomic_write(Path(run_dir) / OFFLINE_FILE, json.dumps(note) + "\n")


def offline_reason(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / OFFLINE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("error", "unknown error")
    except (OSError, json.JSONDecodeError):
        return "unknown error"


class MlflowLogger:
    """A :class:`dsr_tune.train.metrics.MetricLogger` writing to one MLflow run
    from a background thread. Reallocation records are sent with the next
    epoch record (one call per epoch, not one per reallocation)."""

    def __init__(self, spec: MlflowLoggerSpec):
        self.spec = spec
        self.run_id = spec.run_id
        self._client = None
        self._failed = False
        self._done: dict[str, set[int]] = {}
        self._params: dict[str, str] = {}
        self._buffer: list[tuple[str, float, int]] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    @property
    def online(self) -> bool:
        return not self._failed

    # -- the trainer's side: never blocks

    def log_params(self, params: dict) -> None:
        self._queue.put(("params", dict(params)))

    def log_record(self, record: dict) -> None:
        self._queue.put(("record", record))

    def close(self, status: str = Status.FINISHED) -> None:
        # the trial sets the run's status once it knows the outcome (a worker
        # group restart is not the end of the run)
        self._queue.put(None)
        self._thread.join(CLOSE_WAIT_S)
        if self._thread.is_alive():
            self._offline(TimeoutError(f"MLflow did not take the records within {CLOSE_WAIT_S:.0f} s"))

    # -- the background thread

    def _run(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001 (any MLflow or network error: go offline)
            self._offline(exc)
        while (item := self._queue.get()) is not None:
            if self._failed:
                continue
            try:
                self._handle(*item)
            except Exception as exc:  # noqa: BLE001
                self._offline(exc)
        if not self._failed:
            try:
                self._flush()
            except Exception as exc:  # noqa: BLE001
                self._offline(exc)

    def _connect(self) -> None:
        self._client = store.client(store.Target(self.spec.uri))
        deadline = time.monotonic() + self.spec.wait_s
        while self.run_id is None:  # the trial creates the run while the worker group starts
            run = mlflow_runs.find(self._client, self.spec.experiment_id, self.spec.key)
            if run is not None:
                self.run_id = run.info.run_id
            elif time.monotonic() > deadline:
                raise TimeoutError(f"no MLflow run tagged {self.spec.key!r} after {self.spec.wait_s:.0f} s")
            else:
                time.sleep(0.5)
        self._params = dict(self._client.get_run(self.run_id).data.params)
        self._done = mlflow_runs.logged_steps(self._client, self.run_id, ("epoch", mlflow_runs.REALLOC + "pruned"))

    def _handle(self, kind: str, payload: dict) -> None:
        if kind == "params":
            mlflow_runs.log_params(self._client, self.run_id, payload, existing=self._params)
        elif payload.get("kind") == REALLOC:
            if self._new(mlflow_runs.REALLOC + "pruned", int(payload["step"])):
                self._buffer += mlflow_runs.record_metrics(payload)
        elif payload.get("kind") == EPOCH and self._new("epoch", int(payload["epoch"]) + 1):
            self._buffer += mlflow_runs.record_metrics(payload)
            self._flush()

    def _new(self, key: str, step: int) -> bool:
        done = self._done.get(key)
        return not done or step > max(done)

    def _flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            mlflow_runs.log_metrics(self._client, self.run_id, batch)

    def _offline(self, exc: BaseException) -> None:
        if self._failed:
            return
        self._failed = True
        reason = store.describe(exc, self.spec.uri)
        log.warning("%s; this run keeps logging to metrics.jsonl only (dsr-tune sync logs it later)", reason)
        try:
            mark_offline(self.spec.run_dir, self.spec.uri, reason)
        except OSError as exc:  # a full disk: the trainer reports it when it writes its own files
            log.warning("%s (MLflow's offline mark not written)", exc)
