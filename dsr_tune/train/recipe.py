"""The training recipe: set up, train an epoch, evaluate, record, checkpoint, resume.

Pure PyTorch. It runs in one process, under torchrun, or as the per-worker
function of Ray Train (see :mod:`dsr_tune.distributed`): when a process group
is initialised the model is wrapped in DDP and data is sharded per rank.
Only rank 0 logs and writes files.

No record is lost: every checkpoint carries every record logged up to it
(epochs and reallocations), and a resumed run rewrites metrics.jsonl from
the checkpoint it continues, so after any kill the log holds exactly one
record per finished epoch and reallocation, as an uninterrupted run's does.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import checkpoint as ckpt
from .. import config as C
from .. import runfolder
from ..records import EPOCH, REALLOC, Status
from ..data import resolved_comment
from ..sparse import unwrap
from .loop import epoch_record, train_epoch
from .metrics import JsonlLogger, MetricLogger, progress_line
from .setup import Run, setup

log = logging.getLogger("dsr_tune.train")  # a child of the package logger: a caller can quiet epochs

EpochCallback = Callable[[dict, "Path | None"], None]


def _resume_path(out_dir: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint to continue from: ``out_dir``'s own (True), a given file
    (Ray Train hands one in after a failure), or None. A folder that holds no
    complete checkpoint (a run killed during its first save) starts afresh."""
    if resume is True:
        path = out_dir / runfolder.CHECKPOINT
        if not path.is_file():
            log.info("%s holds no complete checkpoint: starting from scratch", out_dir)
            return None
        return path
    return Path(resume) if resume else None


def restore(run: Run, path: Path) -> None:
    """Continue exactly from a checkpoint: weights, optimizer, LR schedule,
    grad scaler, masks (with threshold, generator, method state), counters and
    the records logged so far (metrics.jsonl is rewritten from them)."""
    state = ckpt.load(path, map_location=run.device, key="--resume")
    if state["epoch"] > run.cfg.train.epochs:  # a run may be resumed longer or shorter, not shorter than it is
        raise C.ConfigError("train.epochs", f"{run.cfg.train.epochs} is below the {state['epoch']} epochs the run "
                                            f"in {run.out_dir} has trained; give train.epochs >= {state['epoch']} "
                                            "to continue it (or --overwrite to start over)")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.masking is not None:
        run.masking.load_state_dict(state["masking"])
        run.flops.refresh()  # the checkpoint's masks, not the fresh ones
    run.start_epoch, run.step = state["epoch"], state["step"]
    metrics = run.out_dir / runfolder.METRICS
    if "records" in state:
        run.records = list(state["records"])
    else:  # a checkpoint from before records were kept in it: what the log holds up to it
        run.records = [r for r in runfolder.read_records(metrics)
                       if (r.get("kind") == EPOCH and r["epoch"] < run.start_epoch)
                       or (r.get("kind") == REALLOC and r["step"] <= run.step)]
    if run.info.main:
        runfolder.write_records(metrics, run.records)
    log.info("resumed from %s at epoch %d (step %d)", path, run.start_epoch, run.step)


def _start_folder(run: Run, fresh: bool) -> None:
    """Rank 0: the resolved config, and for a fresh run an empty log and init.pt."""
    out = run.out_dir
    for stale in runfolder.clean_stale(out):
        log.info("removed %s, left by a run killed while saving", stale.name)
    # the data choices made from the files, as comments: the keys stay as given, so --resume compares equal
    runfolder.atomic_write(out / runfolder.CONFIG, C.dump(run.cfg) + resolved_comment(resolved(run)))
    if fresh:
        (out / runfolder.METRICS).unlink(missing_ok=True)  # a fresh run owns its folder's records
        ckpt.save({"model": run.init_state, "masking": run.masking.state_dict() if run.masking else None},
                  out / runfolder.INIT)


def resolved(run: Run) -> dict:
    """The choices made from the files and the run itself: the data set's
    (``data.channels``, mean, std, ...) and the method's (thin dense's solved width)."""
    return {**{f"data.{k}": v for k, v in run.data.resolved.items()}, **getattr(run.model, "dsr_tune_info", {})}


def save_checkpoint(run: Run, epoch: int) -> Path:
    """Everything to continue exactly after ``epoch``, records included (rank 0 writes)."""
    path = run.out_dir / runfolder.CHECKPOINT
    if run.info.main:
        ckpt.save({
            "model": unwrap(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "masking": run.masking.state_dict() if run.masking else None,
            "epoch": epoch + 1, "step": run.step, "config": run.cfg.to_dict(), "records": run.records,
        }, path)
    return path


def _describe(run: Run) -> str:
    m = run.masking
    budget = f"{m.budget}/{m.sparse_numel} sparse weights active ({run.cfg.sparsity.method})" if m else "dense"
    return (f"{run.cfg.model.name} on {run.device}: {sum(p.numel() for p in run.model.parameters())} params dense, "
            f"{budget}; {run.steps_per_epoch} steps/epoch, {run.info.world_size} worker(s), lr {run.lr:.4g}")


def train(cfg: C.Config, out_dir: str | Path, *, resume: bool | str | Path = False,
          loggers: Sequence[MetricLogger] = (), on_epoch_end: EpochCallback | None = None,
          progress: bool | None = None) -> dict:
    """Train ``cfg`` and write config.yaml, metrics.jsonl and checkpoints to ``out_dir``.

    resume: False; True (the latest checkpoint in ``out_dir``, or a fresh start
        if it holds none); or a checkpoint path to start from.
    on_epoch_end: called on every rank after each epoch with the epoch record
        and the checkpoint path written this epoch (or None).
    Returns the last epoch record.
    """
    out_dir = Path(out_dir)
    C.check_paths(cfg)  # here, where training runs (a launching node may not hold the data)
    run = setup(cfg, out_dir, resume)
    resume_from = _resume_path(out_dir, resume)
    if resume_from is not None:
        restore(run, resume_from)
    kept = run.start_epoch if resume_from is not None else None  # the epochs of the last complete checkpoint
    record: dict = {}
    status, began, active = Status.FAILED, time.perf_counter(), list(loggers) if run.info.main else []
    try:
        if run.info.main:
            _start_folder(run, fresh=resume_from is None)
            active.insert(0, JsonlLogger(out_dir / runfolder.METRICS))
            log.info("%s", _describe(run))
        for lg in active:
            lg.log_params(cfg.flat() | {f"resolved.{k}": v for k, v in resolved(run).items()}
                          | {"device": run.flops.device})  # the first device of a run resumed elsewhere: see records

        def emit(record: dict) -> None:
            run.records.append(record)
            for lg in active:
                lg.log_record(record)

        show_bar = run.info.main and (sys.stderr.isatty() if progress is None else progress)
        end = min(cfg.train.epochs, cfg.train.stop_after or cfg.train.epochs)
        for epoch in range(run.start_epoch, end):
            started, epoch_lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
            trained = train_epoch(run, epoch, emit, show_bar)
            run.scheduler.step()
            record = epoch_record(run, epoch, trained, epoch_lr, started)
            run.records.append(record)
            due = (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == end
            path = save_checkpoint(run, epoch) if due else None
            kept = epoch + 1 if due else kept
            for lg in active:  # after the checkpoint: a kill in between loses nothing (resume rewrites the log)
                lg.log_record(record)
            if run.info.main:
                log.info("%s", progress_line(record, run.records, cfg.train.epochs,
                                             (time.perf_counter() - began) / (epoch + 1 - run.start_epoch)))
            if on_epoch_end is not None:
                on_epoch_end(record, path)
        status = Status.FINISHED
    except KeyboardInterrupt:
        status = Status.KILLED
        raise
    except runfolder.StorageError as exc:  # disk full, a folder no longer writable: say what is kept
        exc.epochs_kept = kept
        raise
    finally:
        for lg in active:
            lg.close(status)
    return record
