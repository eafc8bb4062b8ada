"""MLflow for ``dsr-tune train``: one MLflow run per run folder.

The experiment is named after the config file, the run after the run folder.
The run's identity is kept in the folder's tracking.json, as a sweep trial's
is (key, run name, tags, status, run id), plus the store and experiment, so
``--resume`` continues the same MLflow run (found by its key tag) and
``dsr-tune sync RUN_DIR`` can log it later.

MLflow never holds training up: in one process the run is opened on the live
logger's background thread (the first open of a new store takes seconds),
and the first failure switches the logger off with one warning. When
training ends, :meth:`TrainTracker.close` replays the folder into the run
(what the logger missed, and a resumed run's earlier epochs: idempotent),
logs the artifacts and the model of a finished run, and sets the status.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..records import TERMINAL, Status
from . import mlflow_runs as runs, store
from .logger import MlflowLogger, MlflowLoggerSpec
from .mlflow_runs import read_run_file, update_run_file

log = logging.getLogger("dsr_tune")

KIND = "train"   # tracking.json's "kind" for a train run folder (a sweep's run folders have none)
PROBE_S = 2.0
DESCRIPTION = "dsr_tune: dsr-tune train runs of this config, one per run folder (the run's name)."


@dataclass
class TrainTracker:
    """MLflow bookkeeping of one ``dsr-tune train`` run folder (picklable)."""

    target: store.Target
    experiment: str
    run_dir: str
    identity: dict | None = None  # written to tracking.json by begin(); None: it is there already
    experiment_id: str | None = None
    run_id: str | None = None
    error: str | None = None
    sweep_id: str = KIND       # run keys are ``train/<id>``: what replay and sync look runs up by
    parent_id: str | None = None

    @classmethod
    def start(cls, target: store.Target, experiment: str, run_dir: str | Path, cfg, command: str,
              resume: bool) -> TrainTracker:
        """The tracker of a run about to train: on ``resume`` the folder's identity (the same MLflow run),
        else a new one (a new MLflow run, also over an older run in the folder). Nothing is written
        before :meth:`begin`."""
        run_dir = Path(run_dir).resolve()
        old = read_run_file(run_dir) if resume else None
        if old and old.get("kind") == KIND:
            identity = {k: old[k] for k in ("experiment", "key", "run_name", "tags", "description")}
        else:
            sparse = cfg.sparsity.method != "dense"
            identity = {
                "experiment": experiment, "key": uuid.uuid4().hex[:16], "run_name": run_dir.name,
                "tags": {runs.TAG_ROLE: KIND, "method": cfg.sparsity.method, "trains": cfg.sparsity.method,
                         "sparsity": f"{cfg.sparsity.sparsity:g}" if sparse else "0", "seed": cfg.train.seed,
                         "mlflow.source.name": "dsr-tune train", "mlflow.source.type": "LOCAL"},
                # Markdown in MLflow's UI: code spans keep paths' underscores and brackets as written
                "description": (f"`{command}`: {cfg.sparsity.method}" + (f" at sparsity {cfg.sparsity.sparsity:g}"
                                if sparse else "") + f", {cfg.model.name} on {cfg.data.name}, "
                                f"{cfg.train.epochs} epochs, seed {cfg.train.seed}; run folder `{run_dir}`."),
                "run_id": None, "mlflow_model": None}
        return cls(target, identity["experiment"], str(run_dir), identity)

    @property
    def begun(self) -> bool:
        return self.identity is None

    def begin(self) -> None:
        """Write the run's identity into its folder (once training has started: a run refused while it sets
        up leaves nothing behind, in the folder or in MLflow)."""
        if self.identity is not None:
            update_run_file(self.run_dir, kind=KIND, uri=store.redact(self.target.uri), **self.identity,
                            status=Status.RUNNING, synced=False, error=None)
            self.identity = None

    @classmethod
    def load(cls, run_dir: str | Path, uri: str | None = None) -> TrainTracker | None:
        """The tracker of a train run folder (None for any other folder); ``uri`` moves it to another store."""
        info = read_run_file(run_dir) or {}
        if info.get("kind") != KIND:
            return None
        target = store.resolve(uri) if uri else store.with_credentials(store.resolve(info["uri"]))
        return cls(target, info["experiment"], str(Path(run_dir).resolve()))

    def child_tags(self, identity: dict) -> dict:
        git = store.git_revision()
        tags = {runs.TAG_GIT: git, runs.TAG_GIT_MLFLOW: (git or "").removesuffix("-dirty") or None}
        tags.update({k: v for k, v in identity.get("tags", {}).items() if v is not None})
        if identity.get("description"):
            tags[store.DESCRIPTION_TAG] = identity["description"]
        return tags

    def _client(self):
        down = store.probe(self.target, timeout=PROBE_S)
        if down:
            raise ConnectionError(down)
        return store.client(self.target)

    def open(self) -> str | None:
        """The experiment and the run (found by its key, else created, set RUNNING). Returns the run id, or
        None with ``error`` saying why MLflow cannot be used."""
        self.begin()
        info = read_run_file(self.run_dir) or {}
        try:
            client = self._client()
            self.experiment_id = store.experiment_id(client, self.experiment, self.target, description=DESCRIPTION)
            self.run_id = runs.find_or_create(client, self.experiment_id, runs.run_key(KIND, info["key"]),
                                              info["run_name"], self.child_tags(info))
        except Exception as exc:  # noqa: BLE001 (any MLflow or network failure: training goes on)
            self.error = store.describe(exc, self.target.uri)
            update_run_file(self.run_dir, error=self.error)
            return None
        update_run_file(self.run_dir, run_id=self.run_id)
        return self.run_id

    def logger(self) -> MlflowLogger:
        """The live logger of an in-process run: it opens the run first, on its own thread."""
        return _OpeningLogger(self)

    def logger_spec(self) -> MlflowLoggerSpec | None:
        """For Ray Train's rank 0: the run opened here first (None when MLflow is unusable)."""
        if self.run_id is None and self.open() is None:
            log.warning("%s; this run logs to its folder only (dsr-tune sync %s logs it later)", self.error,
                        self.run_dir)
            return None
        return MlflowLoggerSpec(self.target.uri, self.run_dir, run_id=self.run_id)

    def close(self, status: str, summary=None, refresh: bool = True) -> str | None:
        """After training: the folder's records, artifacts and model (``FINISHED`` only) and the status
        (counted into ``summary``, a :class:`.replay.SyncSummary`). ``refresh`` logs the artifacts again
        (a resumed run's files changed). Returns None when MLflow holds the whole run, else why not (kept
        in tracking.json)."""
        from .logger import OFFLINE_FILE
        from .replay import SyncSummary, replay_records

        if not self.begun:  # it never trained: nothing to log
            return None
        summary = summary if summary is not None else SyncSummary()
        update_run_file(self.run_dir, status=status)
        info = read_run_file(self.run_dir) or {}
        try:
            client = self._client()
            if self.experiment_id is None:
                self.experiment_id = store.experiment_id(client, self.experiment, self.target, description=DESCRIPTION)
            run_id, created = runs.ensure(client, self.experiment_id, runs.run_key(KIND, info["key"]),
                                          info["run_name"], self.child_tags(info), reopen=False)
            summary.created += created
            replay_records(client, run_id, Path(self.run_dir), summary)
            if status == Status.FINISHED:
                from .artifacts import log_files

                summary.artifacts += log_files(client, run_id, self.run_dir, title=info["run_name"],
                                                refresh=refresh)
            if status in TERMINAL:
                client.set_terminated(run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            error = store.describe(exc, self.target.uri)
            update_run_file(self.run_dir, synced=False, error=error)
            return error
        (Path(self.run_dir) / OFFLINE_FILE).unlink(missing_ok=True)
        update_run_file(self.run_dir, run_id=run_id, synced=status in TERMINAL, error=None)
        return None


class _OpeningLogger(MlflowLogger):
    """:class:`MlflowLogger` whose background thread opens the train run once training has started (the
    trainer's first call, the params, comes after its set-up and checks)."""

    def __init__(self, tracker: TrainTracker):
        self.tracker = tracker  # before the thread starts
        self._go, self._trains = threading.Event(), False
        super().__init__(MlflowLoggerSpec(tracker.target.uri, tracker.run_dir))

    def log_params(self, params: dict) -> None:
        self._trains = True
        self._go.set()
        super().log_params(params)

    def close(self, status: str = Status.FINISHED) -> None:
        self._go.set()
        super().close(status)

    def _connect(self) -> None:
        self._go.wait()
        if not self._trains:  # refused before it trained: no MLflow run, no warning
            self._failed = True
            return
        if self.tracker.open() is None:
            raise ConnectionError(self.tracker.error)
        self.run_id = self.tracker.run_id
        super()._connect()
