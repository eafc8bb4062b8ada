"""From the search to the report's runs: the best trial per cell, then every row
planned from it on the report's fresh seeds.

For every sparsity the search evaluated, each searched (or tuned) method's
best trial by ``search.metric`` of the validation split is its selected
configuration (finished trials first, then more epochs, then the metric;
ties to the smaller key). The rows derive from DSR's selection (or from their
own, when they were tuned); the dense reference keeps the space's base
config. A comparison without a search plans the same rows from its config
as given.
"""

from __future__ import annotations

import logging

from .. import config as C
from .. import runfolder
from ..records import Role, Status
from . import plan
from .jobs import Job, SweepContext
from .params import SPARSITY
from .report.stats import RunRow
from .spec import Space
from .terms import REFERENCE

log = logging.getLogger("dsr_tune")


def best_per_cell(rows: list[RunRow], metric: str, mode: str) -> dict[tuple[str, float], RunRow]:
    """``{(method, sparsity): best search run}`` (see the module docstring); the
    choice does not depend on the order runs are listed in."""
    sign = 1 if mode == "max" else -1
    best: dict[tuple[str, float], RunRow] = {}

    def score(r: RunRow):
        return r.status == Status.FINISHED, r.metrics.get("epochs_done", 0), sign * r.metrics[metric]

    for r in sorted(rows, key=lambda r: r.key):
        if r.role != Role.SEARCH or metric not in r.metrics:
            continue
        cell = (r.method, r.sparsity)
        if cell not in best or score(r) > score(best[cell]):
            best[cell] = r
    return best


def paired_jobs(space: Space, ctx: SweepContext, rows: list[RunRow]) -> list[Job]:
    """The paired jobs after a search (``rows``: the search trials' runs)."""
    best = best_per_cell(rows, space.search.metric, space.search.mode)

    def cfg_of(r: RunRow) -> C.Config:
        return C.load(ctx.run_dir(r.key) / runfolder.CONFIG)

    refs: dict[float, tuple[C.Config, str | None]] = {}
    for s in sorted({s for _, s in best}):
        ref = best.get((REFERENCE, s)) or best.get((space.methods[0], s))
        if ref is not None:
            refs[s] = (cfg_of(ref), ref.key)
    tuned = {(m, s): (cfg_of(r), r.key) for (m, s), r in best.items() if m != REFERENCE}
    jobs = plan.jobs_for(space, refs, tuned, ctx.run_dir)
    log.debug("paired phases: %d jobs for sparsities %s", len(jobs), ", ".join(f"{s:g}" for s in refs))
    return jobs


def compare_jobs(space: Space, ctx: SweepContext) -> list[Job]:
    """The jobs of a comparison without search: its config at each sparsity."""
    refs = {s: (C.replace(space.base, **{SPARSITY: s}), None) for s in space.sparsities or []}
    return plan.jobs_for(space, refs, {}, ctx.run_dir)
