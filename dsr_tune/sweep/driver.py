"""Run a sweep (or a comparison) phase by phase, resumable, tracked in MLflow.

The phases (:func:`.plan.search_phases`, then the paired stages) run in
order; each one done is written to sweep.json (a search the plan gained
after the selection was made is not run: :func:`.folder.searches_left`).
``--resume`` goes on from what the tool itself wrote, never from Tune's
pickled state: a search from its Optuna study (:mod:`.study`: trials ended
are kept, unfinished ones run again with the values they were asked with
and continue from their run folders' checkpoints), a paired phase from
``paired.json`` and the run folders (the jobs not finished yet). Between the
searches and the paired phases the selection (:mod:`.select`) is written to
``paired.json``, once.
A storage fault (:class:`.trial.StorageFault`) stops the sweep, resumable.

``dsr-tune compare`` (:func:`compare`) is a sweep without a search phase:
its config as given is the selection. Its runs go through Tune when it is
given a cluster or a concurrency, else one after another in this process,
without Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import config as C
from ..records import SCORED, Role, Status
from ..tracking import SweepTracker
from . import plan, progress
from .rows import default_labels
from .folder import SWEEP_FILE, connect, new_tracker, prepare, save, searches_left, sync_leftovers, unsynced
from .jobs import PAIRED_FILE, SweepContext, write_paired
from .spec import Space, for_compare
from .terms import Phase
from .trial import StorageFault

log = logging.getLogger("dsr_tune")


@dataclass
class Outcome:
    status: Status           # FINISHED, KILLED (interrupted: resume it) or FAILED (no search trial finished)
    sweep_dir: Path
    sweep_id: str
    tracker: SweepTracker
    unsynced: list[str]      # run keys MLflow does not fully hold
    error: str | None = None  # why it stopped (a storage fault: a run folder could not be written)


def run(space: Space, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        address: str | None = None, verbose: bool = False, table: bool = False, local: bool = False) -> Outcome:
    """Run the sweep of ``space`` in ``out_dir`` (or finish it with ``resume``).
    ``local``: run the paired jobs in this process, one after another, without
    Ray (a comparison without search only). Progress goes to the ``dsr_tune``
    logger, one line per event; ``table`` adds Tune's trial table."""
    out_dir = Path(out_dir).expanduser().resolve()
    meta = prepare(space, out_dir, resume=resume, overwrite=overwrite)
    tracker = new_tracker(space, meta)
    error = None
    try:
        if local:
            connect(tracker, space, out_dir, meta, resume=resume)
            meta["tracker"] = tracker.to_json()
            ctx = SweepContext(sweep_dir=str(out_dir), base=space.base.to_dict(),
                               trial_seed=space.search.trial_seed, tracker=tracker)
            status = _phases(space, ctx, meta, out_dir, runner=None)
        else:
            status = _on_ray(space, out_dir, meta, tracker, resume, address, verbose, table)
    except StorageFault as exc:  # the next run would hit the same disk: stop, resumable
        status, error = Status.KILLED, str(exc)
    meta["status"] = status
    try:
        save(out_dir, meta)
    except OSError:
        if error is None:
            raise
    if error:
        return Outcome(status, out_dir, meta["sweep_id"], tracker, unsynced(out_dir), error)
    # what MLflow missed (also when the store came back after being down); an interrupted
    # sweep leaves that to --resume, to exit at once
    left = unsynced(out_dir) if status == Status.KILLED else sync_leftovers(out_dir)
    return Outcome(status, out_dir, meta["sweep_id"], tracker, left)


def _on_ray(space: Space, out_dir: Path, meta: dict, tracker, resume: bool, address, verbose: bool,
            table: bool) -> Status:
    """The phases on Ray Tune. MLflow (its import, the store, the parent run) is reached while Ray
    starts: the two took several seconds each, one after the other, much of it waiting on other
    processes and files."""
    from concurrent.futures import ThreadPoolExecutor

    from .tune import with_ray  # imports ray (first: the modules ray and mlflow share load once, here)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-connect") as pool:
        connecting = pool.submit(connect, tracker, space, out_dir, meta, resume=resume)

        def phases(*args) -> Status:
            connecting.result()  # before the first trial takes the tracker with it
            meta["tracker"] = tracker.to_json()
            return _phases(*args)

        return with_ray(space, out_dir, meta, tracker, address, verbose, table, phases)


def _searched_rows(out_dir: Path):
    from .report.gather import load_local

    return [r for r in load_local(out_dir) if r.role == Role.SEARCH]


def _phases(space: Space, ctx: SweepContext, meta: dict, out_dir: Path, runner) -> Status:
    """Every phase not done yet; ``runner(phase, jobs or None)`` runs a Tune phase
    and says whether all its trials ended (None: the paired jobs run here)."""
    from .select import compare_jobs, paired_jobs

    done = meta.setdefault("done", [])
    for phase in searches_left(space, meta, out_dir):
        if not runner(phase, None):
            return Status.KILLED
        done.append(phase.name)
        save(out_dir, meta)
    if not (out_dir / PAIRED_FILE).exists():
        if space.sparsities is None:
            rows = _searched_rows(out_dir)
            if not any(r.status in SCORED for r in rows):
                log.info("no search trial trained to the end, so there is nothing to select")
                return Status.FAILED
            jobs = paired_jobs(space, ctx, rows)
        else:
            jobs = compare_jobs(space, ctx)
        write_paired(out_dir, jobs)
    jobs = list(ctx.paired_jobs().values())
    for stage in sorted({j.stage for j in jobs}):
        phase = Phase.paired(stage)
        if phase.name in done:
            continue
        keys = [j.key for j in jobs if j.stage == stage]
        if plan.match_budgets([j for j in jobs if j.stage == stage], ctx.run_dir):  # their DSR runs have trained
            write_paired(out_dir, jobs)
        log.info("[%s] %d runs: %s", phase, len(keys), "the selection re-trained on fresh seeds, the baselines "
                 "and dense" if stage == 0 else "the runs that start from stage-0 runs (gmp, ablations) or are "
                 "sized by them (compute-matched controls)")
        ended = _run_here(ctx, keys, phase) if runner is None else runner(phase, keys)
        if not ended:
            return Status.KILLED
        done.append(phase.name)
        save(out_dir, meta)
    return Status.FINISHED


def _run_here(ctx: SweepContext, keys: list[str], phase: Phase) -> bool:
    """The jobs of a phase in this process, one after another (a comparison without Ray)."""
    from .trial import run_job

    jobs = ctx.paired_jobs()
    lines = progress.Local(jobs, keys)
    for i, key in enumerate(keys, 1):
        job = jobs[key]
        head = f"[{phase} {i}/{len(keys)}] {job.run_name}"
        log.info("%s: training (%d epochs) ...", head, job.config["train"]["epochs"])
        t0 = time.perf_counter()
        record, trained = run_job(ctx, job)
        log.info("%s: %s", head, lines.ended(job, record, trained, time.perf_counter() - t0))
    return True


# ---------------------------------------------------------------- dsr-tune compare


def compare(cfg: C.Config, out_dir: str | Path, *, sparsities: Sequence[float], seeds: int = 3,
            methods: Sequence[str] | None = None, address: str | None = None, concurrency: int = 0,
            name: str | None = None, tracking_uri: str | None = None, verbose: bool = False) -> Outcome:
    """Run (or finish) the comparison of ``cfg`` in ``out_dir``: every row
    (default: :func:`.rows.default_labels`) at each sparsity, on ``seeds`` seeds
    (train.seed, +1, ...). Run it again to continue an interrupted one."""
    space = for_compare(cfg, name=name or Path(out_dir).name, sparsities=list(sparsities),
                        seeds=[cfg.train.seed + i for i in range(seeds)], labels=list(methods or default_labels()),
                        tracking_uri=tracking_uri)
    if concurrency:
        space.search.max_concurrent = concurrency
    t = cfg.train
    if (address or concurrency) and t.workers <= 1 and t.device not in ("auto", "cpu"):
        # on Ray a run trains on the GPU its trial reserved, or on the CPU (the others are hidden)
        raise C.ConfigError("train.device", f"{t.device!r}: on Ray each run trains on the device its trial "
                                            "reserves; use train.device=auto with train.workers=1 "
                                            "train.use_gpu=true (one GPU per run), or cpu")
    out_dir = Path(out_dir).expanduser().resolve()
    resume = (out_dir / SWEEP_FILE).exists()
    return run(space, out_dir, resume=resume, address=address, verbose=verbose,
               local=not (address or concurrency))
