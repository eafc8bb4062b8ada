"""A sweep's view of MLflow: its experiment, its parent run, a child per trial.

:class:`SweepTracker` holds only strings, so it travels to Tune trials.
The sweep driver calls :meth:`SweepTracker.connect` (experiment and parent
run); each trial calls :meth:`child` before training and :meth:`finish`
after. Every method returns instead of raising when MLflow fails: the
failure is written to the run folder's ``tracking.json`` (``synced: false``)
and ``dsr-tune sync`` logs the run later from that folder (:meth:`sync`).

Before a trial's first and last call an HTTP store is probed (GET /health,
2 s): a dead server costs a trial 2 s, not a round of retries per call.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ..records import Role, Status
from . import mlflow_runs, store
from .replay import SyncSummary, replay as replay_folder
from .mlflow_runs import read_run_file, update_run_file

log = logging.getLogger("dsr_tune")

PROBE_S = 2.0  # a tracking server that does not answer /health within this is skipped
FAILURE = "failure"  # tracking.json field and MLflow tag: why the trial gave its run up (a storage fault)


@dataclass
class SweepTracker:
    """MLflow bookkeeping for one sweep (picklable; connects lazily)."""

    target: store.Target
    experiment: str
    sweep_id: str
    git: str | None = None
    experiment_id: str | None = None
    parent_id: str | None = None
    error: str | None = None  # why MLflow is unusable, set by connect()

    def _client(self):
        return store.client(self.target)

    def _live_client(self):
        """A client, after a quick probe of the store; ConnectionError (saying
        why) when it cannot be used right now."""
        down = store.probe(self.target, timeout=PROBE_S)
        if down:
            raise ConnectionError(down)
        return self._client()

    def connect(self, params: dict | None = None, reopen: bool = True) -> str | None:
        """Driver side: the experiment and the sweep's parent run (found by tag
        or created). Returns None, or the reason MLflow cannot be used now."""
        self.error = store.probe(self.target)
        if self.error:
            return self.error
        try:
            client = self._client()
            self.experiment_id = store.experiment_id(client, self.experiment, self.target, description=(
                "dsr_tune: dynamic sparse reparameterization against its baselines. A parent run per sweep "
                "(its report: report.md, report.png), a child run per trial and per reported run; the "
                "group tag joins a selected configuration, its seed repeats and its baselines."))
            self.parent_id = mlflow_runs.find_or_create(
                client, self.experiment_id, mlflow_runs.run_key(self.sweep_id, Role.PARENT), self.sweep_id,
                tags={**self._sweep_tags(), mlflow_runs.TAG_ROLE: Role.PARENT,
                      store.DESCRIPTION_TAG: f"The sweep {self.sweep_id}: its settings are this run's params, "
                                             "its comparison table the report/ artifacts and the "
                                             "`s<sparsity>/<row>/*` metrics (e.g. `s0.9/static_2x/mean`)."},
                reopen=reopen)
            if params:
                mlflow_runs.log_params(client, self.parent_id, params)
        except Exception as exc:  # noqa: BLE001 (any MLflow or network failure)
            self.error = store.describe(exc, self.target.uri)
            self.experiment_id = self.parent_id = None
        return self.error

    def _sweep_tags(self) -> dict:
        return {mlflow_runs.TAG_SWEEP: self.sweep_id, mlflow_runs.TAG_GIT: self.git,
                mlflow_runs.TAG_GIT_MLFLOW: (self.git or "").removesuffix("-dirty") or None}

    def child_tags(self, identity: dict) -> dict:
        tags = self._sweep_tags()
        tags.update({k: v for k, v in identity.get("tags", {}).items() if v is not None})
        if identity.get("description"):
            tags[store.DESCRIPTION_TAG] = identity["description"]
        if identity.get(FAILURE) and identity.get("status") == Status.FAILED:  # sync of a run given up on
            tags[FAILURE] = identity[FAILURE]
        return tags

    def child(self, run_dir: str | Path, identity: dict) -> str | None:
        """Trial side: the child run of ``identity`` (key, run_name, tags),
        created once; its id is kept in the run folder. None when offline."""
        failed = (read_run_file(run_dir) or {}).get(FAILURE)  # given up on before: it runs again
        update_run_file(run_dir, **identity, status=Status.RUNNING, synced=False, **({FAILURE: None} if failed else {}))
        if self.parent_id is None:
            update_run_file(run_dir, error=self.error or "MLflow was unreachable when the sweep started")
            return None
        try:
            client = self._live_client()
            key = mlflow_runs.run_key(self.sweep_id, identity["key"])
            run_id = mlflow_runs.find_or_create(client, self.experiment_id, key, identity["run_name"],
                                                self.child_tags(identity), parent_id=self.parent_id)
            if failed:
                with contextlib.suppress(Exception):  # not there: the run failed while MLflow was away
                    client.delete_tag(run_id, FAILURE)
        except Exception as exc:  # noqa: BLE001
            msg = store.describe(exc, self.target.uri)
            log.warning("%s; trial %s trains anyway (dsr-tune sync logs it later)", msg, identity["key"])
            update_run_file(run_dir, error=msg)
            return None
        update_run_file(run_dir, run_id=run_id, error=None)
        return run_id

    def finish(self, run_dir: str | Path, run_id: str | None, status: str, replay: bool = False) -> bool:
        """After training (the trial, or the driver for a trial that never
        returned): artifacts and the run's final status; with ``replay`` also
        the params and metrics the run folder has and MLflow lacks (no live
        logger ran, or it was cut off; idempotent). True when MLflow holds the
        whole run."""
        from .logger import offline_reason

        update_run_file(run_dir, status=status)
        if run_id is None:
            return False
        try:
            client = self._live_client()
            if replay:
                self.sync(client, Path(run_dir), SyncSummary())
                return True
            if status == Status.FINISHED:
                from .artifacts import log_files

                log_files(client, run_id, run_dir, title=(read_run_file(run_dir) or {}).get("run_name", ""))
            client.set_terminated(run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            update_run_file(run_dir, error=store.describe(exc, self.target.uri))
            return False
        lost = offline_reason(run_dir)
        update_run_file(run_dir, synced=lost is None, error=lost)
        return lost is None

    def fail(self, run_dir: str | Path, reason: str) -> None:
        """A run its trial gave up on because its run folder could not be written:
        FAILED, with ``reason`` in tracking.json (as far as the folder still takes
        writes) and as the MLflow run's ``failure`` tag. Never raises."""
        run_id = (read_run_file(run_dir) or {}).get("run_id")
        with contextlib.suppress(OSError):
            update_run_file(run_dir, status=Status.FAILED, **{FAILURE: reason})
        if run_id is None or self.parent_id is None:
            return
        try:
            client = self._live_client()
            client.set_tag(run_id, FAILURE, reason)
            client.set_terminated(run_id, status=Status.FAILED)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s; the run folder %s keeps the failure", store.describe(exc, self.target.uri), run_dir)

    def sync(self, client, run_dir: Path, summary: SyncSummary) -> None:
        """Replay ``run_dir`` into its child run, found by tag or created under the parent (idempotent)."""
        info = read_run_file(run_dir) or {}
        key = mlflow_runs.run_key(self.sweep_id, info["key"])
        run_id, created = mlflow_runs.ensure(client, self.experiment_id, key, info["run_name"], self.child_tags(info),
                                             parent_id=self.parent_id, reopen=False)
        summary.created += created
        replay_folder(client, run_id, run_dir, summary)

    def close_parent(self, status: str, artifacts: dict[str, Path] | None = None) -> str | None:
        """Driver side: the parent's status and report files. Returns an error or None."""
        if self.parent_id is None:
            return self.error
        try:
            client = self._client()
            for name, path in (artifacts or {}).items():
                client.log_artifact(self.parent_id, str(path))
            client.set_terminated(self.parent_id, status=status)
        except Exception as exc:  # noqa: BLE001
            return store.describe(exc, self.target.uri)
        return None

    def to_json(self) -> dict:
        """What sweep.json keeps: no credentials (see :func:`.store.with_credentials`)."""
        d = asdict(self)
        d["target"] = asdict(self.target)
        d["target"]["uri"] = store.redact(self.target.uri)
        return d

    @classmethod
    def from_json(cls, d: dict) -> SweepTracker:
        d = dict(d)
        d["target"] = store.Target(**d["target"])
        return cls(**d)
