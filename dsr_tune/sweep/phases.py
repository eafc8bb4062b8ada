"""Run a sweep (or a comparison) phase by phase, tracked in MLflow.

1. ``search-<method>`` (``search-<method>-s<sparsity>`` when the space
   searches a choice of sparsities: one per sparsity), one per searched
   method (and, with ``tune_baselines``, per tuned baseline): Optuna proposes
   ``search.samples`` hyperparameter sets on ``search.trial_seed``, each a
   Tune trial (:func:`.trial.run_trial`);
2. the selection: each method's best trial per sparsity on the validation
   metric, and the plan of every row on the report's fresh seeds
   (:mod:`.selection`), written to ``paired.json``;
3. ``paired-0`` then ``paired-1``: the planned runs, stage by stage (GMP and
   the ablations start from stage-0 runs).

``dsr-tune compare`` is the same with no search phase: its config as given
is the selection. Its runs go through Tune too when it is given a cluster or
a concurrency, else one after another in this process (no Ray at all).

Every phase keeps Tune's experiment state under ``tune/<phase>``:
``--resume`` restores the unfinished one (finished trials are neither lost
nor run again; cut-off ones continue from their checkpoints) and goes on.
Trial processes are reused from one trial to the next, except with ASHA.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..tracking import SweepTracker
from . import tunephase
from .folder import prepare, save
from .jobs import PAIRED_FILE, SweepContext, write_paired
from .space import Space, search_phases

log = logging.getLogger("dsr_tune")


@dataclass
class Outcome:
    status: str              # FINISHED, KILLED (interrupted: resume it) or FAILED (no search trial finished)
    sweep_dir: Path
    sweep_id: str
    tracker: SweepTracker
    unsynced: list[str]      # run keys MLflow does not fully hold


def run(space: Space, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        address: str | None = None, verbose: bool = False, table: bool = False, local: bool = False) -> Outcome:
    """Run the sweep of ``space`` in ``out_dir`` (or finish it with ``resume``).
    ``local``: run the paired jobs in this process, one after another, without
    Ray (a comparison without search only). Progress goes to the ``dsr_tune``
    logger, one line per event; ``table`` adds Tune's trial table."""
    out_dir = Path(out_dir).expanduser().resolve()
    meta = prepare(space, out_dir, resume=resume, overwrite=overwrite)
    tracker = tunephase.open_tracker(space, out_dir, meta, resume=resume)
    meta["tracker"] = tracker.to_json()
    if local:
        ctx = SweepContext(sweep_dir=str(out_dir), base=space.base.to_dict(), trial_seed=space.search.trial_seed,
                           tracker=tracker)
        status = _phases(space, ctx, meta, out_dir, runner=None)
    else:
        status = tunephase.with_ray(space, out_dir, meta, tracker, address, verbose, table, _phases)
    meta["status"] = status
    save(out_dir, meta)
    # what MLflow missed (also when the store came back after being down); an interrupted
    # sweep leaves that to --resume, to exit at once
    unsynced = tunephase.unsynced(out_dir) if status == "KILLED" else tunephase.sync_leftovers(out_dir)
    return Outcome(status, out_dir, meta["sweep_id"], tracker, unsynced)


def _searched_rows(out_dir: Path):
    from .report import load_local

    return [r for r in load_local(out_dir) if r.role == "search"]


def _phases(space: Space, ctx: SweepContext, meta: dict, out_dir: Path, runner) -> str:
    """Every phase not done yet; ``runner(phase, jobs or None)`` runs a Tune phase
    and says whether all its trials ended (None: the paired jobs run here)."""
    from .selection import compare_jobs, paired_jobs

    done = meta.setdefault("done", [])
    for phase in search_phases(space):
        if phase not in done:
            if not runner(phase, None):
                return "KILLED"
            done.append(phase)
            save(out_dir, meta)
    if not (out_dir / PAIRED_FILE).exists():
        if space.sparsities is None:
            rows = _searched_rows(out_dir)
            if not any(r.status in ("FINISHED", "KILLED") for r in rows):
                log.info("no search trial trained to the end, so there is nothing to select")
                return "FAILED"
            jobs = paired_jobs(space, ctx, rows)
        else:
            jobs = compare_jobs(space, ctx)
        write_paired(out_dir, jobs)
    jobs = list(ctx.paired_jobs().values())
    for stage in sorted({j.stage for j in jobs}):
        phase = f"paired-{stage}"
        if phase in done:
            continue
        keys = [j.key for j in jobs if j.stage == stage]
        log.info("[%s] %d runs: %s", phase, len(keys), "the selection re-trained on fresh seeds, the baselines "
                 "and dense" if stage == 0 else "the runs that start from stage-0 runs (gmp, ablations)")
        ended = _run_here(ctx, keys, phase) if runner is None else runner(phase, keys)
        if not ended:
            return "KILLED"
        done.append(phase)
        save(out_dir, meta)
    return "FINISHED"


def _run_here(ctx: SweepContext, keys: list[str], phase: str) -> bool:
    """The jobs of a phase in this process, one after another (a comparison without Ray)."""
    from . import tables
    from .execute import run_job
    from .results import RunRow

    from ..train.metrics import duration

    jobs = ctx.paired_jobs()
    epochs_left = sum(jobs[k].config["train"]["epochs"] for k in keys)
    later = sum(j.config["train"]["epochs"] for j in jobs.values() if j.stage > jobs[keys[0]].stage) if keys else 0
    spent, trained_epochs, rows = 0.0, 0, []  # what this process trained: the ETAs per epoch
    for i, key in enumerate(keys, 1):
        job = jobs[key]
        head = f"[{phase} {i}/{len(keys)}] {job.run_name}"
        log.info("%s: training (%d epochs) ...", head, job.config["train"]["epochs"])
        t0 = time.perf_counter()
        record, trained = run_job(ctx, job)
        epochs_left -= job.config["train"]["epochs"]
        if trained:
            spent, trained_epochs = spent + time.perf_counter() - t0, trained_epochs + job.config["train"]["epochs"]
        rows.append(RunRow(key, job.role, job.method, job.sparsity, job.seed, "FINISHED", record,
                           job.config["train"]["epochs"]))
        how = f"{time.perf_counter() - t0:.0f} s" if trained else "trained before, skipped"
        per_epoch = spent / trained_epochs if trained_epochs else 0
        eta = [f"total ETA {duration(per_epoch * (epochs_left + later))}"] if per_epoch and epochs_left + later else []
        eta += [f"phase ETA {duration(per_epoch * epochs_left)}"] if per_epoch and epochs_left else []
        best = tables.standing(rows, job.sparsity) if job.sparsity is not None else ""
        val = f"val {100 * record['val_acc']:.2f}%, " if "val_acc" in record else ""
        log.info("%s: %stest %.2f%%, %s non-zero, %d epochs (%s%s%s)", head, val, 100 * record["test_acc"],
                 f"{record['nonzero_params']:,}", record["epoch"] + 1, how, f"; {best}" if best else "",
                 "; " + ", ".join(eta) if eta else "")
    return True
