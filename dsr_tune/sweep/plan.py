"""The one planner: from the labels a user writes to every job a sweep or a
comparison trains, and the phases it trains them in.

- **rows**: a label of the comparison is a registered method (or ablation) at
  an epoch budget; a control (static, thin dense) comes at 1x the DSR run's
  epochs, which separates the method from the training length, and at
  ``sparsity.epoch_factor`` x, the paper's rule;
- **row configs**: :func:`row_config` is the only place that knows how a row's
  config differs from the DSR config it is compared with;
- **planned runs**: a row at a sparsity and a seed, after the run it starts
  from (gmp: the dense run of its seed; the ablations: the DSR run of their
  sparsity and seed), in stages so that executors run stage by stage;
- **phases**: a search per tuned method and searched sparsity, then the
  paired stages; **jobs**: the planned runs of a sweep with their configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config as C
from .. import methods
from ..records import Role
from .jobs import Job, with_values
from .params import SPARSITY
from .terms import DENSE, REFERENCE, Phase, paired_key, slug, sparsity_tag

if TYPE_CHECKING:  # the space file's validation (spec) plans its rows with this module
    from .spec import Space


@dataclass(frozen=True)
class Row:
    label: str             # dsr, static_1x, static_2x, gmp, dsr_stop:5, ...
    method: str            # the registry entry
    factor: float = 1.0    # epochs x the DSR config's
    arg: int | None = None  # dsr_stop's epoch

    @property
    def needs(self) -> str | None:
        return methods.get(self.method).needs

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return slug(self.label)


def _factor_label(factor: float) -> str:
    return f"{factor:g}x"


def parse(label: str, epoch_factor: float) -> list[Row]:
    """The rows one label stands for; ConfigError for a label no method has."""
    base, _, arg = label.partition(":")
    for name, m in methods.REGISTRY.items():
        if not m.controls:
            continue
        factors = {"1x": 1.0, _factor_label(epoch_factor): epoch_factor}
        if base == name and not arg:
            return [Row(f"{name}_{k}", name, f) for k, f in factors.items()]
        for k, f in factors.items():
            if base == f"{name}_{k}" and not arg:
                return [Row(base, name, f)]
    entry = methods.REGISTRY.get(base)
    if entry is None or arg and not entry.parametric:
        raise C.ConfigError("methods", f"unknown method {label!r}; allowed: {', '.join(known_labels(epoch_factor))}")
    if entry.parametric:
        if not arg.isdigit():
            raise C.ConfigError("methods", f"{label!r}: write {base}:E with E the epoch, e.g. {base}:10")
        return [Row(label, base, 1.0, int(arg))]
    return [Row(label, base)]


def known_labels(epoch_factor: float = 2.0) -> list[str]:
    """Every label as written (``dsr_stop:E`` with its argument, controls with their budgets)."""
    out = []
    for name, m in methods.REGISTRY.items():
        if m.controls:
            out += [name, f"{name}_1x", f"{name}_{_factor_label(epoch_factor)}"]
        else:
            out.append(f"{name}:E" if m.parametric else name)
    return out + ["ablations"]


def default_labels() -> list[str]:
    """Every method row (the ablations only on request)."""
    return list(methods.names(default_row=True))


def rows(labels: Sequence[str], epoch_factor: float, epochs: int) -> list[Row]:
    """Every row for ``labels`` (``ablations`` expanded), duplicates dropped, table order kept."""
    out: list[Row] = []
    for label in labels:
        items = [*methods.names(kind="ablation", parametric=False),
                 f"dsr_stop:{max(1, epochs // 4)}", f"dsr_stop:{max(1, epochs // 2)}"] if label == "ablations" else [label]
        for item in items:
            for row in parse(item, epoch_factor):
                if row not in out:
                    out.append(row)
    return out


# ---------------------------------------------------------------- one row's config


def _stretch(epochs: list[int], factor: float, below: int | None = None) -> list[int]:
    """Scale epoch indices, keeping them strictly increasing (and < ``below``)."""
    out: list[int] = []
    for e in epochs:
        v = round(e * factor)
        if (not out or v > out[-1]) and (below is None or v < below):
            out.append(v)
    return out


def stretched(data: dict, factor: float) -> dict:
    """``train.epochs``, the LR milestones and the period-schedule and stop
    epochs, all multiplied by ``factor`` (a nested config dict, changed in place)."""
    epochs = max(1, round(data["train"]["epochs"] * factor))
    data["train"]["epochs"] = epochs
    data["optim"]["milestones"] = _stretch(data["optim"]["milestones"], factor, below=epochs)
    s = data["sparsity"]
    periods: list[list[int]] = []
    for start, period in s["period_schedule"]:  # a start that collides after rounding is dropped
        if not periods or round(start * factor) > periods[-1][0]:
            periods.append([round(start * factor), period])
    s["period_schedule"] = periods
    s["stop_epoch"] = min(epochs, round(s["stop_epoch"] * factor))
    return data


def row_config(cfg: C.Config, row: Row | str, parent: str | Path | None = None) -> C.Config:
    """The config of ``row`` compared with the DSR config ``cfg``.

    parent: the finished run folder the row starts from (``row.needs``: the
    DSR run for the ablations, the dense run for gmp). Sparsity, seed, model,
    data and optimizer settings are ``cfg``'s unless the row's method says
    otherwise. The result is validated like any config (no file checks).
    """
    if isinstance(row, str):
        found = parse(row, cfg.sparsity.epoch_factor)
        if len(found) != 1:
            raise C.ConfigError("methods", f"{row!r} stands for {len(found)} rows; name one: "
                                           f"{', '.join(r.label for r in found)}")
        row = found[0]
    entry = methods.get(row.method)
    if entry.needs and parent is None:
        raise C.ConfigError("sparsity.mask_from" if entry.needs == REFERENCE else "sparsity.gmp.dense_from",
                            f"None: {row.label} needs the finished {entry.needs} run it starts from")
    data = cfg.to_dict()
    s = data["sparsity"]
    s["mask_from"] = s["init_from"] = None
    s["gmp"]["dense_from"] = None
    s["method"] = entry.trains_as
    if row.factor != 1.0:
        stretched(data, row.factor)
    if entry.derive is not None:
        entry.derive(data, None if parent is None else str(parent), row.arg)
    return C.from_dict(data)


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
    every baseline's method that can be searched (the ablations and GMP derive
    from DSR's selection; dense keeps the base config)."""
    out = list(space.methods)
    if space.tune_baselines:
        for row in rows(space.baselines, space.base.sparsity.epoch_factor, space.base.train.epochs):
            entry = methods.get(row.method)
            if entry.runs is None and entry.needs is None and row.method not in out and row.method != DENSE:
                out.append(row.method)
    return out


def searched_sparsities(space: Space) -> list[float] | None:
    """The values of a searched ``sparsity.sparsity`` choice, or None (one sparsity)."""
    p = next((p for p in space.params if p.key == SPARSITY and p.kind == "choice"), None)
    return [float(v) for v in p.values] if p else None


def search_phases(space: Space) -> list[Phase]:
    """One search per tuned method and searched sparsity, each of ``search.samples``
    trials: every (method, sparsity) cell of the comparison gets the same tuning budget
    (one search over a sparsity choice would let the searcher spend it unevenly)."""
    return [Phase.search(m, s) for m in tuned_methods(space) for s in (searched_sparsities(space) or [None])]


def sweep_labels(space: Space) -> list[str]:
    """The rows a sweep reports: its searched methods, its baselines, dense."""
    return list(dict.fromkeys([*space.methods, *space.baselines] + ([DENSE] if space.dense else [])))


def _role(row: Row, space: Space) -> Role:
    if row.method == DENSE:
        return Role.DENSE
    searched = space.methods or [REFERENCE]  # a comparison without search: its own config is DSR's selection
    return Role.SELECTED if row.label in searched else Role.BASELINE


def jobs_for(space: Space, refs: dict[float, tuple[C.Config, str | None]],
         tuned: dict[tuple[str, float], tuple[C.Config, str]], folder_of) -> list[Job]:
    """Every paired job. ``refs``: per sparsity, the DSR config the rows derive
    from and the search key it was selected as (None: a comparison's own
    config); ``tuned``: the selections of the other searched or tuned methods (a row
    is ``tuned`` when its configuration came from a search of its own: a
    searched method's selection, or a tuned baseline's);
    ``folder_of(job key)``: a job's run folder (a parent's, for stage-1 rows)."""
    out: dict[str, Job] = {}
    for s, (ref_cfg, ref_key) in sorted(refs.items()):
        for run in plan(rows(sweep_labels(space), ref_cfg.sparsity.epoch_factor, ref_cfg.train.epochs), [s], space.seeds):
            if run.key in out:  # the dense run serves every sparsity
                continue
            own = tuned.get((run.row.method, s))
            if run.row.method == DENSE:
                base, source = C.from_dict(with_values(space.base.to_dict(), {}, seed=run.seed)), None
            else:
                base, source = own if own else (ref_cfg, ref_key)
            cfg = config_for(base, run, folder_of)
            out[run.key] = Job(key=run.key, role=_role(run.row, space), method=run.row.label, sparsity=run.sparsity,
                               seed=run.seed, config=cfg.to_dict(), stage=run.stage,
                               group=None if run.sparsity is None else sparsity_tag(run.sparsity),
                               selected_from=source, needs=run.needs,
                               tuned=own is not None or (run.row.label in space.methods and source is not None))
    return list(out.values())
