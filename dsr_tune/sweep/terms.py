"""The sweep's own words, each written and read in one place: its phases, its
job keys and the two rows every comparison is read against.

Phase names are folder names under ``tune/`` and entries of sweep.json's
``done``; job keys are run-folder paths under ``runs/`` and the key of every
MLflow run. Both are on disk in sweeps already run, so their spelling is fixed.
Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE = "dsr"  # the method under study: the row every paired difference is taken against
DENSE = "dense"    # the full dense reference row: one run per seed, shared by every sparsity

_SEARCH, _PAIRED = "search", "paired"


def sparsity_tag(sparsity: float) -> str:
    """``s0.9``: a sparsity in phase names, job keys, groups and report metrics."""
    return f"s{sparsity:g}"


def slug(label: str) -> str:
    """A row label as a folder name (``dsr_stop:5`` -> ``dsr_stop_5``)."""
    return label.replace(":", "_")


@dataclass(frozen=True)
class Phase:
    """One Tune phase of a sweep: the search of a method (at one sparsity when the
    space searches a choice of them; dense's never), or a stage of the paired runs
    (0: needs nothing; 1: starts from stage-0 runs)."""

    method: str | None = None
    sparsity: float | None = None
    stage: int | None = None

    @classmethod
    def search(cls, method: str, sparsity: float | None = None) -> Phase:
        return cls(method=method, sparsity=sparsity)

    @classmethod
    def paired(cls, stage: int) -> Phase:
        return cls(stage=stage)

    @property
    def is_search(self) -> bool:
        return self.stage is None

    @property
    def cell(self) -> str:
        """A search's method and sparsity, ``dsr`` or ``dsr-s0.9`` (its Optuna study's suffix too)."""
        return str(self.method) + ("" if self.sparsity is None else f"-{sparsity_tag(self.sparsity)}")

    @property
    def name(self) -> str:
        """``search-<method>``, ``search-<method>-s<sparsity>`` or ``paired-<stage>``."""
        return f"{_SEARCH}-{self.cell}" if self.is_search else f"{_PAIRED}-{self.stage}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Phase:
        """The phase called ``name`` (method names hold no hyphen); ValueError for another name."""
        kind, sep, rest = name.partition("-")
        if kind == _PAIRED and rest.isdigit():
            return cls.paired(int(rest))
        if kind != _SEARCH or not sep or not rest:
            raise ValueError(f"{name!r} is not a phase name (search-<method>[-s<sparsity>] or paired-<stage>)")
        method, sep, sparsity = rest.partition("-s")
        return cls.search(method, float(sparsity) if sep else None)


def search_key(method: str, trial_id: str) -> str:
    """The job key of a search trial: ``search/<method>/<trial id>``."""
    return f"{_SEARCH}/{method}/{trial_id}"


def trial_id(sparsity: float | None, number: int) -> str:
    """The trial id of the search key of Optuna trial ``number`` of a cell's study:
    ``s0.9-t3`` (``t3`` without a searched sparsity). It is fixed when the trial is
    asked for and kept in the study, so a resumed sweep continues the same run
    folder. (Sweeps before this held Tune's random trial id there.)"""
    return ("" if sparsity is None else f"{sparsity_tag(sparsity)}-") + f"t{number}"


def paired_key(label: str, sparsity: float | None, seed: int) -> str:
    """The job key of a paired run: ``paired/<row>/s<sparsity>/seed<k>``, or
    ``paired/dense/seed<k>`` for the dense run (no sparsity)."""
    at = "" if sparsity is None else f"/{sparsity_tag(sparsity)}"
    return f"{_PAIRED}/{slug(label)}{at}/seed{seed}"


def trial_of(key: str) -> str:
    """The trial id a search key ends with."""
    return key.rsplit("/", 1)[1]
