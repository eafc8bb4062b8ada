"""What ends or re-runs a phase's trials in the driver, beside Tune's own
FailureConfig: :class:`Halt` stops the phase at a trial's storage fault (the
next trial would hit the same disk); :class:`Lost` collects the trials Tune
errored for good although they had restarts left (they died while Tune was
still starting them), which :func:`.tune.tune_phase` runs again."""

from __future__ import annotations

from ray.tune import Callback, Stopper

from .trial import FAULT


class Lost(Callback):
    """The configs of trials that errored with restarts left: Tune did not restart
    them because they died before they were RUNNING (a process killed or lost
    with its node while the trial started)."""

    def __init__(self, max_failures: int):
        self.max_failures, self.trials = max_failures, []

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.max_failures < 0 or trial.run_metadata.num_failures <= self.max_failures:
            self.trials.append(dict(trial.config))


class Halt(Stopper):
    """Stops the phase at a trial's storage fault (its result says so): the next
    trial would hit the same disk. Its trial is marked failed; the others stay
    as they were, for ``--resume``."""

    def __init__(self):
        self.reason: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        if FAULT in result and self.reason is None:
            self.reason = str(result[FAULT])
        return FAULT in result

    def stop_all(self) -> bool:
        return self.reason is not None
