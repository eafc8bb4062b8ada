"""The Tune trial function: one job, trained in the trial's own process or with Ray Train.

A single-worker job (``train.workers <= 1``, the common case: one GPU per
trial) trains right in the trial's process through public Tune APIs: no
Ray Train controller or worker group is started, and with
``reuse_actors`` the next trial reuses the same process (torch, MLflow
already imported). Each epoch goes to Tune with ``tune.report`` (with
``epochs_done``, what ASHA counts: Tune's training_iteration restarts when
a trial is restored). Its checkpoints are the run folder's, in the sweep
folder (shared by every node on a cluster): a trial restarted by Tune (its
FailureConfig, or ``--resume`` after a killed driver) continues from the
last one; handing Tune a copy every epoch would only double the writes and
force a snapshot of Tune's state each time. The trial reserves
``search.trial_cpus + train.cpus_per_worker`` CPUs (and one GPU with
``train.use_gpu``): Tune's placement is the device training uses. Before
torch sees CUDA the trial's process is shown only the GPU Ray assigned it
(``ray.get_gpu_ids()``), or none at all, so ``train.device=auto`` trains on
that GPU or on the CPU, never on a GPU another trial reserved.

A job with ``train.workers >= 2`` builds a ``TorchTrainer`` (Train V2 style,
through :func:`dsr_tune.distributed.fit`); rank 0's reports reach Tune
through ``TuneReportCallback``. Either way the trial is idempotent: a job
whose training had already finished only reports its final record again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from .. import config as C
from .. import runfolder
from ..tracking.mlflow_runs import epoch_scalars, update_run_file
from .execute import finished, run_job
from .jobs import Job, SweepContext

log = logging.getLogger("dsr_tune")


def in_process(cfg: dict, in_trial: bool = True) -> bool:
    """Jobs that train in the trial's process (no worker group)."""
    return in_trial and cfg["train"]["workers"] <= 1


def visible_gpus(gpu_ids: list, use_gpu: bool) -> str:
    """CUDA_VISIBLE_DEVICES for a job that trains in the trial's process: the
    GPU(s) Ray assigned to the trial (``ray.get_gpu_ids()``), or "" (none: it
    trains on the CPU) when it reserved none."""
    if not use_gpu:
        return ""
    if not gpu_ids:
        raise RuntimeError("train.use_gpu=true but Ray assigned this trial no GPU")
    return ",".join(str(i) for i in gpu_ids)


def _place(job: Job) -> None:
    """Show the trial's process its reserved GPU only (or none), before torch initialises CUDA."""
    import ray

    wanted = visible_gpus(ray.get_gpu_ids(), job.config["train"]["use_gpu"])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != wanted:
        log.warning("%s: CUDA was initialised in this process before the trial chose its GPU (%r)", job.key, wanted)
    os.environ["CUDA_VISIBLE_DEVICES"] = wanted


def run_trial(config: dict, ctx: SweepContext) -> None:
    """Tune's trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    started = time.time()  # the benchmark's start-up time counts from here
    from ray import tune

    job = ctx.job(config, tune.get_context().get_trial_id())
    if in_process(job.config, ctx.in_trial):
        _place(job)
        _local_trial(ctx, job, started)
    else:
        _worker_group_trial(ctx, job, started)


def _local_trial(ctx: SweepContext, job: Job, started: float) -> None:
    from ray import tune

    def report(record: dict, path) -> None:
        tune.report(epoch_scalars(record))

    record, trained = run_job(ctx, job, on_epoch_end=report, started=started, close_on_error=False)
    if not trained:  # the driver died before Tune wrote the end down: report the final record again
        tune.report(epoch_scalars(record))


def _worker_group_trial(ctx: SweepContext, job: Job, started: float) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..distributed import fit, storage
    from ..tracking import MlflowLoggerSpec
    from ..tracking.mlflow_runs import run_key

    run_dir, cfg, tracker = ctx.run_dir(job.key), C.from_dict(job.config), ctx.tracker
    name = job.key.replace("/", "-")  # the Ray Train run: <sweep>/ray_train/<name>
    found = storage.newest_complete(ctx.train_storage, name)
    if found is not None and found[1] >= cfg.train.epochs and finished(run_dir, cfg):
        log.info("%s: already trained, reporting its final epoch", job.key)
        run_id = tracker.child(run_dir, job.identity())
        tracker.finish(run_dir, run_id, "FINISHED", replay=True)
        tune.report(runfolder.last_epoch(run_dir))
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
