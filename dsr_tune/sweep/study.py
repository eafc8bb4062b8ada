"""The Optuna study of one search phase, and the Tune searcher that runs it.

The study (``<sweep id>-<method>[-s<sparsity>]`` in the sweep folder's
optuna.db) is the search's whole state: every trial asked, its values, its
job key, what it scored. :class:`StudySearcher` is a Tune ``Searcher`` over
it through Optuna's ask/tell interface, so resuming a search reads nothing
of Tune's pickled experiment state: the study's unfinished trials are
proposed again with the values and the job key they were asked with (each
continues from its run folder's checkpoint), then new ones are asked until
the study holds ``search.samples``.

Each trial is drawn by a TPE sampler seeded from ``search.seed``, the cell
and the trial's number (:func:`trial_seed`), not by one sampler whose
random state a restart would lose: the first ``n_startup_trials`` (10) of a
cell are random draws fixed by that seed, whatever ran before or at the same
time; TPE's later proposals also depend on the trials complete when they are
asked, which with more than one trial at a time is a matter of timing.

Imports ray (the Searcher base class): only :mod:`.tune` imports this.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from ray.tune.search import Searcher

from .. import runfolder
from ..tracking.mlflow_runs import read_run_file
from .jobs import JOB, TRIAL
from .params import SPARSITY, Param
from .spec import Space, params_for
from .terms import Phase, search_key, trial_id
from .trial import FAULT

NONZERO = "nonzero_params"  # the second objective of search.pareto
# the Optuna trial's user attributes: what links it to its run (optuna-dashboard shows them)
KEY, FOLDER, RUN_ID = "job_key", "run_folder", "mlflow_run_id"


def trial_seed(seed: int, cell: str, number: int) -> int:
    """The sampler seed of trial ``number`` of ``cell``'s study: the same in every
    process and Python version (``hash()`` of a string is not)."""
    digest = hashlib.sha256(f"{seed}/{cell}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def study_name(sweep_id: str, phase: Phase) -> str:
    return f"{sweep_id}-{phase.cell}"


class OptunaSpace:
    """Define-by-run space of one method: ``__call__(optuna_trial) -> constants``
    draws only the keys that method reads."""

    def __init__(self, params: list[Param], method: str, fixed: dict | None = None):
        self.params = list(params)
        self.method = method
        self.fixed = dict(fixed or {})  # dotted config keys held constant (the search's sparsity)

    def constants(self) -> dict:
        return {"method": self.method, **self.fixed}

    def __call__(self, trial) -> dict:
        for p in self.params:
            p.suggest(trial)
        return self.constants()


class StudySearcher(Searcher):
    """Tune's searcher for one search phase, over its Optuna study (see the
    module docstring). A trial's config holds the values drawn, its job key
    (``job``) and its Optuna trial number (``trial``)."""

    @staticmethod
    def objectives_of(space: Space) -> list[str]:
        return [space.search.metric, NONZERO] if space.search.pareto else [space.search.metric]

    def __init__(self, space: Space, phase: Phase, sweep_dir: str | Path, sweep_id: str):
        s = space.search
        self.objectives = self.objectives_of(space)
        modes = [s.mode, "min"] if s.pareto else [s.mode]
        super().__init__(metric=self.objectives if s.pareto else s.metric, mode=modes if s.pareto else s.mode)
        self.directions = ["maximize" if m == "max" else "minimize" for m in modes]
        self.samples, self.seed, self.phase = s.samples, s.seed, phase
        self.study_name = study_name(sweep_id, phase)
        fixed = {} if phase.sparsity is None else {SPARSITY: phase.sparsity}
        self.space = OptunaSpace(params_for(space, phase.method, phase.sparsity), phase.method, fixed)
        self.sweep_dir = Path(sweep_dir).resolve()
        self._study = self._storage = None
        self._pending: list[int] | None = None  # trials of an earlier run to propose again
        self._live: dict[str, int] = {}         # Tune trial id -> Optuna trial number
        self._failed: set[int] = set()          # errored in this run: FAIL once the phase has ended
        self._linked: set[int] = set()          # trials whose MLflow run id the study holds

    def __getstate__(self):  # Tune writes its searcher into tuner.pkl; the study stays in optuna.db
        return {**self.__dict__, "_study": None, "_storage": None}

    @property
    def study(self):
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
            storage = optuna.storages.RDBStorage(f"sqlite:///{self.sweep_dir / runfolder.STUDY}")
            self._study = optuna.create_study(storage=storage, study_name=self.study_name,
                                              directions=self.directions, load_if_exists=True)
            if self._study.metric_names != self.objectives:
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what its dashboard reads
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._study.set_metric_names(self.objectives)
            self._storage = storage
        return self._study

    def plan(self) -> tuple[int, int, int]:
        """(trials ended before this run, unfinished ones to propose again, new ones to ask)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        self._pending = [t.number for t in trials if t.state == TrialState.RUNNING]
        return len(trials) - len(self._pending), len(self._pending), max(0, self.samples - len(trials))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # TuneConfig's metric is ASHA's; the objectives are set here

    def suggest(self, trial_id: str):
        if self._pending is None:
            self.plan()
        if self._pending:
            number = self._pending.pop(0)
            frozen = self.study.get_trials(deepcopy=False)[number]
            config = {**frozen.params, **self.space.constants(), JOB: frozen.user_attrs[KEY], TRIAL: number}
        elif len(self.study.get_trials(deepcopy=False)) < self.samples:
            config = self._ask()
        else:
            return Searcher.FINISHED
        self._live[trial_id] = config[TRIAL]
        return config

    def _ask(self) -> dict:
        from optuna.samplers import TPESampler

        study = self.study
        expected = len(study.get_trials(deepcopy=False))  # the number ask() gives: this is the study's only writer
        study.sampler = TPESampler(seed=trial_seed(self.seed, self.phase.cell, expected))
        trial = study.ask()
        if trial.number != expected:  # define-by-run: the values are drawn below, by the sampler set now
            study.sampler = TPESampler(seed=trial_seed(self.seed, self.phase.cell, trial.number))
        constants = self.space(trial)
        key = search_key(self.phase.method, trial_id(self.phase.sparsity, trial.number))
        trial.set_user_attr(KEY, key)
        trial.set_user_attr(FOLDER, str(self.sweep_dir / runfolder.RUNS / key))
        return {**trial.params, **constants, JOB: key, TRIAL: trial.number}

    def _link(self, number: int) -> None:
        """The trial's MLflow run id as a user attribute, once its run folder holds it."""
        if number in self._linked:
            return
        frozen = self.study.get_trials(deepcopy=False)[number]
        run_id = (read_run_file(self.sweep_dir / runfolder.RUNS / frozen.user_attrs[KEY]) or {}).get("run_id")
        if run_id:
            study_id = self._storage.get_study_id_from_name(self.study_name)
            tid = self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
            self._storage.set_trial_user_attr(tid, RUN_ID, run_id)
            self._linked.add(number)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live:
            self._link(self._live[trial_id])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self._live.pop(trial_id, None)
        if number is None:
            return
        self._link(number)
        if error or not result or FAULT in result or any(k not in result for k in self.objectives):
            self._failed.add(number)  # left RUNNING: a --resume before the phase ends runs it again
            return
        values = [float(result[k]) for k in self.objectives]
        self.study.tell(number, values if len(values) > 1 else values[0])

    def close(self) -> bool:
        """After the phase's Tune run: True when the study holds every trial and
        each has ended (the errored ones are marked FAIL then, not before)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        if len(trials) < self.samples or not running <= self._failed:
            return False
        for number in sorted(running):
            self.study.tell(number, state=TrialState.FAIL)
        return True

    def fail_now(self, exclude: set[int]) -> None:
        """Mark this run's errored trials FAIL, all but ``exclude`` (lost while
        starting: the phase runs them again with the parameters they were
        proposed with)."""
        from optuna.trial import TrialState

        for number in sorted(self._failed - exclude):
            self.study.tell(number, state=TrialState.FAIL)
        self._failed &= exclude

    def save(self, checkpoint_path: str) -> None:
        """Nothing: the study is the state (Tune's own pickle of a searcher is never read)."""
