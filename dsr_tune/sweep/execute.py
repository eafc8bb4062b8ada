"""One job trained in this process, tracked in MLflow: the common path of a
single-worker Tune trial and of ``dsr-tune compare`` without Ray.

Idempotent: a job whose folder already holds its final epoch is not trained
again (its records are replayed into MLflow if MLflow lacks them); one cut
off mid-way continues from its checkpoint.
"""

from __future__ import annotations

import logging
import time

from .. import config as C
from .. import runfolder
from ..tracking import MlflowLoggerSpec
from ..tracking.mlflow_runs import run_key, update_run_file
from .jobs import Job, SweepContext

log = logging.getLogger("dsr_tune")


def finished(run_dir, cfg: C.Config) -> bool:
    """The folder holds the job's final checkpoint and its last epoch record."""
    last = runfolder.last_epoch(run_dir)
    if not runfolder.has_run(run_dir) or last is None or last["epochs_done"] < cfg.train.epochs:
        return False
    from .. import checkpoint as ckpt

    return ckpt.load(run_dir, key=str(run_dir)).get("epoch", 0) >= cfg.train.epochs


def run_job(ctx: SweepContext, job: Job, *, on_epoch_end=None, started: float | None = None,
            close_on_error: bool = True) -> tuple[dict, bool]:
    """Train ``job`` (or find it trained); returns (its last epoch record, whether
    it trained now). ``on_epoch_end(record, checkpoint path or None)`` as in
    :func:`dsr_tune.train.train`. The MLflow child run is created (or found by
    its key) before training, logged live, and closed with the outcome; with
    ``close_on_error=False`` (a Tune trial: Tune may retry it, and the driver's
    Finalizer closes what it gives up on) a failed run stays RUNNING."""
    from ..train import train

    run_dir, cfg, tracker = ctx.run_dir(job.key), C.from_dict(job.config), ctx.tracker
    identity = {**job.identity(), **({"started": started} if started else {})}
    if not ctx.live_logging:  # the driver logs the run when it ends (a store this node cannot reach)
        update_run_file(run_dir, **identity, status="RUNNING", synced=False)
        run_id = None
    else:
        run_id = tracker.child(run_dir, identity)
    if finished(run_dir, cfg):
        log.info("%s: already trained", job.key)
        if ctx.live_logging:
            tracker.finish(run_dir, run_id, "FINISHED", replay=True)
        else:
            update_run_file(run_dir, status="FINISHED")
        return runfolder.last_epoch(run_dir), False
    specs = [MlflowLoggerSpec(tracker.target.uri, str(run_dir), run_id=run_id,
                              key=run_key(tracker.sweep_id, job.key))] if run_id else []
    status = "FAILED"
    try:
        record = train(cfg, run_dir, resume=runfolder.has_run(run_dir), loggers=[s.make() for s in specs],
                       on_epoch_end=on_epoch_end, progress=False)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        update_run_file(run_dir, trained=time.time())
        if status == "FINISHED" or close_on_error:
            if ctx.live_logging:
                tracker.finish(run_dir, run_id, status)
            else:
                update_run_file(run_dir, status=status)
    return record, True
