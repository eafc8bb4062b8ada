"""Baselines paired with the search, decided once the search has ended.

For every sparsity the search evaluated, the best search trial of each
method (by the search metric; finished trials first, early-stopped ones
only if none finished) is the reference. Then, per sparsity:

- each baseline of the space (default static and thin dense), derived from
  the best trial's config by :func:`dsr_tune.baselines.baseline_config`:
  same sparsity, same parameter count, ``sparsity.epoch_factor`` x the
  epochs with milestones stretched; once per seed, not once per trial;
- each method's best trial again on the other seeds (the mean and spread
  the report shows);

and the full dense reference once per seed, from the space's base config.
The list is written to ``paired.json`` before the second Tune phase starts,
so a resumed sweep trains exactly the same jobs.
"""

from __future__ import annotations

import logging

from .. import config as C
from .report import best_per_cell, load_local
from .jobs import Job, SweepContext, with_values
from . import plan as P
from .space import Space

log = logging.getLogger("dsr_tune")


def paired_jobs(space: Space, ctx: SweepContext) -> list[Job]:
    """Every job of the second phase (see the module docstring)."""
    rows = [r for r in load_local(ctx.sweep_dir) if r.role == "search"]
    best = best_per_cell(rows, space.search.metric, space.search.mode)
    jobs: list[Job] = []
    sparsities = sorted({s for _, s in best})
    for s in sparsities:
        cells = {m: r for (m, sp), r in best.items() if sp == s}
        ref = cells.get("dsr") or next(iter(cells.values()))  # baselines derive from the DSR config
        configs = {m: C.load(ctx.run_dir(r.key) / "config.yaml").to_dict() for m, r in cells.items()}
        for seed in space.seeds:
            ref_cfg = C.from_dict(with_values(configs[ref.method], {}, seed=seed))
            for row in P.rows(space.baselines, ref_cfg.sparsity.epoch_factor, ref_cfg.train.epochs):
                cfg = P.row_config(ref_cfg, row)
                jobs.append(Job(key=f"paired/{row.slug}_s{s:g}_seed{seed}", role="baseline", method=row.label,
                                sparsity=s, seed=seed, config=cfg.to_dict(), baseline_for=ref.key))
            if seed == ctx.search_seed:
                continue
            for m, r in cells.items():
                jobs.append(Job(key=f"paired/{m}_s{s:g}_seed{seed}", role="seed", method=m, sparsity=s,
                                seed=seed, config=with_values(configs[m], {}, seed=seed), repeat_of=r.key))
    if space.dense and best:
        for seed in space.seeds:
            cfg = P.row_config(C.from_dict(with_values(space.base.to_dict(), {}, seed=seed)), "dense")
            jobs.append(Job(key=f"paired/dense_seed{seed}", role="dense", method="dense", sparsity=None,
                            seed=seed, config=cfg.to_dict()))
    log.debug("paired phase: %d jobs for sparsities %s", len(jobs), ", ".join(f"{s:g}" for s in sparsities))
    return jobs
