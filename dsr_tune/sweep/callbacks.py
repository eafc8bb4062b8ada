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

from ..tracking.runs import read_run_file
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
    prints the ``dsr_tune`` logger to stderr."""

    def __init__(self, phase: str, total: int, ctx: SweepContext, metric: str, mode: str, every_s: float = 30.0):
        self.phase, self.total, self._ctx = phase, total, ctx
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self.best: tuple[float, str] | None = None
        self.done = 0
        self._clock: tuple[float, int] | None = None  # (wall time, trials done) when this process first saw a start

    @property
    def ctx(self) -> SweepContext:
        return self._ctx or _current

    def __getstate__(self):
        return {**_without_ctx(self), "_clock": None}  # a resumed sweep times its own trials

    def _eta(self) -> str:
        """The phase's ETA from the trials this process saw end (their rate, with the concurrency)."""
        from ..train.metrics import duration

        if self._clock is None or self.done <= self._clock[1] or self.done >= self.total:
            return ""
        per_trial = (_now() - self._clock[0]) / (self.done - self._clock[1])
        return f"; phase ETA {duration(per_trial * (self.total - self.done))}"

    def _count(self, trials, trial=None) -> None:
        """Trials ended so far (restored ones included); ``trial`` is ending now."""
        ended = ("TERMINATED", "ERROR")
        self.done = sum(t.status in ended for t in trials) + (trial is not None and trial.status not in ended)

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
            self._clock = (_now(), self.done)
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
        value = r.get(self.metric)
        if isinstance(value, (int, float)):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (value, self._name(trial))
        best = ""
        if self.best and self.phase.startswith("search"):
            shown = _pct(self.best[0]) if "acc" in self.metric else f"{self.best[0]:.4g}"
            best = f"; best {self.metric} so far {shown} ({self.best[1]})"
        log.info("[%s %d/%d done] end   %s: %s after %s epochs, %s non-zero, %.0f s%s%s", self.phase,
                 self.done, self.total, self._name(trial), self._scores(r), r.get("epochs_done", "?"),
                 f"{r.get('nonzero_params', 0):,}", took, best, self._eta())

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        log.info("[%s %d/%d done] FAILED %s: see %s and Tune's error file", self.phase, self.done, self.total,
                 self._name(trial), self.ctx.run_dir_of(trial.config, trial.trial_id))
