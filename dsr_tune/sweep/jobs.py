"""What one run of a sweep trains (:class:`Job`: a resolved config and its
identity) and what every trial gets with it (:class:`SweepContext`).

A search trial's job is made from the values its study proposed (and the
key and Optuna trial number it fixed at that time, :data:`JOB` and
:data:`TRIAL` in the Tune trial's config) when the trial starts; the paired
jobs are planned once (:mod:`.plan`), written to
``paired.json`` before the first paired phase, so a resumed sweep trains
exactly these. Every paired job of one sparsity shares a ``group``
(``s0.9``): the selected configuration, its seed repeats and its baselines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import config as C
from .. import runfolder
from ..records import Role
from ..tracking import SweepTracker
from .terms import DENSE, sparsity_tag, trial_of

PAIRED_FILE = runfolder.PAIRED
JOB, TRIAL = "job", "trial"  # a Tune trial's config: its job key; a search trial's Optuna trial number too


@dataclass
class Job:
    key: str                        # terms.search_key / terms.paired_key: its folder under runs/
    role: Role
    method: str                     # the row label (dsr, static_2x, dsr_stop:5, ...) or the searched method
    sparsity: float | None          # None: dense
    seed: int
    config: dict                    # the resolved config (nested dict)
    stage: int = 0                  # 1: starts from a stage-0 run (gmp, the ablations)
    group: str | None = None        # s<sparsity>: a selection, its repeats and its baselines
    selected_from: str | None = None  # the search trial whose configuration this re-trains or derives from
    tuned: bool = False             # its hyperparameters come from its own search
    needs: str | None = None        # the job key of the run it starts from (or, compute-matched, is sized by)
    matched: dict | None = None     # compute-matched: {"flops_of": job key}, then what rows.matched set
    trial: int | None = None        # a search trial's number in its Optuna study (the selection's last tie-breaker)

    @property
    def run_name(self) -> str:
        s = "" if self.sparsity is None else f" {sparsity_tag(self.sparsity)}"
        tail = ""
        if self.role == Role.SEARCH:
            tail = f" t{self.trial}" if self.trial is not None else f" {trial_of(self.key)}"
        return f"{self.method}{s} seed{self.seed}{tail}"

    def description(self) -> str:
        """A sentence for the MLflow run's description."""
        what = {Role.SEARCH: f"a search trial of {self.method} (selection on the validation split)",
                Role.SELECTED: f"the selected {self.method} configuration re-trained on a fresh seed",
                Role.BASELINE: f"the {self.method} row, derived from the selected DSR configuration"
                               + (" with its own tuned hyperparameters" if self.tuned else ""),
                Role.DENSE: "the full dense reference"
                            + (" with its own tuned hyperparameters" if self.tuned else "")}[self.role]
        at = "" if self.sparsity is None else f" at sparsity {self.sparsity:g}"
        m = self.matched or {}
        bought = (f" (compute-matched: the {m['budget']:.3g} training FLOPs of {m['flops_of']} at "
                  f"{m['per_epoch']:.3g} an epoch)") if "epochs" in m else ""
        return f"{what}{at}, seed {self.seed}, {self.config['train']['epochs']} epochs{bought}."

    def identity(self) -> dict:
        """What tracking.json and the MLflow tags say about this run. A search
        trial logs no MLflow model (``logged_model``): it is chosen from, never
        used; its sparse export is logged all the same."""
        row = self.config["sparsity"]["method"]
        return {"key": self.key, "run_name": self.run_name, "description": self.description(),
                "logged_model": self.role != Role.SEARCH,
                "tags": {"method": self.method, "trains": row, "role": self.role, "seed": self.seed,
                         "sparsity": "0" if self.sparsity is None else f"{self.sparsity:g}",
                         "group": self.group, "selected_from": self.selected_from,
                         "tuned": str(self.tuned).lower(), "stage": str(self.stage),
                         "optuna_trial": None if self.trial is None else str(self.trial)}}


def with_values(base: dict, values: dict, method: str | None = None, seed: int | None = None) -> dict:
    """``base`` (nested config dict) with dotted ``values`` set; validated."""
    data = json.loads(json.dumps(base))
    for dotted, v in values.items():
        C.set_dotted(data, dotted, v)
    if method is not None:
        data["sparsity"]["method"] = method
    if seed is not None:
        data["train"]["seed"] = seed
    return C.from_dict(data).to_dict()


@dataclass
class SweepContext:
    """Everything a trial needs, shipped with it (picklable, paths absolute)."""

    sweep_dir: str
    base: dict          # the space's resolved base config
    trial_seed: int
    tracker: SweepTracker
    live_logging: bool = True  # False: workers may not reach the store (sqlite on a cluster); log at trial end
    in_trial: bool = True      # single-worker jobs train in the trial's process (search.in_trial)
    expected: tuple[str, ...] = ()  # what Tune expects in every result: the search's objectives
    trials_per_gpu: int = 1    # packed trials: each may take 1/N of its GPU's memory (search.trials_per_gpu)
    # a trial in its own process reports an epoch to Tune at most this often, and always its last one
    # (0: every epoch, as ASHA needs): each report waits for the driver's loop, the epoch after it too
    report_every_s: float = 0.0

    @property
    def train_storage(self) -> str:
        """Where every run's Ray Train checkpoints go: ``train.storage_path``/<sweep id>
        (an object store, say), else the sweep folder (shared on a cluster: --output)."""
        root = self.base["train"].get("storage_path")
        if not root:
            return str(Path(self.sweep_dir) / runfolder.RAY_TRAIN)
        if "://" in root:
            return f"{root.rstrip('/')}/{self.tracker.sweep_id}"
        return str(Path(root).expanduser().resolve() / self.tracker.sweep_id)

    def run_dir(self, key: str) -> Path:
        return Path(self.sweep_dir) / runfolder.RUNS / key

    def search_job(self, config: dict) -> Job:
        """The job of a search trial from its Tune config: the values its study
        proposed (``method`` plus dotted config keys), its key and trial number."""
        method = config["method"]
        values = {k: v for k, v in config.items() if "." in k}
        cfg = with_values(self.base, values, method=method, seed=self.trial_seed)
        sparsity = None if method == DENSE else cfg["sparsity"]["sparsity"]  # dense's search serves every sparsity
        return Job(key=config[JOB], role=Role.SEARCH, method=method, sparsity=sparsity,
                   seed=self.trial_seed, config=cfg, trial=config.get(TRIAL))

    def paired_jobs(self) -> dict[str, Job]:
        path = Path(self.sweep_dir) / PAIRED_FILE
        return {j["key"]: Job(**j) for j in json.loads(path.read_text())}

    def job(self, config: dict) -> Job:
        """The job of a Tune trial: a search trial's (its config holds ``method``) or a paired one."""
        if "method" in config:
            return self.search_job(config)
        return self.paired_jobs()[config[JOB]]

    def run_dir_of(self, config: dict) -> Path:
        """The run folder of a Tune trial's job."""
        return self.run_dir(config[JOB])


def write_paired(sweep_dir: str | Path, jobs: list[Job]) -> None:
    runfolder.write_json(Path(sweep_dir) / PAIRED_FILE, [asdict(j) for j in jobs])
