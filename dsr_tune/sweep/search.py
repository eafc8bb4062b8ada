"""The searcher: Optuna's TPE through Ray Tune, define-by-run, seeded.

The space is a define-by-run function (:class:`OptunaSpace`): the method is
drawn first (when several are searched) and a parameter only some methods
read (DSR's Np, delta, ...; see ``space.METHOD_KEYS``) is drawn only for
them, so Optuna never models a value the trial ignored. It is a plain class
instance, so Tune can pickle it with the rest of the experiment state.

The study lives in ``<sweep>/optuna.db`` (sqlite), named after the sweep.
Multi-objective (``search.pareto``): maximise test_acc and minimise
nonzero_params; the report lists the Pareto front of the finished trials.
ASHA (``search.asha``) stops poor trials at rungs of ``epochs_done``.
"""

from __future__ import annotations

from pathlib import Path

from .space import Param, Space

STUDY_FILE = "optuna.db"  # in the sweep folder: the Optuna study (sqlite), named after the sweep id


class OptunaSpace:
    """Define-by-run space: ``__call__(optuna_trial) -> constants``."""

    def __init__(self, params: list[Param], methods: list[str]):
        self.params = list(params)
        self.methods = list(methods)

    def __call__(self, trial) -> dict:
        fixed = {}
        if len(self.methods) > 1:
            method = trial.suggest_categorical("method", self.methods)
        else:
            method = fixed["method"] = self.methods[0]
        for p in self.params:
            if not p.methods or method in p.methods:
                p.suggest(trial)
        return fixed


def study_storage(sweep_dir: str | Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}")


def searcher(space: Space, sweep_dir: str | Path, study_name: str):
    """OptunaSearch over ``space`` with its study in the sweep folder."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study and trial otherwise
    s = space.search
    metric, mode = (["test_acc", "nonzero_params"], ["max", "min"]) if s.pareto else (s.metric, s.mode)
    # metric and mode go here: with a define-by-run space, TuneConfig's are not passed on
    return OptunaSearch(space=OptunaSpace(space.params, space.methods), metric=metric, mode=mode,
                        seed=s.seed, storage=study_storage(sweep_dir), study_name=study_name)


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
