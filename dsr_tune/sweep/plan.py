"""The one planner: from the labels a user writes to every job a sweep or a
comparison trains, and the phases it trains them in.

- **rows** (:mod:`.rows`): the labels of the comparison and each row's config;
- **planned runs**: a row at a sparsity and a seed, after the run it starts
  from (gmp: the dense run of its seed; the ablations: the DSR run of their
  sparsity and seed), in stages so that executors run stage by stage;
- **phases**: a search per tuned method and searched sparsity (dense: one,
  with no sparsity), then the paired stages; **jobs**: the planned runs of a
  sweep with their configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import config as C
from .. import methods
from ..records import Role
from .jobs import Job, with_values
from .params import SPARSITY
from .terms import DENSE, REFERENCE, Phase, paired_key, sparsity_tag

from .rows import Row, epoch_flops, matched, row_config, rows
from .spec import Space, params_for


# ---------------------------------------------------------------- the runs


@dataclass(frozen=True)
class PlannedRun:
    """One run of the comparison. ``key``: its job key (and folder, under the
    comparison's ``runs/``); ``needs``: the key of the run it starts from."""

    key: str
    row: Row
    sparsity: float | None      # None: dense (one run per seed, shared by every sparsity)
    seed: int
    needs: str | None = None
    stage: int = 0


def plan(rows_: Sequence[Row], sparsities: Sequence[float], seeds: Sequence[int]) -> list[PlannedRun]:
    """Every run, each after the runs it needs (stage order). The dense run and
    the DSR runs are planned when a row needs them even if not asked for."""
    dense_row, ref_row = Row(DENSE, DENSE), Row(REFERENCE, REFERENCE)
    needs = {r.needs for r in rows_}
    out: list[PlannedRun] = []
    if any(r.method == DENSE for r in rows_) or DENSE in needs:
        out += [PlannedRun(paired_key(DENSE, None, k), dense_row, None, k) for k in seeds]
    if any(r.label == REFERENCE for r in rows_) or REFERENCE in needs:
        out += [PlannedRun(paired_key(REFERENCE, s, k), ref_row, s, k) for s in sparsities for k in seeds]
    for row in rows_:
        if row.label in (DENSE, REFERENCE):
            continue
        for s in sparsities:
            for k in seeds:
                dep = None
                if row.needs == DENSE:
                    dep = paired_key(DENSE, None, k)
                elif row.needs == REFERENCE:
                    dep = paired_key(REFERENCE, s, k)
                out.append(PlannedRun(paired_key(row.label, s, k), row, s, k, dep, stage=int(dep is not None)))
    return sorted(out, key=lambda r: r.stage)  # stable: table order within a stage


def config_for(cfg: C.Config, run: PlannedRun, folder_of) -> C.Config:
    """The derived config of one planned run; ``folder_of(key)`` is where a run's
    folder is (the parent must have finished by then)."""
    data = cfg.to_dict()
    data["train"]["seed"] = run.seed
    if run.sparsity is not None:
        data["sparsity"]["sparsity"] = run.sparsity
    return row_config(C.from_dict(data), run.row, folder_of(run.needs) if run.needs else None)


# ---------------------------------------------------------------- a sweep's phases and jobs


def tuned_methods(space: Space) -> list[str]:
    """The methods that get a search: the searched ones, and with tune_baselines
    every baseline's method that can be searched, and dense when it is a row and
    reads a searched key (the ablations and GMP derive from DSR's selection: a
    GMP trial would need a trained dense run of its own to prune)."""
    out = list(space.methods)
    if space.tune_baselines:
        for row in rows(space.baselines, space.base.sparsity.epoch_factor, space.base.train.epochs):
            entry = methods.get(row.method)
            if entry.runs is None and entry.needs is None and row.method not in out and row.method != DENSE:
                out.append(row.method)
        if space.dense and DENSE not in out and params_for(space, DENSE):
            out.append(DENSE)
    return out


def searched_sparsities(space: Space) -> list[float] | None:
    """The values of a searched ``sparsity.sparsity`` choice, or None (one sparsity)."""
    p = next((p for p in space.params if p.key == SPARSITY and p.kind == "choice"), None)
    return [float(v) for v in p.values] if p else None


def search_phases(space: Space) -> list[Phase]:
    """One search per tuned method and searched sparsity, each of ``search.samples``
    trials: every (method, sparsity) cell of the comparison gets the same tuning budget
    (one search over a sparsity choice would let the searcher spend it unevenly). Dense
    has no sparsity: one search (``search-dense``), whose selection serves every sparsity
    as its run does."""
    cells = searched_sparsities(space) or [None]
    return [Phase.search(m, s) for m in tuned_methods(space) for s in ([None] if m == DENSE else cells)]


def sweep_labels(space: Space) -> list[str]:
    """The rows a sweep reports: its searched methods, its baselines, dense."""
    return list(dict.fromkeys([*space.methods, *space.baselines] + ([DENSE] if space.dense else [])))


def _role(row: Row, space: Space) -> Role:
    if row.method == DENSE:
        return Role.DENSE
    searched = space.methods or [REFERENCE]  # a comparison without search: its own config is DSR's selection
    return Role.SELECTED if row.label in searched else Role.BASELINE


def jobs_for(space: Space, refs: dict[float, tuple[C.Config, str | None]],
         tuned: dict[tuple[str, float | None], tuple[C.Config, str]], folder_of) -> list[Job]:
    """Every paired job. ``refs``: per sparsity, the DSR config the rows derive
    from and the search key it was selected as (None: a comparison's own
    config); ``tuned``: the selections of the other searched or tuned methods by
    (method, sparsity), dense's at None (a row is ``tuned`` when its configuration
    came from a search of its own: a searched method's selection, a tuned
    baseline's or dense's; an untuned dense row keeps the base config);
    ``folder_of(job key)``: a job's run folder (a parent's, for stage-1 rows)."""
    out: dict[str, Job] = {}
    for s, (ref_cfg, ref_key) in sorted(refs.items()):
        for run in plan(rows(sweep_labels(space), ref_cfg.sparsity.epoch_factor, ref_cfg.train.epochs), [s], space.seeds):
            if run.key in out:  # the dense run serves every sparsity
                continue
            own = tuned.get((run.row.method, run.sparsity))  # dense: its one selection, at no sparsity
            if run.row.method == DENSE and not own:
                base, source = C.from_dict(with_values(space.base.to_dict(), {}, seed=run.seed)), None
            else:
                base, source = own if own else (ref_cfg, ref_key)
            cfg = config_for(base, run, folder_of)
            out[run.key] = Job(key=run.key, role=_role(run.row, space), method=run.row.label, sparsity=run.sparsity,
                               seed=run.seed, config=cfg.to_dict(), stage=run.stage,
                               group=None if run.sparsity is None else sparsity_tag(run.sparsity),
                               selected_from=source, needs=run.needs,
                               tuned=own is not None or (run.row.label in space.methods and source is not None),
                               matched={"flops_of": run.needs} if run.row.matched else None)
    return list(out.values())


def match_budgets(jobs: list[Job], folder_of) -> list[str]:
    """Give every compute-matched job of ``jobs`` not matched yet its epochs
    (:func:`.rows.matched`) from its DSR run's records, which must have trained
    to the end; in place, once (a resumed sweep keeps them). Its own epoch
    costs its FLOPs per training image times the images an epoch of the DSR
    run trained on (the data set's sizes where its batch or workers differ).
    Returns the keys matched now; RuntimeError for a DSR run that did not finish."""
    from .. import runfolder
    from ..data.choices import sizes

    done = []
    for job in jobs:
        if not job.matched or "epochs" in job.matched:
            continue
        parent = folder_of(job.matched["flops_of"])
        last = runfolder.last_epoch(parent)
        ref = C.read_yaml(parent / runfolder.CONFIG) if (parent / runfolder.CONFIG).is_file() else None
        if not last or not ref or last["epochs_done"] < ref["train"]["epochs"] or not last.get("train_images"):
            raise RuntimeError(f"{job.key}: its DSR run {job.matched['flops_of']} did not train to the end with "
                               "its FLOPs recorded, so there is no budget to match")
        cfg, data = C.from_dict(job.config), sizes(C.from_dict(job.config).data)
        same = all(ref[a][b] == job.config[a][b] for a, b in (("data", "batch_size"), ("train", "workers")))
        images = last["train_images"] // last["epochs_done"] if same else data.per_epoch(cfg.data.batch_size)
        per_epoch = epoch_flops(cfg, images, data.classes, data.channels)
        job.config, info = matched(job.config, last["train_flops"], per_epoch)
        job.config = C.from_dict(job.config).to_dict()  # validated, as every planned config is
        job.matched = {**job.matched, **info}
        done.append(job.key)
    return done
