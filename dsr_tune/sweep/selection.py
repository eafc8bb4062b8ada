"""From the search to the report's runs: select, then plan every row.

For every sparsity the search evaluated, each searched (or tuned) method's
best trial by ``search.metric`` of the validation split is its selected
configuration (finished trials first, then more epochs, then the metric;
ties to the smaller key). Then the planner (:mod:`.plan`) turns, per
sparsity, the rows of the comparison into runs on the report's fresh seeds:

- each searched method's selection, re-trained (role ``selected``);
- every baseline and ablation row, derived from the selected DSR
  configuration (or from its own selection when it was tuned), the
  controls at 1x and ``sparsity.epoch_factor`` x the epochs;
- the dense reference from the space's base config, once per seed;
- GMP after the dense run of its seed, the ablations after the DSR run of
  their sparsity and seed (stage 1).

A comparison without a search (``dsr-tune compare``) plans the same rows
from its config as given. The list is written to ``paired.json`` before
the first paired phase starts, so a resumed sweep trains exactly these jobs.
"""

from __future__ import annotations

import logging

from .. import config as C
from .. import runfolder
from . import plan as P
from .jobs import Job, SweepContext, with_values
from .results import RunRow
from .space import Space, search_phases, searched_sparsities

log = logging.getLogger("dsr_tune")


def best_per_cell(rows: list[RunRow], metric: str, mode: str) -> dict[tuple[str, float], RunRow]:
    """``{(method, sparsity): best search run}`` (see the module docstring); the
    choice does not depend on the order runs are listed in."""
    sign = 1 if mode == "max" else -1
    best: dict[tuple[str, float], RunRow] = {}

    def score(r: RunRow):
        return r.status == "FINISHED", r.metrics.get("epochs_done", 0), sign * r.metrics[metric]

    for r in sorted(rows, key=lambda r: r.key):
        if r.role != "search" or metric not in r.metrics:
            continue
        cell = (r.method, r.sparsity)
        if cell not in best or score(r) > score(best[cell]):
            best[cell] = r
    return best


def _role(row: P.Row, space: Space) -> str:
    if row.method == "dense":
        return "dense"
    searched = space.methods or ["dsr"]  # a comparison without search: its own config is DSR's selection
    return "selected" if row.label in searched else "baseline"


def _labels(space: Space) -> list[str]:
    return list(dict.fromkeys([*space.methods, *space.baselines] + (["dense"] if space.dense else [])))


def plan_jobs(space: Space, refs: dict[float, tuple[C.Config, str | None]],
              tuned: dict[tuple[str, float], tuple[C.Config, str]], folder_of) -> list[Job]:
    """Every paired job. ``refs``: per sparsity, the DSR config the rows derive
    from and the search key it was selected as (None: a comparison's own
    config); ``tuned``: the selections of the other searched or tuned methods (a row
    is ``tuned`` when its configuration came from a search of its own: a
    searched method's selection, or a tuned baseline's);
    ``folder_of(job key)``: a job's run folder (a parent's, for stage-1 rows)."""
    labels = _labels(space)
    jobs: dict[str, Job] = {}
    for s, (ref_cfg, ref_key) in sorted(refs.items()):
        rows = P.rows(labels, ref_cfg.sparsity.epoch_factor, ref_cfg.train.epochs)
        for run in P.plan(rows, [s], space.seeds):
            key = f"paired/{run.key}"
            if key in jobs:  # the dense run serves every sparsity
                continue
            own = tuned.get((run.row.method, s))
            if run.row.method == "dense":
                base, source = C.from_dict(with_values(space.base.to_dict(), {}, seed=run.seed)), None
            else:
                base, source = own if own else (ref_cfg, ref_key)
            cfg = P.config_for(base, run, lambda k: folder_of(f"paired/{k}"))
            jobs[key] = Job(key=key, role=_role(run.row, space), method=run.row.label, sparsity=run.sparsity,
                            seed=run.seed, config=cfg.to_dict(), stage=run.stage,
                            group=None if run.sparsity is None else f"s{run.sparsity:g}", selected_from=source,
                            tuned=own is not None or (run.row.label in space.methods and source is not None),
                            needs=f"paired/{run.needs}" if run.needs else None)
    return list(jobs.values())


def paired_jobs(space: Space, ctx: SweepContext, rows: list[RunRow]) -> list[Job]:
    """The paired jobs after a search (``rows``: the search trials' runs)."""
    best = best_per_cell(rows, space.search.metric, space.search.mode)

    def cfg_of(r: RunRow) -> C.Config:
        return C.load(ctx.run_dir(r.key) / runfolder.CONFIG)

    refs: dict[float, tuple[C.Config, str | None]] = {}
    for s in sorted({s for _, s in best}):
        ref = best.get(("dsr", s)) or best.get((space.methods[0], s))
        if ref is not None:
            refs[s] = (cfg_of(ref), ref.key)
    tuned = {(m, s): (cfg_of(r), r.key) for (m, s), r in best.items() if (m, s) != ("dsr", s)}
    jobs = plan_jobs(space, refs, tuned, ctx.run_dir)
    log.debug("paired phases: %d jobs for sparsities %s", len(jobs), ", ".join(f"{s:g}" for s in refs))
    return jobs


def compare_jobs(space: Space, ctx: SweepContext) -> list[Job]:
    """The jobs of a comparison without search: its config at each sparsity."""
    refs = {s: (C.replace(space.base, **{"sparsity.sparsity": s}), None) for s in space.sparsities or []}
    return plan_jobs(space, refs, {}, ctx.run_dir)


# ---------------------------------------------------------------- what is left (the progress lines' ETA)


def planned_sparsities(space: Space) -> list[float]:
    """The sparsities the paired phases will cover, as far as the space says
    before the search: its searched choices (the search may reach fewer), or
    the comparison's, or the base config's."""
    if space.sparsities is not None:
        return list(space.sparsities)
    return searched_sparsities(space) or [space.base.sparsity.sparsity]


def paired_epochs_from_space(space: Space) -> int:
    """The epochs the paired phases will train, counted from the space before
    ``paired.json`` exists: sparsities x seeds x rows (each at its epoch factor)."""
    epochs, factor = space.base.train.epochs, space.base.sparsity.epoch_factor
    runs = P.plan(P.rows(_labels(space), factor, epochs), planned_sparsities(space), space.seeds)
    return sum(max(1, round(epochs * run.row.factor)) for run in runs)


def epochs_after(space: Space, ctx: SweepContext, phase: str) -> int:
    """The planned epochs of every phase after ``phase``: the searches still to
    come, then the paired jobs (from ``paired.json`` once the search has ended)."""
    searches = search_phases(space)
    if phase in searches:
        later = searches[searches.index(phase) + 1:]
        return len(later) * space.search.samples * space.base.train.epochs + paired_epochs_from_space(space)
    stage = int(phase.removeprefix("paired-"))
    return sum(j.config["train"]["epochs"] for j in ctx.paired_jobs().values() if j.stage > stage)
