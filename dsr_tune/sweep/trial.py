"""The Tune trial function: one job trained with Ray Train, tracked in MLflow.

Train V2 style: the trial function builds the ``TorchTrainer`` (through
:func:`dsr_tune.distributed.fit`) and waits for it. Rank 0's per-epoch
reports reach Tune through Ray's ``TuneReportCallback``; they carry
``epochs_done`` (1-based, what ASHA counts: Tune's own training_iteration
restarts when a trial is restored).

A trial is idempotent. Its Ray Train run has a stable name (the job key) in
the sweep's storage, so a restarted trial (Tune's FailureConfig, or
``--resume``) continues from its newest checkpoint; one whose training had
already finished (the driver died before Tune wrote it down) only reports
its final record again instead of training anything.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .. import config as C
from ..tracking.runs import last_epoch
from ..tracking.tracker import update_run_file
from .jobs import SweepContext

log = logging.getLogger("dsr_tune")


def _already_trained(ctx: SweepContext, name: str, run_dir: Path, cfg: C.Config) -> bool:
    """True when storage holds this run's final checkpoint and the run folder its records."""
    from ..distributed import storage

    found = storage.newest_complete(ctx.train_storage, name)
    last = last_epoch(run_dir)
    return (found is not None and found[1] >= cfg.train.epochs and last is not None
            and last["epochs_done"] >= cfg.train.epochs)


def run_trial(config: dict, ctx: SweepContext) -> None:
    """Tune's trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    started = time.time()  # the benchmark's start-up time counts from here
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..distributed import fit
    from ..tracking import MlflowLoggerSpec
    from ..tracking.runs import run_key

    trial_id = tune.get_context().get_trial_id()
    job = ctx.job(config, trial_id)
    run_dir = ctx.run_dir(job.key)
    cfg = C.from_dict(job.config)
    name = job.key.replace("/", "-")  # the Ray Train run: <sweep>/ray_train/<name>
    tracker = ctx.tracker

    if _already_trained(ctx, name, run_dir, cfg):
        log.info("%s: already trained, reporting its final epoch", job.key)
        run_id = tracker.child(run_dir, job.identity())
        # no live logger runs on this path, and the one that did may have been cut off with
        # the driver: log what the folder has and MLflow lacks (idempotent)
        tracker.finish(run_dir, run_id, "FINISHED", replay=True)
        tune.report(last_epoch(run_dir))
        return

    # the MLflow run is made while Ray Train starts the worker group (mlflow takes seconds to
    # import); the worker's logger finds it by its tag
    created: dict = {}
    maker = threading.Thread(target=lambda: created.update(
        run_id=tracker.child(run_dir, {**job.identity(), "started": started})), daemon=True)
    maker.start()
    specs = [MlflowLoggerSpec(tracker.target.uri, str(run_dir), experiment_id=tracker.experiment_id,
                              key=run_key(tracker.sweep_id, job.key))] if tracker.parent_id and ctx.live_logging else []
    try:
        fit(cfg, run_dir=run_dir, name=name, storage_path=ctx.train_storage,
            train_callbacks=[TuneReportCallback()], logger_specs=specs)
    finally:
        # on an exception the run stays RUNNING: Tune retries the trial, or the driver's
        # Finalizer closes the run as FAILED (an error) or KILLED (stopped early by ASHA)
        maker.join()
    update_run_file(run_dir, trained=time.time())
    tracker.finish(run_dir, created.get("run_id"), "FINISHED", replay=not ctx.live_logging)
