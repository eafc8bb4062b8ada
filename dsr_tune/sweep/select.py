"""From the search to the report's runs: the best trial per cell, then every row
planned from it on the report's fresh seeds.

For every sparsity the search evaluated, each searched (or tuned) method's
best trial by ``search.metric`` of the validation split is its selected
configuration: finished trials first, then more epochs, then the metric;
among trials equal on all three, the lower validation loss (the higher
validation accuracy when selecting on val_loss), then the lower Optuna trial
number (the job key for a sweep that kept none), so the choice never rests on
Tune's random trial ids. :func:`tie_breaks` says where a tie-breaker decided
(the driver's log, the report's header, the parent run's tag). The rows derive
from DSR's selection (or from their own, when they were tuned); the dense
reference trains its own selection (one search, at no sparsity) when it was
tuned, else the space's base config. A comparison without a search plans
the same rows from its config as given.
"""

from __future__ import annotations

import logging
import math

from .. import config as C
from .. import runfolder
from ..records import Role, Status
from . import plan
from .jobs import Job, SweepContext
from .params import SPARSITY
from .report.stats import RunRow
from .spec import Space
from .terms import DENSE, REFERENCE, sparsity_tag

log = logging.getLogger("dsr_tune")


def _second(metric: str) -> tuple[str, int]:
    """The first tie-breaker and its sign (+1: higher is better)."""
    return ("val_acc", 1) if metric == "val_loss" else ("val_loss", -1)


def _value(v, sign: int) -> float:
    """``sign * v``, or -inf (the worst) for a missing or NaN value."""
    return sign * float(v) if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf


def _rank(r: RunRow, metric: str, mode: str) -> tuple:
    """Larger is better: finished, epochs, the metric, then the two tie-breakers."""
    second, sign2 = _second(metric)
    return (r.status == Status.FINISHED, r.metrics.get("epochs_done", 0),
            _value(r.metrics.get(metric), 1 if mode == "max" else -1), _value(r.metrics.get(second), sign2),
            -r.trial if r.trial is not None else -math.inf)


def best_per_cell(rows: list[RunRow], metric: str, mode: str) -> dict[tuple[str, float], RunRow]:
    """``{(method, sparsity): best search run}`` (see the module docstring); the
    choice does not depend on the order runs are listed in."""
    best: dict[tuple[str, float], RunRow] = {}
    for r in sorted(rows, key=lambda r: r.key):  # the last resort: the smaller key
        if r.role != Role.SEARCH or metric not in r.metrics:
            continue
        cell = (r.method, r.sparsity)
        if cell not in best or _rank(r, metric, mode) > _rank(best[cell], metric, mode):
            best[cell] = r
    return best


def tie_breaks(rows: list[RunRow], metric: str, mode: str) -> dict[tuple[str, float], str]:
    """Per cell whose best trial ties with another on finished, epochs and ``metric``:
    how many tied and what chose among them (``s0.9 dsr: 2 trials tied at val_acc 1;
    val_loss chose search/dsr/s0.9-t1``)."""
    out = {}
    for cell, b in best_per_cell(rows, metric, mode).items():
        top = _rank(b, metric, mode)
        tied = [r for r in rows if r is not b and r.role == Role.SEARCH and (r.method, r.sparsity) == cell
                and metric in r.metrics and _rank(r, metric, mode)[:3] == top[:3]]
        if not tied:
            continue
        if all(_rank(r, metric, mode)[3] < top[3] for r in tied):
            by = _second(metric)[0]
        else:
            by = "the Optuna trial number" if b.trial is not None else "the job key"
        at = "" if cell[1] is None else f"{sparsity_tag(cell[1])} "
        out[cell] = (f"{at}{cell[0]}: {len(tied) + 1} trials tied at {metric} {b.metrics[metric]:.6g}; "
                     f"{by} chose {b.key}")
    return out


def paired_jobs(space: Space, ctx: SweepContext, rows: list[RunRow]) -> list[Job]:
    """The paired jobs after a search (``rows``: the search trials' runs)."""
    metric, mode = space.search.metric, space.search.mode
    best = best_per_cell(rows, metric, mode)
    for line in tie_breaks(rows, metric, mode).values():
        log.info("selection: %s", line)

    def cfg_of(r: RunRow) -> C.Config:
        return C.load(ctx.run_dir(r.key) / runfolder.CONFIG)

    refs: dict[float, tuple[C.Config, str | None]] = {}
    for s in sorted({s for m, s in best if m != DENSE}):  # dense's one search is at no sparsity
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
