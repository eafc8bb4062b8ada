"""A sweep's price before it runs (``dsr-tune sweep SPACE --plan``, ``dsr-tune
compare CONFIG --plan``): its phases, the runs and epochs each trains, their
training FLOPs and the time they would take, from the plan alone. Nothing is
trained, Ray and MLflow are not started, nothing is written, and the data
files are not read where the data set's sizes are known from its
registration (CIFAR-10, ImageNet-1k, digits): only their shapes count.

The runs are the planner's own (:func:`.plan.search_phases`,
:func:`.plan.jobs_for`), each config priced by
:func:`dsr_tune.train.flops.planned_flops` at its planned densities:
exact for masks that never move (dense, thin dense, HashedNet, static
sparse), an estimate (``~``) for methods that move them, start dense or take
another run's masks, and for compute-matched rows, whose epochs follow from
DSR's estimated FLOPs here and from its measured ones when the sweep runs.
A search trial is priced at the base config's values of the searched keys;
with ASHA a search trains at most what is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import config as C
from .jobs import with_values
from .params import SPARSITY
from .plan import jobs_for, search_phases, searched_sparsities
from .rows import matched
from .spec import Space
from .terms import DENSE, Phase

PLANNED = Path("/planned-runs")  # where a planned parent would be: configs name it, nothing reads it


@dataclass
class Runs:
    """Runs of one row at one sparsity in one phase, alike in epochs and cost."""

    phase: str
    label: str
    sparsity: float | None
    runs: int
    epochs: int          # each
    flops: int           # training FLOPs each
    images: int          # training images each
    evaluated: int       # validation and test images each (every epoch)
    exact: bool


@dataclass
class Price:
    name: str
    data: object                    # dsr_tune.data.choices.Sizes
    dense_forward: int              # forward FLOPs per image of the dense model
    dense_run: int                  # training FLOPs of the dense run at the base epochs
    batch: int                      # the base config's batch
    items: list[Runs] = field(default_factory=list)
    asha: bool = False
    at_once: int = 0                # runs at once, when the space or the command says

    @property
    def phases(self) -> list[str]:
        return list(dict.fromkeys(i.phase for i in self.items))


def price(space: Space) -> Price:
    """The price of ``space`` (a sweep's, or :func:`.spec.for_compare`'s). Raises
    OSError or the data set's DataError when its sizes need files that are not here."""
    from ..data.choices import sizes
    from ..train.flops import dense_flops, planned_flops

    data, base = sizes(space.base.data), space.base
    per_epoch = data.per_epoch(base.data.batch_size)
    dense = dense_flops(base, data.classes, data.channels, data.image_size)
    out = Price(space.name, data, dense, 3 * dense * per_epoch * base.train.epochs, base.data.batch_size,
                asha=bool(space.search.asha) and space.sparsities is None, at_once=space.search.max_concurrent)
    evaluated = data.test + (data.val if data.val else 0)

    def item(phase: str, label: str, s, cfg: C.Config, runs: int, epochs: int | None = None, exact=True) -> Runs:
        train, holds = planned_flops(cfg, data.classes, data.channels, data.image_size)[1:]
        images = data.per_epoch(cfg.data.batch_size)
        epochs = epochs or cfg.train.epochs
        return Runs(phase, label, s, runs, epochs, train * images * epochs, images * epochs, evaluated * epochs,
                    holds and exact)

    if space.sparsities is None:  # a sweep: its searches first
        for phase in search_phases(space):
            values = {SPARSITY: phase.sparsity} if phase.sparsity is not None else {}
            cfg = C.from_dict(with_values(base.to_dict(), values, method=phase.method, seed=space.search.trial_seed))
            at = None if phase.method == DENSE else cfg.sparsity.sparsity  # dense: one search for every sparsity
            out.items.append(item(phase.name, phase.method, at, cfg, space.search.samples))
    for run in _paired(space, item):
        out.items.append(run)
    return _grouped(out)


def _paired(space: Space, item) -> list[Runs]:
    """The paired runs as :func:`.plan.jobs_for` plans them, compute-matched ones at
    the epochs DSR's planned FLOPs buy them."""
    sparsities = space.sparsities or searched_sparsities(space) or [space.base.sparsity.sparsity]
    refs = {s: (C.replace(space.base, **{SPARSITY: s}), None) for s in sparsities}
    jobs = jobs_for(space, refs, {}, lambda key: PLANNED / key)
    priced: dict[str, Runs] = {}
    for job in sorted(jobs, key=lambda j: j.stage):  # a matched row's DSR run is priced before it
        cfg, phase = C.from_dict(job.config), Phase.paired(job.stage).name
        if job.matched:
            own = item(phase, job.method, job.sparsity, cfg, 1)
            budget = priced[job.needs].flops
            epochs = matched(job.config, budget, own.flops // own.epochs)[1]["epochs"]
            priced[job.key] = item(phase, job.method, job.sparsity, cfg, 1, epochs, exact=False)
        else:
            priced[job.key] = item(phase, job.method, job.sparsity, cfg, 1)
    return list(priced.values())


def _grouped(p: Price) -> Price:
    """Runs alike (phase, row, sparsity, epochs, cost) counted together, in plan order."""
    groups: dict[tuple, Runs] = {}
    for r in p.items:
        key = (r.phase, r.label, r.sparsity, r.epochs, r.flops)
        if key in groups:
            groups[key].runs += r.runs
        else:
            groups[key] = r
    p.items = list(groups.values())
    return p


# ---------------------------------------------------------------- in words


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:,.1f} h"


def text(p: Price, rate: float, how: str) -> list[str]:
    """The plan as lines: the data and the unit, a table per phase, one per row, the totals.
    ``rate``: training images per second of one run; ``how``: where that figure is from."""
    d = p.data
    cost = lambda r: r.runs * (r.images + r.evaluated / 3) / rate  # noqa: E731  (a forward: a third of a step)
    lines = [f"Plan of {p.name}: nothing is trained, started or written.",
             f"Data: {d.train:,} training images ({d.per_epoch(p.batch):,} an epoch in whole batches of {p.batch}), "
             f"{d.val:,} validation, "
             f"{d.test:,} test; {d.classes} classes, {d.channels} x {d.image_size} x {d.image_size}. The dense model: "
             f"{p.dense_forward:.3g} forward FLOPs per image; its run at the base epochs: {p.dense_run:.3g} training "
             "FLOPs (1x).",
             f"Time at {rate:,.1f} training images/s per run ({how}); evaluation counted at a third of a training "
             "image; masked sparse layers compute densely, so every run is timed as the dense one (thin dense "
             "trains faster: an upper bound), one run at a time.",
             "", f"{'phase':<22} {'runs':>5} {'epochs':>8} {'training FLOPs':>16} {'time':>10}"]
    total_flops = total_time = 0.0
    approx = "" if all(r.exact for r in p.items) else "~"
    for phase in p.phases:
        items = [r for r in p.items if r.phase == phase]
        flops, t = sum(r.runs * r.flops for r in items), sum(cost(r) for r in items)
        mark = "~" if not all(r.exact for r in items) else ""
        most = "<= " if p.asha and phase.startswith("search") else ""
        lines.append(f"{phase:<22} {sum(r.runs for r in items):>5} {most + str(sum(r.runs * r.epochs for r in items)):>8}"
                     f" {mark + f'{flops:.3g}':>16} {_seconds(t):>10}")
        total_flops, total_time = total_flops + flops, total_time + t
    lines.append(f"{'total':<22} {sum(r.runs for r in p.items):>5} {sum(r.runs * r.epochs for r in p.items):>8} "
                 f"{approx + f'{total_flops:.3g}':>16} {_seconds(total_time):>10}")
    if p.at_once > 1:
        lines.append(f"{'':<22} with {p.at_once} runs at once: about {_seconds(total_time / p.at_once)}")
    lines += ["", f"{'phase':<22} {'row':<16} {'sparsity':>8} {'runs':>5} {'epochs':>7} {'FLOPs each':>12} "
              f"{'x dense':>8}"]
    for r in p.items:
        s = "-" if r.sparsity is None else f"{r.sparsity:g}"
        lines.append(f"{r.phase:<22} {r.label:<16} {s:>8} {r.runs:>5} {r.epochs:>7} "
                     f"{('' if r.exact else '~') + f'{r.flops:.3g}':>12} {r.flops / p.dense_run:>7.2f}x")
    lines += ["", "~: an estimate at the planned densities (the method moves them, starts dense or takes another run's "
              "masks; a compute-matched row's epochs follow from DSR's measured FLOPs when it runs). A row that starts "
              "from another run (gmp, the ablations) counts its own training; that run has its own line."
              + (" <=: ASHA stops weak trials early." if p.asha else "")]
    return lines
