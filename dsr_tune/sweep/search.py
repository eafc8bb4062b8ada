"""The searcher: Optuna's TPE through Ray Tune, define-by-run, seeded.

Every searched (or tuned) method has its own search of ``search.samples``
trials at each searched sparsity, so each cell of the comparison gets the
same budget: the space is a define-by-run function
(:class:`OptunaSpace`) drawing only the keys that method reads (DSR's Np and
delta are never drawn for a static baseline). It is a plain class
instance, so Tune can pickle it with the rest of the experiment state.

The studies live in ``<sweep>/optuna.db`` (sqlite), one per method (and
sparsity), named ``<sweep id>-<method>`` or ``<sweep id>-<method>-s<sparsity>``
(``dsr-tune dashboard`` opens them). Multi-objective
(``search.pareto``): maximise the search metric and minimise nonzero_params;
the report lists the Pareto front. ASHA (``search.asha``) stops poor trials
at rungs of ``epochs_done``.
"""

from __future__ import annotations

from pathlib import Path

from .. import runfolder
from .space import SPARSITY, Param, Space, params_for

STUDY_FILE = runfolder.STUDY


class OptunaSpace:
    """Define-by-run space of one method: ``__call__(optuna_trial) -> constants``."""

    def __init__(self, params: list[Param], method: str, fixed: dict | None = None):
        self.params = list(params)
        self.method = method
        self.fixed = dict(fixed or {})  # dotted config keys held constant (the search's sparsity)

    def __call__(self, trial) -> dict:
        for p in self.params:
            p.suggest(trial)
        return {"method": self.method, **self.fixed}


def study_storage(sweep_dir: str | Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}")


def study_name(sweep_id: str, method: str, sparsity: float | None = None) -> str:
    return f"{sweep_id}-{method}" + ("" if sparsity is None else f"-s{sparsity:g}")


def searcher(space: Space, method: str, sweep_dir: str | Path, sweep_id: str, sparsity: float | None = None):
    """OptunaSearch over the keys ``method`` reads (at ``sparsity`` when the space
    searches several), its study in the sweep folder."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study and trial otherwise
    s = space.search
    metric, mode = ([s.metric, "nonzero_params"], [s.mode, "min"]) if s.pareto else (s.metric, s.mode)
    # metric and mode go here: with a define-by-run space, TuneConfig's are not passed on
    fixed = {} if sparsity is None else {SPARSITY: sparsity}
    return OptunaSearch(space=OptunaSpace(params_for(space, method, sparsity), method, fixed), metric=metric,
                        mode=mode, seed=s.seed, storage=study_storage(sweep_dir),
                        study_name=study_name(sweep_id, method, sparsity))


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
