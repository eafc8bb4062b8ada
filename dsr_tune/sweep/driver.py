"""Run a sweep: two Tune phases on one Ray session, tracked in MLflow.

1. search: Optuna proposes ``search.samples`` hyperparameter sets; each is
   a Tune trial training through Ray Train (:func:`.trial.run_trial`);
2. paired: once the search has ended, the baselines of every evaluated
   sparsity, the best trials on the other seeds and the dense reference
   (:mod:`.pairing`), a fixed list of trials.

A second phase after the search (rather than baselines launched during it)
keeps Optuna's study free of runs it did not propose and trains each
baseline once per (sparsity, seed), derived from the best trial it is
compared with. Both phases keep Tune's experiment state in the sweep
folder: ``--resume`` restores the unfinished phase (finished trials are
neither lost nor run again; cut-off ones continue from their checkpoints)
and starts the paired phase if the search had ended.

Trial processes are reused from one trial to the next (torch, Ray Train and
mlflow stay imported), except with ASHA: a few seconds less start-up per trial.

Concurrency: each trial holds ``search.trial_cpus`` plus its Ray Train
workers' CPUs (and GPUs); ``max_concurrent_trials`` is ``search.max_concurrent``,
else what the cluster has room for when the sweep starts (see
:func:`.space.concurrency`), so trials start on a 2-CPU node.

Local Ray or a cluster: what counts is whether the sweep joined an existing
cluster (``--address`` or $RAY_ADDRESS, as in a Ray job), not how many nodes
are up when it starts (an autoscaler adds them later). On a cluster, trial
processes stay on the head, beside the sweep folder, and a sqlite store is
written once per run, from the head, when the run ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import config as C
from .. import runfolder
from ..tracking import SweepTracker, store
from ..tracking.sync import SWEEP_FILE, SyncError, run_folders, sync_sweep
from ..tracking.tracker import read_run_file
from .jobs import PAIRED_FILE, SweepContext, write_paired
from .space import Space, concurrency

log = logging.getLogger("dsr_tune")

# Ray and Tune settings for readable output and a resumable state on disk; read when ray is imported
TUNE_ENV = {  # on top of dsr_tune.distributed's TRAIN_ENV (and LOCAL_RAY_ENV on a Ray started here)
    "RAY_AIR_NEW_OUTPUT": "0",            # the legacy reporter: silent at verbose=0 (we print our own lines)
    "TUNE_GLOBAL_CHECKPOINT_S": "5",      # save the experiment state at most every 5 s (a killed driver loses little)
}
# Ray gives the head node of every cluster this resource; there is no public scheduling option
# for "the head node" (NodeAffinity needs a node id). tests/test_ray_internals.py checks the name.
HEAD_NODE_RESOURCE = "node:__internal_head__"
# What a sweep folder holds (see .jobs): --overwrite deletes a folder only if it holds nothing else
SWEEP_LAYOUT = {SWEEP_FILE, "optuna.db", "optuna.db-journal", "optuna.db-wal", "optuna.db-shm", PAIRED_FILE,
                "paired.tmp", "runs", "ray_train", "tune", "report.md", "report.png"}


@dataclass
class Outcome:
    status: str              # FINISHED, KILLED (interrupted: resume it) or FAILED (no search trial finished)
    sweep_dir: Path
    sweep_id: str
    tracker: SweepTracker
    unsynced: list[str]      # run keys MLflow does not fully hold


def default_output(space: Space) -> Path:
    return Path("runs") / "sweeps" / space.name


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def prepare(space: Space, out_dir: Path, *, resume: bool, overwrite: bool) -> dict:
    """The sweep's sweep.json: a new one, or the one to resume (same space, same
    place), marked RUNNING again. Raises ConfigError for a folder that cannot
    be used as asked."""
    meta_path = out_dir / SWEEP_FILE
    raw = json.loads(json.dumps(space.raw, default=str))
    if isinstance((raw.get("tracking") or {}).get("uri"), str):  # written down without credentials
        raw["tracking"]["uri"] = store.redact(raw["tracking"]["uri"])
    if resume:
        if not meta_path.exists():
            raise C.ConfigError("--resume", f"{out_dir} holds no sweep to resume (no {SWEEP_FILE})")
        meta = json.loads(meta_path.read_text())
        changed = _diff(meta["space"], raw)
        if changed:
            raise C.ConfigError("--resume", f"the space differs from the sweep's own in {', '.join(changed)}; "
                                "resume with the same file and overrides")
        if meta.get("path", str(out_dir)) != str(out_dir):
            # Tune's experiment state (trial folders) and the pickled searcher (its Optuna storage)
            # hold absolute paths: a restored sweep would read and write the old place
            raise C.ConfigError("--resume", f"the sweep was started in {meta['path']} and has moved to {out_dir}; "
                                "Tune's saved state points to the old place: move it back (or link it there) "
                                "to resume")
        # before anything syncs: a sweep.json still saying KILLED would close the parent run
        meta["status"] = "RUNNING"
        meta.setdefault("parent_params", _parent_params_json(space))  # a sweep.json from before they were kept
        _save(out_dir, meta)
        return meta
    _clear(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_id = f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracker = SweepTracker(store.resolve(space.tracking_uri), space.experiment, sweep_id, store.git_revision())
    meta = {"sweep_id": sweep_id, "space_file": str(space.path), "path": str(out_dir), "space": raw,
            "phase": "search", "status": "RUNNING", "tracker": tracker.to_json(),
            # the parent run's params, for a parent that `dsr-tune sync` creates (MLflow down at the start)
            "parent_params": _parent_params_json(space)}
    _save(out_dir, meta)
    return meta


def _clear(out_dir: Path, overwrite: bool) -> None:
    """Make room for a new sweep: an empty or missing folder is fine; with
    ``overwrite`` a sweep folder (and nothing else) is deleted."""
    if not (out_dir.exists() and any(out_dir.iterdir())):
        return
    is_sweep = (out_dir / SWEEP_FILE).exists()
    if not overwrite:
        raise C.ConfigError("--output", f"{out_dir} already holds {'a sweep' if is_sweep else 'files'}; pass "
                            "--resume to continue a sweep or --overwrite to start over in a sweep folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in SWEEP_LAYOUT and ".tmp-" not in p.name)
    if foreign or not is_sweep:
        shown = ", ".join(foreign[:5]) or f"no {SWEEP_FILE}"
        raise C.ConfigError("--overwrite", f"{out_dir} is not a sweep folder ({shown}); refusing to delete it: "
                            "pick another --output")
    shutil.rmtree(out_dir)


def _save(out_dir: Path, meta: dict) -> None:
    runfolder.write_json(out_dir / SWEEP_FILE, meta)


def parent_params(space: Space) -> dict:
    """The sweep's settings as the parent run's params."""
    out = {"space_file": str(space.path), "methods": ",".join(space.methods), "seeds": space.seeds,
           "baselines": ",".join(space.baselines), "dense": space.dense}
    out.update({f"search.{k}": v for k, v in space.search.to_dict().items()})
    out.update({f"space.{p.key}": f"{p.kind} {list(p.endpoints())}" for p in space.params})
    out.update({f"base.{k}": v for k, v in space.base.flat().items()})
    return out


def _parent_params_json(space: Space) -> dict[str, str]:
    """:func:`parent_params` as MLflow stores them (strings, as runs.log_params writes them)."""
    return {k: str(v) for k, v in parent_params(space).items()}


def tune_config(phase: str, space: Space, ctx: SweepContext, n_concurrent: int):
    """The ``TuneConfig`` and param space of a phase (builds the searcher, but starts no Ray)."""
    from ray import tune

    from . import search

    s = space.search
    if phase == "search":
        tc = tune.TuneConfig(search_alg=search.searcher(space, ctx.sweep_dir, ctx.tracker.sweep_id),
                             scheduler=search.scheduler(space), num_samples=s.samples,
                             max_concurrent_trials=n_concurrent, trial_dirname_creator=trial_dirname,
                             # not with ASHA: Tune cannot reuse the process of a trial it stopped
                             # mid-fit, and then fails the next trials
                             reuse_actors=s.asha is None,
                             **({"metric": s.metric, "mode": s.mode} if s.asha is not None else {}))
        return tc, None
    tc = tune.TuneConfig(max_concurrent_trials=n_concurrent, trial_dirname_creator=trial_dirname, reuse_actors=True)
    return tc, {"job": tune.grid_search(list(ctx.paired_jobs()))}


def progress_table(phase: str, space: Space):
    """Tune's own trial table (its legacy CLIReporter), at most every 30 s:
    the searched values (or the paired run) and the latest metrics per trial."""
    from ray.tune import CLIReporter

    s = space.search
    keys = (["method"] if len(space.methods) > 1 else []) + [p.key for p in space.params]
    short = [k.rsplit(".", 1)[-1] for k in keys]  # sparsity.delta -> delta, unless two keys end alike
    params = dict(zip(keys, short if len(set(short)) == len(short) else keys))
    return CLIReporter(metric_columns={"epochs_done": "epochs", s.metric: s.metric, "nonzero_params": "non-zero"},
                       parameter_columns=params if phase == "search" else {"job": "run"}, max_report_frequency=30,
                       metric=None if s.pareto else s.metric, mode=None if s.pareto else s.mode,
                       sort_by_metric=not s.pareto)


def _tune_phase(phase: str, space: Space, ctx: SweepContext, *, n_concurrent: int, total: int,
                on_cluster: bool, table: bool = False) -> bool:
    """Run (or restore) one Tune phase; True when every trial ended."""
    from ray import tune

    from .callbacks import Finalizer, Progress, use_context
    from .trial import run_trial

    use_context(ctx)  # for the callbacks a restored Tuner brings back
    resources = {"cpu": space.search.trial_cpus}
    if on_cluster:  # trial processes on the head, beside the sweep folder they write to
        resources[HEAD_NODE_RESOURCE] = 0.001
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    path = Path(ctx.sweep_dir) / "tune" / phase
    if tune.Tuner.can_restore(str(path)):
        log.info("[%s] restoring Tune's state from %s", phase, path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        s = space.search
        tc, param_space = tune_config(phase, space, ctx, n_concurrent)
        table_kw = {"verbose": 1, "progress_reporter": progress_table(phase, space)} if table else {"verbose": 0}
        rc = tune.RunConfig(name=phase, storage_path=str(Path(ctx.sweep_dir) / "tune"), **table_kw,
                            failure_config=tune.FailureConfig(max_failures=s.max_failures),
                            sync_config=tune.SyncConfig(sync_period=5),
                            callbacks=[Finalizer(ctx), Progress(phase, total, ctx, s.metric, s.mode)])
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tc, run_config=rc)
    grid = tuner.fit()
    return grid.num_terminated + grid.num_errors >= total


def trial_dirname(trial) -> str:
    """Tune's per-trial folder: the trial id (the default repeats every parameter)."""
    return trial.trial_id


def _quiet_tune() -> None:
    # Tune's own "resume with Tuner.restore(...)" advice: ours names the CLI command instead
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # Optuna's note that a restored trial reports a step again (Tune restarts training_iteration)
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step`")


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
        _sync_leftovers(out_dir)
    return tracker


def run(space: Space, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        address: str | None = None, verbose: bool = False, table: bool = False) -> Outcome:
    """Run the sweep of ``space`` in ``out_dir`` (or finish it with ``resume``).
    Progress goes to the ``dsr_tune`` logger, one line per event; ``table``
    adds Tune's trial table (phases started now; a restored phase keeps the
    output settings it was started with)."""
    from ..distributed import joins_cluster, ray_env, ray_session

    out_dir = Path(out_dir).expanduser().resolve()
    meta = prepare(space, out_dir, resume=resume, overwrite=overwrite)
    tracker = open_tracker(space, out_dir, meta, resume=resume)
    meta["tracker"] = tracker.to_json()
    on_cluster = joins_cluster(address)
    ctx = SweepContext(sweep_dir=str(out_dir), base=space.base.to_dict(), search_seed=space.seeds[0], tracker=tracker,
                       # workers on other nodes cannot reach the head's sqlite file: log each run when it ends
                       live_logging=not (on_cluster and tracker.target.embedded))
    env = ray_env(on_cluster, TUNE_ENV)
    _quiet_tune()

    t = space.base.train
    need = space.search.trial_cpus + t.workers * t.cpus_per_worker  # one trial; a local Ray gets at least this
    with ray_session(address, cpus=need, log_to_driver=verbose, runtime_env={"env_vars": env}):
        import ray

        have = ray.cluster_resources()
        if have.get("CPU", 0) < need - 1e-9 or (t.use_gpu and have.get("GPU", 0) < t.workers):
            gpus = f" and {t.workers} GPUs" if t.use_gpu else ""
            log.warning("a trial needs %g CPUs%s; the cluster has %g CPUs and %g GPUs: trials wait until nodes "
                        "join", need, gpus, have.get("CPU", 0), have.get("GPU", 0))
        n = concurrency(space, have)
        if not ctx.live_logging:
            log.info("note: a Ray cluster and a sqlite store only this node reaches: each run is logged when it "
                     "ends (set tracking.uri to an MLflow server for live metrics)")
        log.info("sweep %s in %s: %d trial(s) at a time, each %g CPU + %d Ray Train worker(s) x %g CPU%s",
                 meta["sweep_id"], out_dir, n, space.search.trial_cpus, t.workers, t.cpus_per_worker,
                 " + 1 GPU" if t.use_gpu else "")
        status = _phases(space, ctx, meta, out_dir, n, on_cluster, table)
    meta["status"] = status
    _save(out_dir, meta)
    # what MLflow missed (also when the store came back after being down); an interrupted
    # sweep leaves that to --resume, to exit at once
    unsynced = _unsynced(out_dir) if status == "KILLED" else _sync_leftovers(out_dir)
    return Outcome(status, out_dir, meta["sweep_id"], tracker, unsynced)


def _phases(space: Space, ctx: SweepContext, meta: dict, out_dir: Path, n: int, on_cluster: bool,
            table: bool = False) -> str:
    from .pairing import paired_jobs

    if meta["phase"] == "search":
        if not _tune_phase("search", space, ctx, n_concurrent=n, total=space.search.samples, on_cluster=on_cluster,
                           table=table):
            return "KILLED"
        if not any((read_run_file(d) or {}).get("status") in ("FINISHED", "KILLED")
                   for d in run_folders(out_dir)):
            log.info("no search trial trained to the end, so there is nothing to pair")
            return "FAILED"
        write_paired(out_dir, paired_jobs(space, ctx))
        meta["phase"] = "paired"
        _save(out_dir, meta)
    if meta["phase"] == "paired":
        total = len(json.loads((out_dir / PAIRED_FILE).read_text()))
        if total:
            log.info("[paired] %d runs: baselines per sparsity and seed, best trials on the other seeds, dense", total)
            if not _tune_phase("paired", space, ctx, n_concurrent=n, total=total, on_cluster=on_cluster,
                               table=table):
                return "KILLED"
        meta["phase"] = "done"
        _save(out_dir, meta)
    return "FINISHED"


def _unsynced(out_dir: Path) -> list[str]:
    return [info["key"] for d in run_folders(out_dir)
            if (info := read_run_file(d)) and "key" in info and not info.get("synced")]


def _sync_leftovers(out_dir: Path) -> list[str]:
    """Log what MLflow missed (a server that was down for a while); returns
    the keys of runs it still does not fully hold (unfinished ones included)."""
    if not _unsynced(out_dir):
        return []
    try:
        s = sync_sweep(out_dir)
        if s.metrics or s.created:
            log.info("MLflow: logged %d metric values of %d run(s) it had missed (%d run(s) created)",
                     s.metrics, s.runs, s.created)
    except SyncError as exc:
        log.warning("MLflow sync failed: %s", exc)
    return _unsynced(out_dir)
