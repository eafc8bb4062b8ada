"""Ray Tune and Optuna: the Ray session of a sweep, one Tune phase, ASHA, and
the callbacks that run in the driver. Imports ray: the driver imports it only
when the sweep runs on Ray.

Each search phase has its own Optuna study (:mod:`.study`: TPE, seeded per
cell and trial) of ``search.samples`` trials, so every (method, sparsity)
cell of the comparison gets the same budget. Its space is define-by-run:
only the keys that method reads are drawn (DSR's Np and delta never for a
static baseline). Its study lives in ``<sweep>/optuna.db``, named
``<sweep id>-<method>[-s<sparsity>]`` (``dsr-tune dashboard`` opens them).

A phase always starts a fresh Tuner, resumed or not: a search from its study,
a paired phase from the jobs of ``paired.json`` not finished yet. Tune still
writes its experiment state (pickles) under ``tune/<phase>``; nothing reads
it, and a new run of the phase deletes it first.

Concurrency: a single-worker trial holds ``search.trial_cpus`` plus
``train.cpus_per_worker`` CPUs (and one GPU with ``train.use_gpu``, or
1/``search.trials_per_gpu`` of one: Tune's placement is the device it
trains on, packed trials share it); a multi-worker trial holds
``trial_cpus`` and its Ray Train workers theirs. What counts is whether the
sweep joined an existing cluster (``--address`` or $RAY_ADDRESS), not how
many nodes are up when it starts.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

from ray.tune import Callback

from .. import runfolder
from ..records import SCORED, Status
from ..tracking import SweepTracker
from ..tracking.mlflow_runs import read_run_file
from . import progress
from .jobs import JOB, TRIAL, SweepContext
from .spec import Space, packing
from .stops import Halt, Lost
from .study import StudySearcher
from .terms import Phase
from .trial import FAULT, StorageFault, in_process, run_trial

log = logging.getLogger("dsr_tune")

# Ray and Tune settings for readable output and a resumable state on disk; read when ray is imported
TUNE_ENV = {  # on top of dsr_tune.distributed's TRAIN_ENV (and LOCAL_RAY_ENV on a Ray started here)
    "RAY_AIR_NEW_OUTPUT": "0",            # the legacy reporter: silent at verbose=0 (we print our own lines)
    "TUNE_GLOBAL_CHECKPOINT_S": "5",      # save the experiment state at most every 5 s (a killed driver loses little)
}
# Without ASHA nothing acts on a trial's every epoch: its process reports one at most this often (and
# its last), so it waits for the driver's loop a few times a trial, not once an epoch (dsr_tune.sweep.jobs)
REPORT_EVERY_S = 2.0
# Ray gives the head node of every cluster this resource; there is no public scheduling option
# for "the head node" (NodeAffinity needs a node id). tests/test_ray_internals.py checks the name.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def concurrency(space: Space, resources: dict[str, float]) -> int:
    """Trials at once: ``search.max_concurrent`` when set (an autoscaling
    cluster starts without the nodes it will add), else how many fit in
    ``resources`` (Ray's cluster_resources()), at least 1."""
    if space.search.max_concurrent:
        return space.search.max_concurrent
    t = space.base.train
    per_cpu = space.search.trial_cpus + t.workers * t.cpus_per_worker
    fits = math.floor(resources.get("CPU", 0.0) / per_cpu + 1e-9)
    if t.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / gpus_per_trial(space) + 1e-9))
    return max(1, fits)


def gpus_per_trial(space: Space) -> float:
    """The GPUs a trial holds in Ray's accounting: its workers', or a packed trial's share of one."""
    t = space.base.train
    if not t.use_gpu:
        return 0.0
    return 1.0 / space.search.trials_per_gpu if space.search.trials_per_gpu > 1 else float(max(1, t.workers))


def trial_resources(space: Space, on_cluster: bool) -> dict:
    t = space.base.train
    if in_process(space.base.to_dict(), space.search.in_trial):
        return {"cpu": space.search.trial_cpus + t.cpus_per_worker, **({"gpu": gpus_per_trial(space)} if t.use_gpu
                                                                       else {})}
    resources = {"cpu": space.search.trial_cpus}
    if on_cluster:  # the trial process of a worker group on the head, beside the sweep folder
        resources[HEAD_NODE_RESOURCE] = 0.001
    return resources


# ---------------------------------------------------------------- the scheduler


def scheduler(space: Space):
    """ASHA on the 1-based ``epochs_done`` (restored trials restart training_iteration), or None."""
    if space.search.asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = space.search.asha
    # stop_last_trials=False: a trial that reaches max_t ends by returning, after it has logged
    # its artifacts, not by being stopped at its last report
    return ASHAScheduler(time_attr="epochs_done", max_t=space.base.train.epochs,
                         grace_period=a.get("grace_period", 1), reduction_factor=a.get("reduction_factor", 3),
                         stop_last_trials=False)


# ---------------------------------------------------------------- one phase


def tune_config(phase: Phase, space: Space, ctx: SweepContext, n_concurrent: int, keys: list[str] | None,
                search: StudySearcher | None = None):
    """The ``TuneConfig`` and param space of a phase (opens the study, but starts no Ray):
    a search runs the trials its study still needs, a paired phase the jobs ``keys``."""
    from ray import tune

    s = space.search
    if phase.is_search:
        if search is None:
            search = StudySearcher(space, phase, ctx.sweep_dir, ctx.tracker.sweep_id)
        _, again, new = search.plan()
        tc = tune.TuneConfig(search_alg=search, scheduler=scheduler(space), num_samples=again + new,
                             max_concurrent_trials=n_concurrent, trial_dirname_creator=trial_dirname,
                             # not with ASHA: Tune cannot reuse the process of a trial it stopped
                             # mid-fit, and then fails the next trials
                             reuse_actors=s.asha is None,
                             **({"metric": s.metric, "mode": s.mode} if s.asha is not None else {}))
        return tc, None
    tc = tune.TuneConfig(max_concurrent_trials=n_concurrent, trial_dirname_creator=trial_dirname, reuse_actors=True)
    return tc, {JOB: tune.grid_search(list(keys))}


def _finished(ctx: SweepContext, key: str) -> bool:
    return (read_run_file(ctx.run_dir(key)) or {}).get("status") == Status.FINISHED


# A trial whose process dies while Tune is still starting it (PENDING) is errored for good, whatever
# FailureConfig allows (Tune restarts only a RUNNING trial): its phase runs again for it, this often at most
RERUNS_OF_LOST = 2


def tune_phase(phase: Phase, space: Space, ctx: SweepContext, keys: list[str] | None, *, n_concurrent: int,
               on_cluster: bool, table: bool = False) -> bool:
    """Run what is left of one phase on a fresh Tuner; True when every trial
    ended. Trials lost while starting (see RERUNS_OF_LOST) run again on another
    fresh Tuner, with the parameters they were proposed with. Raises
    :class:`.trial.StorageFault` when a trial could not write its run folder
    (the sweep stops: the next trial would hit the same disk)."""
    for left in range(RERUNS_OF_LOST, -1, -1):
        lost = Lost(space.search.max_failures)
        ended = _tune_phase_once(phase, space, ctx, keys, n_concurrent=n_concurrent, on_cluster=on_cluster,
                                 table=table, lost=lost, last=not left)
        if ended is not None:
            return ended
        log.info("[%s] %d trial(s) lost while starting (Tune restarts only a trial that had started): running "
                 "them again", phase, len(lost.trials))
    raise AssertionError("unreachable: the last round always returns")


def _tune_phase_once(phase: Phase, space: Space, ctx: SweepContext, keys: list[str] | None, *, n_concurrent: int,
                     on_cluster: bool, table: bool, lost: Lost, last: bool) -> bool | None:
    """One fresh Tuner for what is left of the phase: whether every trial ended,
    or None when a trial was lost while starting and ``last`` is False (the
    study's other errored trials are failed then, the lost ones stay open)."""
    from ray import tune

    old = Path(ctx.sweep_dir) / runfolder.TUNE / phase.name
    if old.exists():
        shutil.rmtree(old)  # Tune's state of an earlier run of this phase: pickles, never read
    search = StudySearcher(space, phase, ctx.sweep_dir, ctx.tracker.sweep_id) if phase.is_search else None
    if search is not None:
        before, again, new = search.plan()
        total, todo, left = space.search.samples, None, again + new
        if before or again:
            log.info("[%s] resuming from the study: %d trial(s) ended, %d continue from their run folders, "
                     "%d to ask", phase, before, again, new)
    else:
        todo = [k for k in keys if not _finished(ctx, k)]
        total, before, left = len(keys), len(keys) - len(todo), len(todo)
    if not left:
        return search.close() if search is not None else True
    halt = Halt()
    tc, param_space = tune_config(phase, space, ctx, n_concurrent, todo, search)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(space, on_cluster))
    table_kw = {"verbose": 1, "progress_reporter": progress.table(phase, space)} if table else {"verbose": 0}
    planned = space.base.train.epochs if todo is None else {k: j.config["train"]["epochs"]
                                                              for k, j in ctx.paired_jobs().items() if k in todo}
    lines = Progress(phase, total, ctx, space.search.metric, space.search.mode, planned=planned,
                     later=progress.epochs_after(space, ctx, phase), before=before)
    rc = tune.RunConfig(name=phase.name, storage_path=str(old.parent), **table_kw, stop=halt,
                        failure_config=tune.FailureConfig(max_failures=space.search.max_failures),
                        sync_config=tune.SyncConfig(sync_period=5), callbacks=[Finalizer(ctx), lines, lost])
    grid = tune.Tuner(trainable, param_space=param_space, tune_config=tc, run_config=rc).fit()
    if halt.reason:
        raise StorageFault(halt.reason)
    if lost.trials and not last:
        if search is not None:
            search.fail_now(exclude={t.get(TRIAL) for t in lost.trials})
        return None
    return search.close() if search is not None else grid.num_terminated + grid.num_errors >= left


def trial_dirname(trial) -> str:
    """Tune's per-trial folder: the trial id (the default repeats every parameter)."""
    return trial.trial_id


def _quiet_tune() -> None:
    # Tune's own "resume with Tuner.restore(...)" advice: ours names the CLI command instead
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # Tune's "the `process_trial_result` operation took 0.6 s, which may be a performance bottleneck":
    # on a small shared machine the searcher's bookkeeping often passes Tune's 0.5 s mark; nothing to act on
    logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)


def with_ray(space: Space, out_dir: Path, meta: dict, tracker: SweepTracker, address: str | None, verbose: bool,
             table: bool, phases) -> str:
    """Start or join Ray and run ``phases(space, ctx, meta, out_dir, runner)`` with Tune as the runner."""
    from ..distributed import joins_cluster, ray_env, ray_session

    on_cluster = joins_cluster(address)
    ctx = SweepContext(sweep_dir=str(out_dir), base=space.base.to_dict(), trial_seed=space.search.trial_seed,
                       tracker=tracker, live_logging=not (on_cluster and tracker.target.embedded),
                       in_trial=space.search.in_trial, expected=tuple(StudySearcher.objectives_of(space)),
                       trials_per_gpu=space.search.trials_per_gpu,
                       report_every_s=0.0 if space.search.asha else REPORT_EVERY_S)
    env = ray_env(on_cluster, TUNE_ENV)
    _quiet_tune()
    t = space.base.train
    need = space.search.trial_cpus + max(1, t.workers) * t.cpus_per_worker  # one trial; a local Ray gets at least this
    with ray_session(address, cpus=need, log_to_driver=verbose, runtime_env={"env_vars": env}):
        import ray

        have = ray.cluster_resources()
        gpus = gpus_per_trial(space)
        if have.get("CPU", 0) < need - 1e-9 or have.get("GPU", 0) < gpus - 1e-9:
            log.warning("a trial needs %g CPUs and %g GPUs; the cluster has %g CPUs and %g GPUs: trials wait until "
                        "nodes join", need, gpus, have.get("CPU", 0), have.get("GPU", 0))
        n = concurrency(space, have)
        if not ctx.live_logging:
            log.info("note: a Ray cluster and a sqlite store only this node reaches: each run is logged when it "
                     "ends (set tracking.uri to an MLflow server for live metrics)")
        how = ("in the trial's process" if in_process(space.base.to_dict(), space.search.in_trial)
               else f"on {t.workers} Ray Train workers x {t.cpus_per_worker:g} CPU")
        packed = packing(space)
        log.info("sweep %s in %s: %d trial(s) at a time, each trains %s%s", meta["sweep_id"], out_dir, n, how,
                 f" ({packed})" if packed else "")

        def runner(phase: Phase, keys: list[str] | None) -> bool:
            return tune_phase(phase, space, ctx, keys, n_concurrent=n, on_cluster=on_cluster, table=table)

        return phases(space, ctx, meta, out_dir, runner)


# ---------------------------------------------------------------- the driver's callbacks

class _WithContext(Callback):
    def __init__(self, ctx: SweepContext):
        self.ctx = ctx

    def __getstate__(self):  # Tune writes its callbacks into tuner.pkl: no tracking URI (credentials) there
        return {**self.__dict__, "ctx": None}


class Finalizer(_WithContext):
    """Close the MLflow runs of trials that ended without closing them: stopped
    early by ASHA (cut off wherever it was: the run is replayed from its folder,
    only what MLflow lacks), or whose process died. This runs in Tune's event
    loop: a dead tracking server is found by one 2 s probe, not a round of retries."""

    def _close(self, trial, status: Status) -> None:
        run_dir = self.ctx.run_dir_of(trial.config)
        info = read_run_file(run_dir)
        if not info or FAULT in (trial.last_result or {}):  # a storage fault: the trial closed its run
            return
        if info.get("status") == Status.RUNNING:
            self.ctx.tracker.finish(run_dir, info.get("run_id"), status, replay=True)
        elif not self.ctx.live_logging and not info.get("synced") and info.get("status") in SCORED:
            # the trial ran where this sweep's store is out of reach: the driver logs it now
            self.ctx.tracker.finish(run_dir, info.get("run_id"), info["status"], replay=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, Status.KILLED)  # still RUNNING here: stopped early by the scheduler

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, Status.FAILED)


class Progress(_WithContext):
    """One line (to the ``dsr_tune`` logger, which the CLI prints to stderr) when
    a trial starts and ends, at most one every ``every_s`` s per running trial;
    Tune's own output is off. The numbers are :mod:`.progress`'s. ``planned``:
    each trial's epochs (one number for a search, {job key: epochs} for a paired
    phase); ``later``: the planned epochs of the phases after this one."""

    def __init__(self, phase: Phase, total: int, ctx: SweepContext, metric: str, mode: str, every_s: float = 30.0,
                 *, planned: int | dict[str, int] | None = None, later: int | None = None, before: int = 0):
        super().__init__(ctx)
        self.phase, self.total, self.metric, self.mode, self.every_s = phase, total, metric, mode, every_s
        self.planned, self.later, self.before = planned, later, before  # before: trials that ended in an earlier run
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self.done = self.epochs_done = self.epochs_left = 0
        self._clock: tuple[float, int, int] | None = None  # progress.clock() at the first start this process saw
        self._paired: dict | None = None  # the paired jobs, read once

    def _planned(self, trial) -> int:
        p = self.planned
        return p.get(trial.config.get("job"), 0) if isinstance(p, dict) else (p or 0)

    def _trained(self, trial) -> int:
        """Epochs an ended trial trained (fewer than planned when ASHA stopped it)."""
        done = (trial.last_result or {}).get("epochs_done")
        return int(done) if isinstance(done, (int, float)) else self._planned(trial)

    def _eta(self) -> str:
        later = self.later if self.planned is not None else None
        return progress.tune_eta(self._clock, done=self.done, total=self.total, epochs_done=self.epochs_done,
                                 epochs_left=self.epochs_left, later=later)

    def _count(self, trials, trial=None) -> None:
        """Trials ended, the epochs they trained, and the epochs planned for the rest of this phase."""
        ended = progress.ended(trials, trial)
        self.done, self.epochs_done = self.before + len(ended), sum(self._trained(t) for t in ended)
        if isinstance(self.planned, dict):
            gone = {t.config.get("job") for t in ended}
            self.epochs_left = sum(e for k, e in self.planned.items() if k not in gone)
        else:
            self.epochs_left = (self.total - self.done) * (self.planned or 0)

    def _best(self, trials, trial) -> str:
        ended = progress.ended(trials, trial)
        if self.phase.is_search:
            return progress.best_so_far(ended, self.metric, self.mode, self._name)
        if self._paired is None:
            self._paired = self.ctx.paired_jobs()
        return progress.paired_standing(self._paired, ended, trial)

    def _name(self, trial) -> str:
        info = read_run_file(self.ctx.run_dir_of(trial.config)) or {}
        return info.get("run_name") or trial.config[JOB]

    def _head(self) -> str:
        return f"[{self.phase} {self.done}/{self.total} done]"

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials)
        if self._clock is None:
            self._clock = progress.clock(self.done, self.epochs_done)
        self.started[trial.trial_id] = self.last_line[trial.trial_id] = time.monotonic()
        values = "" if not self.phase.is_search else "  " + " ".join(
            f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in trial.config.items() if "." in k)
        what = trial.config[JOB]
        log.info("%s start %s%s", self._head(), what, values)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self.last_line.get(trial.trial_id, now) >= self.every_s:
            self.last_line[trial.trial_id] = now
            log.info("%s   %s: epoch %s  %s", self._head(), self._name(trial), result.get("epochs_done", "?"),
                     progress.scores(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        r = trial.last_result or {}
        if FAULT in r:
            log.info("%s STOPPED %s: %s", self._head(), self._name(trial), r[FAULT])
            return
        took = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        log.info("%s end   %s: %s after %s epochs, %s non-zero, %.0f s%s%s", self._head(), self._name(trial),
                 progress.scores(r), r.get("epochs_done", "?"), f"{r.get('nonzero_params', 0):,}", took,
                 self._best(trials, trial), self._eta())

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        log.info("%s FAILED %s: see %s and Tune's error file", self._head(), self._name(trial),
                 self.ctx.run_dir_of(trial.config))
