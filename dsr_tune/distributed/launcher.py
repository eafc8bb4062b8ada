"""Launching a Ray Train run: build a ``TorchTrainer`` around the per-worker function,
start or join Ray, and bring the run record home.

Who calls what:

- ``dsr-tune train CONFIG train.workers=N`` -> :func:`launch` (names the run,
  starts or joins Ray) -> :func:`fit`;
- a Tune trial (the sweep) -> :func:`fit` directly, inside the trial, with
  ``TuneReportCallback()`` in ``train_callbacks`` and an MLflow logger spec in
  ``logger_specs``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import config as C
from .. import runfolder
from ..train.metrics import MetricLogger
from . import session, storage
# moved to .session; re-exported here for callers of the old place
from .session import LOCAL_RAY_ENV, TRAIN_ENV, joins_cluster, ray_env, ray_session  # noqa: F401

log = logging.getLogger("dsr_tune")


class LoggerSpec(Protocol):
    """A picklable recipe for a metric logger, shipped to the workers; rank 0
    calls ``make()`` at every (re)start of the worker group. The trainer calls
    the logger's ``close(status)`` when training ends or fails on rank 0."""

    def make(self) -> MetricLogger: ...


@dataclass
class FitSummary:
    """What :func:`fit` returns.

    metrics: rank 0's last epoch record as reported to Ray (scalars only:
        epoch, epochs_done, test_acc, nonzero_params, samples_per_s, mask_hash, workers, ...).
    checkpoint: the ``ray.train.Checkpoint`` of the last epoch in storage.
    storage: ``<storage_path>/<name>``, the folder with every kept checkpoint.
    run_dir: the run folder (config.yaml, metrics.jsonl, checkpoint.pt).
    """

    metrics: dict
    checkpoint: Any
    storage: str
    run_dir: Path


def worker_resources(cfg: C.Config) -> dict[str, float]:
    """Ray resources one worker asks for. The Train V2 controller itself takes
    none; a Tune trial around it takes what its trainable asks for."""
    resources = {"CPU": float(cfg.train.cpus_per_worker)}
    if cfg.train.use_gpu:
        resources["GPU"] = 1.0
    return resources


def _with_overrides(cfg: C.Config, **train_keys) -> C.Config:
    """``cfg`` with some train.* keys replaced, validated again."""
    changed = {f"train.{k}": v for k, v in train_keys.items() if v is not None}
    return C.replace(cfg, **changed) if changed else cfg


def _check_cluster(cfg: C.Config, storage_path: str | None) -> None:
    """Refuse what cannot work here; warn about what would wait forever."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if (session.joined() or len(alive) > 1) and not storage_path:
        # on a cluster, workers may run on nodes that join later (autoscaler): even
        # one node now is no reason to keep checkpoints on this node's disk
        raise C.ConfigError("train.storage_path", "None: on a Ray cluster checkpoints need storage every node "
                            "reaches (a shared folder, s3://..., gs://...)")
    total = ray.cluster_resources()
    for key, per in worker_resources(cfg).items():
        need = per * cfg.train.workers
        if need > total.get(key, 0.0) + 1e-9:
            log.warning("the run asks for %g %s (%d workers x %g) but the cluster has %g: it waits until "
                        "nodes join (autoscaler) and never starts otherwise", need, key,
                        cfg.train.workers, per, total.get(key, 0.0))


def _trainer(cfg: C.Config, run_dir: Path, name: str, storage_uri: str, resume_from, train_callbacks,
             logger_specs):
    """The ``TorchTrainer`` of one run; see :func:`fit` for the arguments."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from . import loopback
    from .worker import train_loop_per_worker

    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        # a Ray on 127.0.0.1 only: the rendezvous store listens there too (else on every interface)
        torch_config=loopback.LoopbackTorchConfig() if loopback.wanted() else None,
        train_loop_config={
            "cfg": cfg.to_dict(), "run_dir": str(run_dir), "storage_path": storage_uri, "name": name,
            "resume_from": str(resume_from) if resume_from else None, "logger_specs": list(logger_specs),
            "launched": time.time(),  # the worker files keep it: Ray Train's start-up time, for benchmarks
        },
        scaling_config=ray.train.ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                               resources_per_worker=worker_resources(cfg)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_uri,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints or None),
            callbacks=list(train_callbacks),
            # Ray leaves CUDA_VISIBLE_DEVICES alone for workers without GPUs: hide them, or
            # device=auto would put every CPU worker on GPU 0 of a GPU node
            worker_runtime_env={} if t.use_gpu else {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}},
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )


def fit(cfg: C.Config, *, run_dir: str | Path, name: str | None = None, storage_path: str | None = None,
        workers: int | None = None, use_gpu: bool | None = None, max_failures: int | None = None,
        resume_from: str | Path | None = None, train_callbacks: Sequence[Any] = (),
        logger_specs: Sequence[LoggerSpec] = ()) -> FitSummary:
    """Train ``cfg`` with Ray Train on ``workers`` DDP workers and wait for it.

    run_dir: the run folder; rank 0 writes config.yaml, metrics.jsonl and
        checkpoint.pt there (an absolute path is used on every node; if rank 0
        ran elsewhere, the record is copied from storage at the end).
    name, storage_path: checkpoints go to ``<storage_path>/<name>/epoch_NNNNN``
        (default name: the run folder's name; default storage: the config's
        train.storage_path, else ``<run_dir>/ray``, refused on a cluster). The pair
        identifies the run: fit() on a pair that already holds checkpoints
        continues from the newest (how a restarted Tune trial resumes).
    workers, use_gpu, max_failures: override train.* (None: from ``cfg``).
    resume_from: a checkpoint.pt (or its folder) every worker can read, used
        only when storage holds no checkpoint of this run.
    train_callbacks: ``ray.train.UserCallback`` objects for the Train run
        config, e.g. ``ray.tune.integration.ray_train.TuneReportCallback()``.
    logger_specs: picklable objects whose ``make()`` returns a MetricLogger;
        built on rank 0 inside the worker, fed the same records as metrics.jsonl.

    Every rank reports each epoch (the epoch record's scalars; rank 0's reach
    Tune); rank 0 attaches a checkpoint on checkpoint epochs. A worker failure
    restarts the group from the newest complete checkpoint, up to
    ``max_failures`` times; beyond that ``ray.train.TrainingFailedError`` is
    raised. Ray must be initialised (or is started locally by Ray itself).
    """
    import ray

    cfg = _with_overrides(cfg, workers=workers, use_gpu=use_gpu, max_failures=max_failures)
    if cfg.train.workers < 1:
        raise C.ConfigError("train.workers", f"{cfg.train.workers}: Ray Train needs at least 1 worker")
    run_dir = Path(run_dir).expanduser().resolve()  # workers run in their own working directories
    name = name or run_dir.name
    explicit_storage = storage_path or cfg.train.storage_path
    storage_uri = storage.resolve(explicit_storage, run_dir)
    if ray.is_initialized():
        _check_cluster(cfg, explicit_storage)

    trainer = _trainer(cfg, run_dir, name, storage_uri, resume_from, train_callbacks, logger_specs)
    log.info("Ray Train: %d worker(s) x %s, backend %s, checkpoints in %s/%s", cfg.train.workers,
             worker_resources(cfg), "nccl" if cfg.train.use_gpu else "gloo", storage_uri, name)
    result = trainer.fit()
    if storage.sync_run_record(result.checkpoint, run_dir):
        log.info("copied the run record from %s into %s", result.checkpoint.path, run_dir)
    return FitSummary(metrics=dict(result.metrics or {}), checkpoint=result.checkpoint,
                      storage=f"{storage_uri.rstrip('/')}/{name}", run_dir=run_dir)


# ---------------------------------------------------------------- the CLI path


_RUN_NAME = r"-\d{8}-\d{6}"  # launch() names runs <folder>-<date>-<time>


def _remove_old_checkpoints(folder: Path, prefix: str) -> None:
    """Delete ``<run_dir>/ray``, an overwritten run's checkpoints, but only if it
    holds nothing else than Ray Train runs launch() named; else refuse."""
    if not folder.is_dir():
        return
    ours = re.compile(re.escape(prefix) + _RUN_NAME + "$")
    foreign = sorted(p.name for p in folder.iterdir() if not (p.is_dir() and ours.match(p.name)))
    if foreign:
        raise C.ConfigError("--overwrite", f"{folder} holds {', '.join(foreign[:5])}, not only this run's old "
                            "checkpoints; refusing to delete it (move it away, or pick another --output)")
    shutil.rmtree(folder)


def launch(cfg: C.Config, run_dir: str | Path, *, resume: bool = False, address: str | None = None,
           logger_specs: Sequence[LoggerSpec] = ()) -> FitSummary:
    """``dsr-tune train`` with train.workers >= 1. A fresh run gets a new name
    (``<folder>-<date-time>``) written to ``<run_dir>/ray_run.json``; ``resume``
    reads it back and continues from the newest checkpoint in storage, or from
    ``<run_dir>/checkpoint.pt`` (e.g. a run started without Ray). ``logger_specs``
    as for :func:`fit` (the MLflow run's live logger)."""
    run_dir = Path(run_dir).expanduser().resolve()
    if joins_cluster(address) and not cfg.train.storage_path:
        raise C.ConfigError("train.storage_path", "None: on a Ray cluster checkpoints need storage every node "
                            "reaches: train.storage_path=s3://..., gs://... or a shared folder")
    run_file = run_dir / runfolder.RAY_RUN  # where the run's checkpoints live
    previous = json.loads(run_file.read_text()) if resume and run_file.exists() else None
    if previous and previous.get("in_run_folder"):  # <output>/ray moves with a copied run folder
        previous["storage_path"] = storage.resolve(None, run_dir)
    if previous and cfg.train.storage_path and storage.resolve(cfg.train.storage_path, run_dir) != previous["storage_path"]:
        raise C.ConfigError("train.storage_path", f"{cfg.train.storage_path!r}: the run keeps its checkpoints in "
                            f"{previous['storage_path']!r}; resume with that storage")
    if previous:
        name, storage_uri = previous["name"], previous["storage_path"]
    else:
        name = f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        storage_uri = storage.resolve(cfg.train.storage_path, run_dir)
        if not cfg.train.storage_path and not resume:
            _remove_old_checkpoints(Path(storage_uri), run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        runfolder.write_json(run_file, {"name": name, "storage_path": storage_uri,
                                        "in_run_folder": not cfg.train.storage_path})
    resume_from = run_dir / runfolder.CHECKPOINT if resume and runfolder.has_run(run_dir) else None
    default_storage = storage.resolve(None, run_dir)  # passed on as None: fit() refuses it on a cluster
    need = cfg.train.workers * cfg.train.cpus_per_worker
    env = ray_env(joins_cluster(address))
    with ray_session(address, cpus=need, runtime_env={"env_vars": env}) as local:
        if local and cfg.train.use_gpu:
            import ray

            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus < cfg.train.workers:
                raise C.ConfigError("train.workers", f"{cfg.train.workers} GPU workers but this machine has "
                                    f"{gpus:g} GPUs; lower train.workers or join a cluster with --address")
        return fit(cfg, run_dir=run_dir, name=name, resume_from=resume_from,
                   storage_path=None if storage_uri == default_storage else storage_uri, logger_specs=logger_specs)
