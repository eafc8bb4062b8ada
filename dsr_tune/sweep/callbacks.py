"""Ray callbacks of a sweep (this module imports ray: import it lazily).

- :class:`EpochReport` (Train side): rank 0's epoch reports to Tune, plus
  ``epochs_done``;
- :class:`Finalizer` (Tune side, in the driver): the MLflow status of
  trials that never returned (stopped early by ASHA, or their process died);
- :class:`Progress` (Tune side): one readable line (to the ``dsr_tune``
  logger) when a trial starts and ends, and at most one every ``every_s``
  seconds per running trial.
"""

from __future__ import annotations

import logging
import time

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from ..tracking.tracker import read_run_file
from .jobs import SweepContext

log = logging.getLogger("dsr_tune")


class EpochReport(TuneReportCallback):
    """TuneReportCallback plus ``epochs_done`` = epoch + 1 (ASHA's time attribute)."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and "epoch" in metrics[0]:
            metrics = [dict(metrics[0], epochs_done=int(metrics[0]["epoch"]) + 1), *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


class Finalizer(Callback):
    """Close the MLflow runs of trials that ended without closing them."""

    def __init__(self, ctx: SweepContext):
        self.ctx = ctx

    def _close(self, trial, status: str) -> None:
        run_dir = self.ctx.run_dir_of(trial.config, trial.trial_id)
        info = read_run_file(run_dir)
        if info and info.get("status") == "RUNNING":
            self.ctx.tracker.finish(run_dir, info.get("run_id"), status)

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
        self.phase, self.total, self.ctx = phase, total, ctx
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self.best: tuple[float, str] | None = None
        self.done = 0

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
        self.started[trial.trial_id] = self.last_line[trial.trial_id] = time.monotonic()
        what = trial.config.get("job") or f"{trial.config.get('method')} {trial.trial_id}"
        log.info(f"[{self.phase} {self.done}/{self.total} done] start {what}{self._params(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self.last_line.get(trial.trial_id, now) >= self.every_s:
            self.last_line[trial.trial_id] = now
            log.info(f"[{self.phase} {self.done}/{self.total} done]   {self._name(trial)}: epoch "
                     f"{result.get('epochs_done', '?')}  test {_pct(result.get('test_acc'))}")

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
        if self.best and self.phase == "search":
            shown = _pct(self.best[0]) if "acc" in self.metric else f"{self.best[0]:.4g}"
            best = f"; best so far {shown} ({self.best[1]})"
        log.info(f"[{self.phase} {self.done}/{self.total} done] end   {self._name(trial)}: test "
                 f"{_pct(r.get('test_acc'))} after {r.get('epochs_done', '?')} epochs, "
                 f"{r.get('nonzero_params', 0):,} non-zero, {took:.0f} s{best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        log.info(f"[{self.phase} {self.done}/{self.total} done] FAILED {self._name(trial)}: see "
                 f"{self.ctx.run_dir_of(trial.config, trial.trial_id)} and Tune's error file")
