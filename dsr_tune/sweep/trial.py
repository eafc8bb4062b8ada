"""One job's training, tracked in MLflow: in this process (:func:`run_job`:
``dsr-tune compare`` without Ray, and a single-worker Tune trial), or as a
Tune trial (:func:`run_trial`) with a Ray Train worker group when the job
has ``train.workers >= 2``.

Idempotent: a job whose folder holds its final epoch is not trained again
(its records are replayed into MLflow if MLflow lacks them); one cut off
mid-way continues from its checkpoint. A trial keeps its checkpoints in its
run folder, not in Tune: a trial Tune restarts (FailureConfig, or
``--resume`` after a killed driver) continues from the last one, and handing
Tune a copy every epoch would only double the writes. A trial whose run
folder cannot be written (:func:`storage_fault`: no space left, a read-only or
forbidden folder) marks its run FAILED with the reason and stops the sweep
(:class:`StorageFault`; in Tune, a result holding :data:`FAULT`): the next
trial would hit the same disk. A single-worker trial
trains in the trial's own process (no Ray Train controller or worker group;
with ``reuse_actors`` the next trial reuses the process, torch and MLflow
already imported), shown only the GPU Ray assigned it, or none, so
``train.device=auto`` never trains on a GPU another trial reserved.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sys
import threading
import time

from .. import config as C
from .. import runfolder
from ..records import Status
from ..tracking import MlflowLoggerSpec
from ..tracking.mlflow_runs import epoch_scalars, run_key, update_run_file
from .jobs import Job, SweepContext

log = logging.getLogger("dsr_tune")


FAULT = "storage_fault"  # the key of the result a Tune trial reports its storage fault with
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class StorageFault(RuntimeError):
    """A job's run folder could not be written; the message is one line naming the job and why."""


def storage_fault(exc: BaseException | None) -> str | None:
    """One line for the storage fault behind ``exc`` (itself or a cause), else None:
    a ``runfolder.StorageError`` (a run-folder write that failed) names one; a plain
    OSError does by its errno (no space, quota, read-only, permission)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, runfolder.StorageError):
            return str(exc).splitlines()[0]
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return f"{exc.strerror or os.strerror(exc.errno)}" + (f": {exc.filename}" if exc.filename else "")
        exc = exc.__cause__ or exc.__context__
    return None


def fault_result(ctx: SweepContext, reason: str) -> dict:
    """The result a Tune trial reports its storage fault with: the reason, and NaN for what
    Tune expects in every result (the searcher and the driver leave it out)."""
    return {FAULT: reason, **{k: math.nan for k in ctx.expected}}


def finished(run_dir, cfg: C.Config) -> bool:
    """The folder holds the job's final checkpoint and its last epoch record."""
    last = runfolder.last_epoch(run_dir)
    if not runfolder.has_run(run_dir) or last is None or last["epochs_done"] < cfg.train.epochs:
        return False
    from .. import checkpoint as ckpt

    return ckpt.load(run_dir, key=str(run_dir)).get("epoch", 0) >= cfg.train.epochs


_jobs_here = 0  # jobs this process trained: the first one pays the imports


def _now() -> list[float]:
    """[wall clock, CPU seconds of this process in every thread]."""
    return [round(time.time(), 3), round(time.process_time(), 3)]


def run_job(ctx: SweepContext, job: Job, *, on_epoch_end=None, started: float | None = None,
            close_on_error: bool = True) -> tuple[dict, bool]:
    """Train ``job`` (or find it trained); returns (its last epoch record, whether
    it trained now). ``on_epoch_end(record, checkpoint path or None)`` as in
    :func:`dsr_tune.train.train`. The MLflow child run is created (or found by
    its key) before training, logged live, and closed with the outcome; with
    ``close_on_error=False`` (a Tune trial: Tune may retry it, and the driver's
    Finalizer closes what it gives up on) a failed run stays RUNNING. A storage
    fault marks the run FAILED with its reason and raises :class:`StorageFault`.

    tracking.json gets the job's ``timing``: [wall, CPU] when it began, at each
    epoch's end (after its checkpoint and the loggers, before Tune hears of
    it), when training returned and when MLflow was closed; what
    benchmarks/bench_sweep.py splits a trial's time into."""
    try:
        return _train_job(ctx, job, on_epoch_end, started, close_on_error)
    except Exception as exc:
        reason = storage_fault(exc)
        if reason is None:
            raise
        ctx.tracker.fail(ctx.run_dir(job.key), reason)
        raise StorageFault(f"{job.key}: {reason}") from exc


def _train_job(ctx: SweepContext, job: Job, on_epoch_end, started: float | None,
               close_on_error: bool) -> tuple[dict, bool]:
    global _jobs_here
    from ..train import train

    timing = {"began": _now(), "started": started, "pid": os.getpid(), "first_in_process": _jobs_here == 0,
              "epochs": []}
    run_dir, cfg, tracker = ctx.run_dir(job.key), C.from_dict(job.config), ctx.tracker
    identity = {**job.identity(), **({"started": started} if started else {})}
    if not ctx.live_logging:  # the driver logs the run when it ends (a store this node cannot reach)
        update_run_file(run_dir, **identity, status=Status.RUNNING, synced=False)
        run_id = None
    else:
        run_id = tracker.child(run_dir, identity)
    if finished(run_dir, cfg):
        log.info("%s: already trained", job.key)
        if ctx.live_logging:
            tracker.finish(run_dir, run_id, Status.FINISHED, replay=True)
        else:
            update_run_file(run_dir, status=Status.FINISHED)
        return runfolder.last_epoch(run_dir), False
    specs = [MlflowLoggerSpec(tracker.target.uri, str(run_dir), run_id=run_id,
                              key=run_key(tracker.sweep_id, job.key))] if run_id else []

    def epoch_end(record: dict, path) -> None:
        timing["epochs"].append(_now())
        if on_epoch_end is not None:
            on_epoch_end(record, path)

    # a run that continues may lack records in MLflow: logged by no one (MLflow was away when it
    # started), or queued by a logger that was killed; its end logs what MLflow lacks
    continued = runfolder.has_run(run_dir)
    _jobs_here += 1
    try:
        record = train(cfg, run_dir, resume=continued, loggers=[s.make() for s in specs],
                       on_epoch_end=epoch_end, progress=False)
    except KeyboardInterrupt:
        _ended(ctx, run_dir, run_id, Status.KILLED, close_on_error, timing)
        raise
    except Exception as exc:
        if storage_fault(exc) is None:  # a storage fault: run_job marks the run, and writes nothing more
            _ended(ctx, run_dir, run_id, Status.FAILED, close_on_error, timing)
        raise
    _ended(ctx, run_dir, run_id, Status.FINISHED, True, timing, replay=continued)
    return record, True


def _ended(ctx: SweepContext, run_dir, run_id: str | None, status: Status, close: bool, timing: dict,
           replay: bool = False) -> None:
    timing["trained"] = _now()
    update_run_file(run_dir, trained=timing["trained"][0])
    if close:
        if ctx.live_logging:
            ctx.tracker.finish(run_dir, run_id, status, replay=replay)
        else:
            update_run_file(run_dir, status=status)
    update_run_file(run_dir, timing={**timing, "closed": _now()})


# ---------------------------------------------------------------- as a Tune trial


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


def _place(job: Job, trials_per_gpu: int = 1) -> None:
    """Show the trial's process its reserved GPU only (or none), before torch
    initialises CUDA; a packed trial (one of ``trials_per_gpu`` on its GPU)
    may take at most its share of the GPU's memory (torch's caching
    allocator refuses more, as an out-of-memory error of this trial alone)."""
    import ray

    wanted = visible_gpus(ray.get_gpu_ids(), job.config["train"]["use_gpu"])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != wanted:
        log.warning("%s: CUDA was initialised in this process before the trial chose its GPU (%r)", job.key, wanted)
    os.environ["CUDA_VISIBLE_DEVICES"] = wanted
    if trials_per_gpu > 1 and wanted:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(1.0 / trials_per_gpu, 0)


def run_trial(config: dict, ctx: SweepContext) -> None:
    """Tune's trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    started = time.time()  # the benchmark's start-up time counts from here
    job = ctx.job(config)
    if in_process(job.config, ctx.in_trial):
        _place(job, getattr(ctx, "trials_per_gpu", 1))  # a context pickled before packing existed has none
        _local_trial(ctx, job, started)
    else:
        _worker_group_trial(ctx, job, started)


def _local_trial(ctx: SweepContext, job: Job, started: float) -> None:
    from ray import tune

    t = job.config["train"]
    last_epoch = min(t["epochs"], t.get("stop_after") or t["epochs"]) - 1
    every = getattr(ctx, "report_every_s", 0.0)  # a context pickled before it existed reports every epoch
    reported = [float("-inf")]

    def report(record: dict, path) -> None:
        now = time.monotonic()
        if record["epoch"] >= last_epoch or now - reported[0] >= every:
            reported[0] = now
            tune.report(epoch_scalars(record))

    try:
        record, trained = run_job(ctx, job, on_epoch_end=report, started=started, close_on_error=False)
    except StorageFault as exc:
        tune.report(fault_result(ctx, str(exc)))  # the driver stops the sweep (tune.Halt)
        return
    if not trained:  # the driver died before Tune wrote the end down: report the final record again
        tune.report(epoch_scalars(record))


def _worker_group_trial(ctx: SweepContext, job: Job, started: float) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..distributed import fit, storage

    run_dir, cfg, tracker = ctx.run_dir(job.key), C.from_dict(job.config), ctx.tracker
    name = job.key.replace("/", "-")  # the Ray Train run: <sweep>/ray_train/<name>
    found = storage.newest_complete(ctx.train_storage, name)
    if found is not None and found[1] >= cfg.train.epochs and finished(run_dir, cfg):
        log.info("%s: already trained, reporting its final epoch", job.key)
        run_id = tracker.child(run_dir, job.identity())
        tracker.finish(run_dir, run_id, Status.FINISHED, replay=True)
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
    except Exception as exc:
        reason = storage_fault(exc)
        if reason is None:
            raise
        maker.join()
        tracker.fail(run_dir, reason)
        tune.report(fault_result(ctx, f"{job.key}: {reason}"))  # the driver stops the sweep (tune.Halt)
        return
    finally:
        # on an exception the run stays RUNNING: Tune retries the trial, or the driver's
        # Finalizer closes the run as FAILED (an error) or KILLED (stopped early by ASHA)
        maker.join()
    update_run_file(run_dir, trained=time.time())
    tracker.finish(run_dir, created.get("run_id"), Status.FINISHED, replay=not ctx.live_logging or found is not None)
