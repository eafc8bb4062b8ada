"""Tune callbacks of a sweep, run in the driver (this module imports ray:
import it lazily). Rank 0's epoch reports reach Tune through Ray's own
``TuneReportCallback`` (the reports already carry ``epochs_done``).

- :class:`Finalizer`: the MLflow run of a trial that never returned
  (stopped early by ASHA, or its process died): what the run folder holds
  and MLflow lacks, its artifacts and its final status;
- :class:`Progress` (Tune side): one readable line (to the ``dsr_tune``
  logger) when a trial starts and ends, and at most one every ``every_s``
  seconds per running trial.
"""

from __future__ import annotations

import logging
import time

from ray.tune import Callback

from ..tracking.mlflow_runs import read_run_file
from .jobs import SweepContext

log = logging.getLogger("dsr_tune")
_now = time.time  # the phase ETA's clock

# The running sweep's context. Tune pickles its callbacks into the experiment state
# (tuner.pkl) and brings those copies back on --resume; they leave the context out (absolute
# paths, the tracking URI with any credentials) and use this one, set by the driver.
_current: SweepContext | None = None


def use_context(ctx: SweepContext) -> None:
    global _current
    _current = ctx


def _without_ctx(obj) -> dict:
    return {**obj.__dict__, "_ctx": None}


class Finalizer(Callback):
    """Close the MLflow runs of trials that ended without closing them.

    A trial ASHA stopped was cut off wherever it was: its live logger may not
    have sent the last epoch, so the run is replayed from its folder (only
    what MLflow lacks). This runs in Tune's event loop: a dead tracking server
    is found by one 2 s probe, not a round of retries per call."""

    def __init__(self, ctx: SweepContext):
        self._ctx = ctx

    @property
    def ctx(self) -> SweepContext:
        return self._ctx or _current

    def __getstate__(self):
        return _without_ctx(self)

    def _close(self, trial, status: str) -> None:
        run_dir = self.ctx.run_dir_of(trial.config, trial.trial_id)
        info = read_run_file(run_dir)
        if not info:
            return
        if info.get("status") == "RUNNING":
            self.ctx.tracker.finish(run_dir, info.get("run_id"), status, replay=True)
        elif not self.ctx.live_logging and not info.get("synced") and info.get("status") in ("FINISHED", "KILLED"):
            # the trial ran where this sweep's store is out of reach: the driver logs it now
            self.ctx.tracker.finish(run_dir, info.get("run_id"), info["status"], replay=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "KILLED")  # still RUNNING here: stopped early by the scheduler

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED")


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


class Progress(Callback):
    """Compact progress lines (Tune's own output is switched off); the CLI
    prints the ``dsr_tune`` logger to stderr.

    A trial's end carries the best so far (search phases: the best search
    metric per searched sparsity; paired phases: DSR's and the leading row's
    test mean at the trial's sparsity over the seeds ended so far), the ETA
    of the whole sweep (``total ETA``) and of this phase. The total counts epochs:
    ``planned`` (each trial's epochs: one number for a search, {job key:
    epochs} for a paired phase) of the trials not ended yet plus ``later``
    (the planned epochs of the phases after it), at the rate per trained
    epoch of the trials this process saw end; without them only the phase's
    ETA is shown."""

    def __init__(self, phase: str, total: int, ctx: SweepContext, metric: str, mode: str, every_s: float = 30.0,
                 *, planned: int | dict[str, int] | None = None, later: int | None = None):
        self.phase, self.total, self._ctx = phase, total, ctx
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.planned, self.later = planned, later
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self.done = self.epochs_done = self.epochs_left = 0
        # (wall time, trials ended, epochs trained) when this process first saw a trial start
        self._clock: tuple[float, int, int] | None = None
        self._paired: dict | None = None  # the paired jobs, read once

    @property
    def ctx(self) -> SweepContext:
        return self._ctx or _current

    def __getstate__(self):
        return {**_without_ctx(self), "_clock": None, "_paired": None}  # a resumed sweep times its own trials

    def __setstate__(self, state):  # a Progress pickled by an older version lacks the newer fields
        self.__dict__.update({"planned": None, "later": None, "epochs_done": 0, "epochs_left": 0, "_paired": None,
                              **state})

    def _planned(self, trial) -> int:
        p = self.planned
        return p.get(trial.config.get("job"), 0) if isinstance(p, dict) else (p or 0)

    def _trained(self, trial) -> int:
        """Epochs an ended trial trained (fewer than planned when ASHA stopped it)."""
        done = (trial.last_result or {}).get("epochs_done")
        return int(done) if isinstance(done, (int, float)) else self._planned(trial)

    def _eta(self) -> str:
        """The sweep's and the phase's ETA, from the trials this process saw end (their rate, with the concurrency)."""
        from ..train.metrics import duration

        if self._clock is None or self.done <= self._clock[1]:
            return ""
        elapsed, parts = _now() - self._clock[0], []
        if self.planned is not None and self.later is not None and self.epochs_done > self._clock[2]:
            left = self.epochs_left + self.later
            if left:
                parts.append(f"total ETA {duration(elapsed / (self.epochs_done - self._clock[2]) * left)}")
        if self.done < self.total:
            per_trial = elapsed / (self.done - self._clock[1])
            parts.append(f"phase ETA {duration(per_trial * (self.total - self.done))}")
        return "; " + ", ".join(parts) if parts else ""

    def _ended(self, trials, trial=None) -> list:
        """Trials ended so far (restored ones included); ``trial`` is ending now."""
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        return ended + ([trial] if trial is not None and trial not in ended else [])

    def _count(self, trials, trial=None) -> None:
        """Trials ended, the epochs they trained, and the epochs planned for the rest of this phase."""
        ended = self._ended(trials, trial)
        self.done, self.epochs_done = len(ended), sum(self._trained(t) for t in ended)
        if isinstance(self.planned, dict):
            gone = {t.config.get("job") for t in ended}
            self.epochs_left = sum(e for k, e in self.planned.items() if k not in gone)
        else:
            self.epochs_left = (self.total - self.done) * (self.planned or 0)

    def _best(self, trials, trial) -> str:
        """The best search metric so far, per searched sparsity (one value when sparsity is not searched)."""
        sign = 1 if self.mode == "max" else -1
        best: dict = {}
        for t in self._ended(trials, trial):
            v = (t.last_result or {}).get(self.metric)
            s = t.config.get("sparsity.sparsity")
            if t.status != "ERROR" and isinstance(v, (int, float)) and (s not in best or sign * v > sign * best[s][0]):
                best[s] = (v, t)
        if not best:
            return ""
        shown = {s: f"{_pct(v) if 'acc' in self.metric else f'{v:.4g}'} ({self._name(t)})"
                 for s, (v, t) in best.items()}
        if list(shown) == [None]:
            return f"; best {self.metric} so far {shown[None]}"
        return f"; best {self.metric} so far: " + ", ".join(f"s{s:g} {shown[s]}" for s in sorted(shown))

    def _standing(self, trials, trial) -> str:
        """Paired phases: DSR's and the leading row's test mean so far at the ending trial's sparsity."""
        from . import tables
        from .results import RunRow

        if self._paired is None:
            self._paired = self.ctx.paired_jobs()
        job = self._paired.get(trial.config.get("job"))
        if job is None or job.sparsity is None:
            return ""
        rows = []
        for t in self._ended(trials, trial):
            j, r = self._paired.get(t.config.get("job")), t.last_result or {}
            if j is not None and t.status != "ERROR" and "test_acc" in r:
                rows.append(RunRow(j.key, j.role, j.method, j.sparsity, j.seed, "FINISHED", r,
                                   j.config["train"]["epochs"]))
        line = tables.standing(rows, job.sparsity)
        return f"; {line}" if line else ""

    def _name(self, trial) -> str:
        info = read_run_file(self.ctx.run_dir_of(trial.config, trial.trial_id)) or {}
        return info.get("run_name") or trial.config.get("job") or trial.trial_id

    def _params(self, trial) -> str:
        if "job" in trial.config:
            return ""
        items = [f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                 for k, v in trial.config.items() if k != "method"]
        return "  " + " ".join(items)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials)
        if self._clock is None:
            self._clock = (_now(), self.done, self.epochs_done)
        self.started[trial.trial_id] = self.last_line[trial.trial_id] = time.monotonic()
        what = trial.config.get("job") or f"{trial.config.get('method')} {trial.trial_id}"
        log.info("[%s %d/%d done] start %s%s", self.phase, self.done, self.total, what, self._params(trial))

    def _scores(self, r: dict) -> str:
        val = f"val {_pct(r.get('val_acc'))}, " if "val_acc" in r else ""
        return f"{val}test {_pct(r.get('test_acc'))}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self.last_line.get(trial.trial_id, now) >= self.every_s:
            self.last_line[trial.trial_id] = now
            log.info("[%s %d/%d done]   %s: epoch %s  %s", self.phase, self.done, self.total,
                     self._name(trial), result.get("epochs_done", "?"), self._scores(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        r = trial.last_result or {}
        took = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        best = self._best(trials, trial) if self.phase.startswith("search") else self._standing(trials, trial)
        log.info("[%s %d/%d done] end   %s: %s after %s epochs, %s non-zero, %.0f s%s%s", self.phase,
                 self.done, self.total, self._name(trial), self._scores(r), r.get("epochs_done", "?"),
                 f"{r.get('nonzero_params', 0):,}", took, best, self._eta())

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        log.info("[%s %d/%d done] FAILED %s: see %s and Tune's error file", self.phase, self.done, self.total,
                 self._name(trial), self.ctx.run_dir_of(trial.config, trial.trial_id))
