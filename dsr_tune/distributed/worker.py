"""The per-worker function Ray Train runs on every rank: the plain trainer,
plus checkpoint hand-over to Ray and resume after a restart.

Ray Train has already initialised the process group (gloo or NCCL) and, on
GPU workers, set this process's CUDA device, so :func:`dsr_tune.train.train`
wraps the model in DDP and shards the data by itself. What this adds:

- at start: the newest complete checkpoint (Ray's, or a newer one in storage
  that Ray had not registered yet), chosen on rank 0 and broadcast, so every
  rank resumes from the same one; rank 0 restores the run record from it
  (and init.pt, stored once beside the checkpoints);
- after every epoch: ``ray.train.report`` on every rank (a barrier), rank 0
  attaching the checkpoint folder (see :mod:`.storage`), and storing init.pt
  with the first one;
- rank 0's extra metric loggers, built from picklable specs on this worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from .. import config as C
from .. import runfolder
from . import storage

log = logging.getLogger("dsr_tune")


def _setup_logging(rank: int) -> None:
    # Ray forwards worker stderr to the driver; epoch lines from rank 0 only
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False  # Ray's root handler would print every line twice
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # Train V2 logs every ray.train.report call at INFO, from every rank, with the whole
    # metrics dict, under a logger named after its source file (so LoggingConfig's level
    # does not reach it): two long lines per rank per epoch beside our epoch line. No public
    # setting mutes them; tests/test_ray_internals.py fails if Ray renames that logger.
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _write_worker_file(run_dir: Path, rank: int, launched: float | None = None) -> None:
    """``<run_dir>/ray_workers/rank<R>.json``: this worker's pid and node, rewritten
    at every (re)start: to attach a profiler, or to kill one in a failure drill.
    ``started``: when this function began; ``launched``: when the driver built
    the TorchTrainer (the difference is Ray Train's start-up)."""
    folder = run_dir / runfolder.WORKERS
    runfolder.clean_stale(folder)  # a worker killed while writing its file
    info = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "launched": launched}
    runfolder.write_json(folder / runfolder.worker_file(rank), info)


def _choose_checkpoint(storage_path: str, name: str, resume_from: str | None):
    """Rank 0's choice of where to resume: the newest complete checkpoint among
    Ray's latest and the ones in storage (a ``ray.train.Checkpoint``); else
    ``resume_from`` (a path); else None."""
    import ray.train

    candidates = []
    registered = ray.train.get_checkpoint()
    if registered is not None and storage.epoch_of(registered.path) is not None:
        candidates.append((storage.epoch_of(registered.path), registered))
    found = storage.newest_complete(storage_path, name)
    if found is not None:
        candidates.append((found[1], ray.train.Checkpoint(found[0])))
    if not candidates:
        return resume_from
    epoch, checkpoint = max(candidates, key=lambda c: c[0])
    log.info("resuming from %s (%d epochs done; Ray had registered %s)", checkpoint.path, epoch,
             f"{storage.epoch_of(registered.path)} epochs" if registered is not None else "none")
    return checkpoint


def _agree(choice):
    """Every rank gets rank 0's choice (an object broadcast over the process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return choice
    box = [choice]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _local_checkpoint(choice):
    """A local folder (or file) for the chosen checkpoint; downloads from object
    storage into a temporary folder removed on exit. Every rank needs its
    checkpoint.pt, and the folder holds little else (init.pt lives beside it);
    Ray downloads it once per node for all the ranks there."""
    import ray.train

    if choice is None:
        yield None
        return
    if not isinstance(choice, ray.train.Checkpoint):  # resume_from: a checkpoint.pt or its folder
        yield Path(choice)
        return
    with choice.as_directory() as folder:
        yield Path(folder)


def _metrics(record: dict, world_size: int) -> dict:
    """What goes to Ray (and from rank 0 to Tune): the epoch record's scalars
    with ``epochs_done``, ASHA's time attribute (Tune's training_iteration
    starts again when a trial is restarted). Per-layer densities stay in
    metrics.jsonl and the loggers."""
    from ..tracking.mlflow_runs import epoch_scalars

    return {**epoch_scalars(record), "workers": world_size}


def train_loop_per_worker(config: dict) -> None:
    """The function given to ``TorchTrainer``. ``config`` (built by
    :func:`dsr_tune.distributed.fit`): cfg (the resolved config as a dict),
    run_dir, storage_path, name, resume_from, logger_specs."""
    import ray.train

    from ..train import train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _setup_logging(rank)
    cfg = C.from_dict(config["cfg"])
    run_dir = Path(config["run_dir"])
    _write_worker_file(run_dir, rank, config.get("launched"))
    if rank == 0:  # what a killed rank 0 of an earlier group left half-written in local storage
        for stale in storage.clean_stale(config["storage_path"], config["name"]):
            log.info("removed %s, left by a worker killed while writing", stale)

    choice = _agree(_choose_checkpoint(config["storage_path"], config["name"], config.get("resume_from"))
                    if rank == 0 else None)
    with _local_checkpoint(choice) as local:
        resume: bool | Path = False
        if local is not None:
            if local.is_dir():
                if rank == 0 and (local / runfolder.METRICS).exists():
                    storage.restore_run_record(local, run_dir)
                    storage.get_init(config["storage_path"], config["name"], run_dir)
                local = local / runfolder.CHECKPOINT
            resume = local
        loggers = [spec.make() for spec in config.get("logger_specs", ())] if rank == 0 else []
        init_stored: list[bool] = []  # rank 0 stores init.pt with its first checkpoint (once per group start)

        def on_epoch_end(record: dict, path: Path | None) -> None:
            metrics = _metrics(record, world)
            if path is None:  # not a checkpoint epoch (train.checkpoint_every > 1)
                ray.train.report(metrics)
                return
            name = storage.checkpoint_dir_name(record["epoch"] + 1)
            if rank != 0:
                ray.train.report(metrics, checkpoint_dir_name=name)
                return
            if not init_stored:
                storage.put_init(config["storage_path"], config["name"], run_dir)
                init_stored.append(True)
            folder = storage.stage(run_dir, record["epoch"] + 1)
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=name)
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        train(cfg, run_dir, resume=resume, loggers=loggers, on_epoch_end=on_epoch_end, progress=False)
