"""The Ray side of a sweep: the session, one Tune phase, MLflow's parent and leftovers.

Concurrency: a single-worker trial holds ``search.trial_cpus`` plus
``train.cpus_per_worker`` CPUs (and one GPU with ``train.use_gpu``: Tune's
placement is the device it trains on); a multi-worker trial holds
``trial_cpus`` and its Ray Train workers theirs. ``max_concurrent_trials`` is
``search.max_concurrent``, else what the cluster has room for when the sweep
starts (:func:`.space.concurrency`).

Local Ray or a cluster: what counts is whether the sweep joined an existing
cluster (``--address`` or $RAY_ADDRESS), not how many nodes are up when it
starts. On a cluster the sweep folder must be shared: trials write their run
folders into it from whichever node they run on; with a sqlite store only
the head reaches, each run is logged once it ends, by the driver.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .. import runfolder
from ..tracking import SweepTracker, store
from ..tracking.mlflow_runs import read_run_file
from ..tracking.sync import SyncError, run_folders, sync_sweep
from .folder import parent_params
from .jobs import SweepContext
from .space import Space, concurrency, params_for, phase_cell
from .trial import in_process

log = logging.getLogger("dsr_tune")

# Ray and Tune settings for readable output and a resumable state on disk; read when ray is imported
TUNE_ENV = {  # on top of dsr_tune.distributed's TRAIN_ENV (and LOCAL_RAY_ENV on a Ray started here)
    "RAY_AIR_NEW_OUTPUT": "0",            # the legacy reporter: silent at verbose=0 (we print our own lines)
    "TUNE_GLOBAL_CHECKPOINT_S": "5",      # save the experiment state at most every 5 s (a killed driver loses little)
}
# Ray gives the head node of every cluster this resource; there is no public scheduling option
# for "the head node" (NodeAffinity needs a node id). tests/test_ray_internals.py checks the name.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def trial_resources(space: Space, on_cluster: bool) -> dict:
    t = space.base.train
    if in_process(space.base.to_dict(), space.search.in_trial):
        return {"cpu": space.search.trial_cpus + t.cpus_per_worker, **({"gpu": 1} if t.use_gpu else {})}
    resources = {"cpu": space.search.trial_cpus}
    if on_cluster:  # the trial process of a worker group on the head, beside the sweep folder
        resources[HEAD_NODE_RESOURCE] = 0.001
    return resources


def tune_config(phase: str, space: Space, ctx: SweepContext, n_concurrent: int, keys: list[str] | None):
    """The ``TuneConfig`` and param space of a phase (builds the searcher, but starts no Ray)."""
    from ray import tune

    from . import search

    s = space.search
    if phase.startswith("search-"):
        method, sparsity = phase_cell(phase)
        tc = tune.TuneConfig(search_alg=search.searcher(space, method, ctx.sweep_dir, ctx.tracker.sweep_id, sparsity),
                             scheduler=search.scheduler(space), num_samples=s.samples,
                             max_concurrent_trials=n_concurrent, trial_dirname_creator=trial_dirname,
                             # not with ASHA: Tune cannot reuse the process of a trial it stopped
                             # mid-fit, and then fails the next trials
                             reuse_actors=s.asha is None,
                             **({"metric": s.metric, "mode": s.mode} if s.asha is not None else {}))
        return tc, None
    tc = tune.TuneConfig(max_concurrent_trials=n_concurrent, trial_dirname_creator=trial_dirname, reuse_actors=True)
    return tc, {"job": tune.grid_search(list(keys))}


def progress_table(phase: str, space: Space):
    """Tune's own trial table (its legacy CLIReporter), at most every 30 s:
    the searched values (or the paired run) and the latest metrics per trial."""
    from ray.tune import CLIReporter

    s = space.search
    keys = [p.key for p in params_for(space, *phase_cell(phase))] if phase.startswith("search-") else []
    short = [k.rsplit(".", 1)[-1] for k in keys]  # sparsity.dsr.delta -> delta, unless two keys end alike
    params = dict(zip(keys, short if len(set(short)) == len(short) else keys))
    return CLIReporter(metric_columns={"epochs_done": "epochs", s.metric: s.metric, "test_acc": "test_acc",
                                       "nonzero_params": "non-zero"},
                       parameter_columns=params if keys else {"job": "run"}, max_report_frequency=30,
                       metric=None if s.pareto else s.metric, mode=None if s.pareto else s.mode,
                       sort_by_metric=not s.pareto)


def tune_phase(phase: str, space: Space, ctx: SweepContext, keys: list[str] | None, *, n_concurrent: int,
               on_cluster: bool, table: bool = False) -> bool:
    """Run (or restore) one Tune phase; True when every trial ended."""
    from ray import tune

    from .callbacks import Finalizer, Progress, use_context
    from .selection import epochs_after
    from .trial import run_trial

    use_context(ctx)  # for the callbacks a restored Tuner brings back
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(space, on_cluster))
    total = space.search.samples if keys is None else len(keys)
    path = Path(ctx.sweep_dir) / runfolder.TUNE / phase
    if tune.Tuner.can_restore(str(path)):
        log.info("[%s] restoring Tune's state from %s", phase, path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        s = space.search
        tc, param_space = tune_config(phase, space, ctx, n_concurrent, keys)
        table_kw = {"verbose": 1, "progress_reporter": progress_table(phase, space)} if table else {"verbose": 0}
        jobs = ctx.paired_jobs() if keys is not None else {}  # each trial's epochs: the sweep's ETA
        planned = space.base.train.epochs if keys is None else {k: jobs[k].config["train"]["epochs"] for k in keys}
        progress = Progress(phase, total, ctx, s.metric, s.mode, planned=planned, later=epochs_after(space, ctx, phase))
        rc = tune.RunConfig(name=phase, storage_path=str(Path(ctx.sweep_dir) / runfolder.TUNE), **table_kw,
                            failure_config=tune.FailureConfig(max_failures=s.max_failures),
                            sync_config=tune.SyncConfig(sync_period=5),
                            callbacks=[Finalizer(ctx), progress])
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tc, run_config=rc)
    grid = tuner.fit()
    return grid.num_terminated + grid.num_errors >= total


def trial_dirname(trial) -> str:
    """Tune's per-trial folder: the trial id (the default repeats every parameter)."""
    return trial.trial_id


def _quiet_tune() -> None:
    # Tune's own "resume with Tuner.restore(...)" advice: ours names the CLI command instead
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # Tune's "the `process_trial_result` operation took 0.6 s, which may be a performance bottleneck":
    # on a small shared machine the searcher's bookkeeping often passes Tune's 0.5 s mark; nothing to act on
    logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
    # Optuna's note that a restored trial reports a step again (Tune restarts training_iteration)
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")


def open_tracker(space: Space, out_dir: Path, meta: dict, *, resume: bool) -> SweepTracker:
    """The sweep's tracker, connected (experiment, parent run) if MLflow answers;
    on ``resume`` also logs what MLflow missed of the trials that ended."""
    tracker = SweepTracker.from_json(meta["tracker"])
    tracker.target = store.with_credentials(tracker.target, space.tracking_uri)  # sweep.json keeps none
    error = tracker.connect(meta.get("parent_params") or parent_params(space))  # what sync logs, too
    if error:
        log.warning("%s\n  the sweep trains anyway and keeps every record in its run folders; "
                    "log them later with: dsr-tune sync %s", error, out_dir)
        return tracker
    where = ("embedded store " if tracker.target.embedded else "") + store.redact(tracker.target.uri)
    log.info("MLflow: experiment %r, parent run %s (%s)", tracker.experiment, meta["sweep_id"], where)
    if resume:
        sync_leftovers(out_dir)
    return tracker


def with_ray(space: Space, out_dir: Path, meta: dict, tracker: SweepTracker, address: str | None, verbose: bool,
             table: bool, phases) -> str:
    """Start or join Ray and run ``phases(space, ctx, meta, out_dir, runner)`` with Tune as the runner."""
    from ..distributed import joins_cluster, ray_env, ray_session

    on_cluster = joins_cluster(address)
    ctx = SweepContext(sweep_dir=str(out_dir), base=space.base.to_dict(), trial_seed=space.search.trial_seed,
                       tracker=tracker, live_logging=not (on_cluster and tracker.target.embedded),
                       in_trial=space.search.in_trial)
    env = ray_env(on_cluster, TUNE_ENV)
    _quiet_tune()
    t = space.base.train
    need = space.search.trial_cpus + max(1, t.workers) * t.cpus_per_worker  # one trial; a local Ray gets at least this
    with ray_session(address, cpus=need, log_to_driver=verbose, runtime_env={"env_vars": env}):
        import ray

        have = ray.cluster_resources()
        gpus = t.workers if t.use_gpu else 0
        if have.get("CPU", 0) < need - 1e-9 or have.get("GPU", 0) < gpus:
            log.warning("a trial needs %g CPUs and %d GPUs; the cluster has %g CPUs and %g GPUs: trials wait until "
                        "nodes join", need, gpus, have.get("CPU", 0), have.get("GPU", 0))
        n = concurrency(space, have)
        if not ctx.live_logging:
            log.info("note: a Ray cluster and a sqlite store only this node reaches: each run is logged when it "
                     "ends (set tracking.uri to an MLflow server for live metrics)")
        how = ("in the trial's process" if in_process(space.base.to_dict(), space.search.in_trial)
               else f"on {t.workers} Ray Train workers x {t.cpus_per_worker:g} CPU")
        log.info("sweep %s in %s: %d trial(s) at a time, each trains %s%s", meta["sweep_id"], out_dir, n, how,
                 " with 1 GPU" if t.use_gpu else "")

        def runner(phase: str, keys: list[str] | None) -> bool:
            return tune_phase(phase, space, ctx, keys, n_concurrent=n, on_cluster=on_cluster, table=table)

        return phases(space, ctx, meta, out_dir, runner)


def unsynced(out_dir: Path) -> list[str]:
    return [info["key"] for d in run_folders(out_dir)
            if (info := read_run_file(d)) and "key" in info and not info.get("synced")]


def sync_leftovers(out_dir: Path) -> list[str]:
    """Log what MLflow missed (a server that was down for a while); returns
    the keys of runs it still does not fully hold (unfinished ones included)."""
    if not unsynced(out_dir):
        return []
    try:
        s = sync_sweep(out_dir)
        if s.metrics or s.created:
            log.info("MLflow: logged %d metric values of %d run(s) it had missed (%d run(s) created)",
                     s.metrics, s.runs, s.created)
    except SyncError as exc:
        log.warning("MLflow sync failed: %s", exc)
    return unsynced(out_dir)
