"""What one trial trains, and where its files go.

A :class:`Job` is a resolved training config plus its identity in the sweep:

- ``search/<trial id>``: a hyperparameter set the searcher proposed (role
  ``search``, on the sweep's first seed);
- ``paired/<method>_s<sparsity>_seed<k>``: a baseline paired with the best
  search trial at that sparsity (role ``baseline``), or that best trial
  repeated on another seed (role ``seed``);
- ``paired/dense_seed<k>``: the full dense reference (role ``dense``).

Folders of a sweep (``SweepContext.sweep_dir``)::

    sweep.json      the sweep's identity, phase and tracker
    optuna.db       the Optuna study (persistent across resumes)
    paired.json     the paired jobs, fixed when the search ends
    runs/<key>/     one per job: config.yaml, metrics.jsonl, checkpoint.pt, tracking.json
    ray_train/      Ray Train checkpoints of every run (what a restarted trial resumes from)
    tune/search/, tune/paired/   Tune's experiment state (what --resume restores)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import config as C
from .. import runfolder
from ..tracking import SweepTracker

PAIRED_FILE = "paired.json"


def key_of(config: dict, trial_id: str) -> str:
    """The job key of a Tune trial: ``{"job": key}`` in the paired phase, else ``search/<trial id>``."""
    return config["job"] if "job" in config else f"search/{trial_id}"


@dataclass
class Job:
    key: str
    role: str                       # search | baseline | seed | dense
    method: str
    sparsity: float | None          # None: dense
    seed: int
    config: dict                    # the resolved config (nested dict)
    baseline_for: str | None = None  # baselines: the search trial whose config they derive from
    repeat_of: str | None = None     # role seed: the search trial repeated

    @property
    def run_name(self) -> str:
        s = "" if self.sparsity is None else f" s{self.sparsity:g}"
        tail = f" {self.key.split('/', 1)[1]}" if self.role == "search" else ""
        return f"{self.method}{s} seed{self.seed}{tail}"

    def identity(self) -> dict:
        """What tracking.json and the MLflow tags say about this run."""
        return {"key": self.key, "run_name": self.run_name,
                "tags": {"method": self.method, "role": self.role, "seed": self.seed,
                         "sparsity": None if self.sparsity is None else f"{self.sparsity:g}",
                         "baseline_for": self.baseline_for, "repeat_of": self.repeat_of}}


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
    search_seed: int
    tracker: SweepTracker
    live_logging: bool = True  # False: workers may not reach the store (sqlite on a cluster); log at trial end

    @property
    def train_storage(self) -> str:
        """Where every run's Ray Train checkpoints go: ``train.storage_path``/<sweep id>
        (an object store, say), else the sweep folder (shared on a cluster: --output)."""
        root = self.base["train"].get("storage_path")
        if not root:
            return str(Path(self.sweep_dir) / "ray_train")
        if "://" in root:
            return f"{root.rstrip('/')}/{self.tracker.sweep_id}"
        return str(Path(root).expanduser().resolve() / self.tracker.sweep_id)

    def run_dir(self, key: str) -> Path:
        return Path(self.sweep_dir) / "runs" / key

    def search_job(self, params: dict, trial_id: str) -> Job:
        """The job of a search trial from the searcher's ``params``
        (``method`` plus dotted config keys)."""
        values = {k: v for k, v in params.items() if k != "method" and "." in k}
        cfg = with_values(self.base, values, method=params["method"], seed=self.search_seed)
        return Job(key=key_of({}, trial_id), role="search", method=params["method"],
                   sparsity=cfg["sparsity"]["sparsity"], seed=self.search_seed, config=cfg)

    def paired_jobs(self) -> dict[str, Job]:
        path = Path(self.sweep_dir) / PAIRED_FILE
        return {j["key"]: Job(**j) for j in json.loads(path.read_text())}

    def job(self, config: dict, trial_id: str) -> Job:
        """The job of a Tune trial: ``{"job": key}`` in the paired phase, else searched params."""
        if "job" in config:
            return self.paired_jobs()[config["job"]]
        return self.search_job(config, trial_id)

    def run_dir_of(self, config: dict, trial_id: str) -> Path:
        return self.run_dir(key_of(config, trial_id))


def write_paired(sweep_dir: str | Path, jobs: list[Job]) -> None:
    runfolder.write_json(Path(sweep_dir) / PAIRED_FILE, [asdict(j) for j in jobs])
