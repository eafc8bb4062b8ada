"""What one trial trains, and where its files go.

A :class:`Job` is a resolved training config plus its identity in the sweep:

- ``search/<method>/<trial id>``: a hyperparameter set the searcher proposed
  for ``method`` (role ``search``, on ``search.trial_seed``);
- ``paired/<row>/s<sparsity>/seed<k>``: a row of the comparison on a report
  seed: the selected configuration re-trained (role ``selected``), a
  baseline or ablation (``baseline``), or ``paired/dense/seed<k>`` (``dense``).

Every paired job of one sparsity shares a ``group`` (``s0.9``): the selected
configuration, its seed repeats and its baselines. Folders of a sweep
(``SweepContext.sweep_dir``)::

    sweep.json      the sweep's identity, phase and tracker
    optuna.db       the Optuna studies (one per searched method; persistent across resumes)
    paired.json     the paired jobs, fixed when the search ends
    runs/<key>/     one per job: config.yaml, metrics.jsonl, checkpoint.pt, tracking.json
    ray_train/      Ray Train checkpoints of multi-worker runs
    tune/<phase>/   Tune's experiment state of each phase (what --resume restores)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import config as C
from .. import runfolder
from ..tracking import SweepTracker

PAIRED_FILE = runfolder.PAIRED


@dataclass
class Job:
    key: str
    role: str                       # search | selected | baseline | dense
    method: str                     # the row label (dsr, static_2x, dsr_stop:5, ...) or the searched method
    sparsity: float | None          # None: dense
    seed: int
    config: dict                    # the resolved config (nested dict)
    stage: int = 0                  # 1: starts from a stage-0 run (gmp, the ablations)
    group: str | None = None        # s<sparsity>: a selection, its repeats and its baselines
    selected_from: str | None = None  # the search trial whose configuration this re-trains or derives from
    tuned: bool = False             # its hyperparameters come from its own search
    needs: str | None = None        # the job key of the run it starts from

    @property
    def run_name(self) -> str:
        s = "" if self.sparsity is None else f" s{self.sparsity:g}"
        tail = f" {self.key.rsplit('/', 1)[1]}" if self.role == "search" else ""
        return f"{self.method}{s} seed{self.seed}{tail}"

    def description(self) -> str:
        """A sentence for the MLflow run's description."""
        what = {"search": f"a search trial of {self.method} (selection on the validation split)",
                "selected": f"the selected {self.method} configuration re-trained on a fresh seed",
                "baseline": f"the {self.method} row, derived from the selected DSR configuration"
                            + (" with its own tuned hyperparameters" if self.tuned else ""),
                "dense": "the full dense reference"}[self.role]
        at = "" if self.sparsity is None else f" at sparsity {self.sparsity:g}"
        return f"{what}{at}, seed {self.seed}, {self.config['train']['epochs']} epochs."

    def identity(self) -> dict:
        """What tracking.json and the MLflow tags say about this run."""
        row = self.config["sparsity"]["method"]
        return {"key": self.key, "run_name": self.run_name, "description": self.description(),
                "tags": {"method": self.method, "trains": row, "role": self.role, "seed": self.seed,
                         "sparsity": "0" if self.sparsity is None else f"{self.sparsity:g}",
                         "group": self.group, "selected_from": self.selected_from,
                         "tuned": str(self.tuned).lower(), "stage": str(self.stage)}}


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

    def search_job(self, params: dict, trial_id: str) -> Job:
        """The job of a search trial from the searcher's ``params``
        (``method`` plus dotted config keys)."""
        method = params["method"]
        values = {k: v for k, v in params.items() if k != "method" and "." in k}
        cfg = with_values(self.base, values, method=method, seed=self.trial_seed)
        return Job(key=f"search/{method}/{trial_id}", role="search", method=method,
                   sparsity=cfg["sparsity"]["sparsity"], seed=self.trial_seed, config=cfg)

    def paired_jobs(self) -> dict[str, Job]:
        path = Path(self.sweep_dir) / PAIRED_FILE
        return {j["key"]: Job(**j) for j in json.loads(path.read_text())}

    def job(self, config: dict, trial_id: str) -> Job:
        """The job of a Tune trial: ``{"job": key}`` in the paired phases, else searched params."""
        if "job" in config:
            return self.paired_jobs()[config["job"]]
        return self.search_job(config, trial_id)

    def run_dir_of(self, config: dict, trial_id: str) -> Path:
        key = config["job"] if "job" in config else f"search/{config['method']}/{trial_id}"
        return self.run_dir(key)


def write_paired(sweep_dir: str | Path, jobs: list[Job]) -> None:
    runfolder.write_json(Path(sweep_dir) / PAIRED_FILE, [asdict(j) for j in jobs])
