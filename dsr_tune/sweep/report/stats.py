"""The comparison's table and its statistics, from plain runs (:class:`RunRow`).

Per sparsity, one line per row label over the report's seeds: mean and sample
std, n, the 95% t interval of the mean, and the seed-paired difference to DSR
(the mean of row - DSR over the seeds both have, which cancels what a seed
does to both) with its own interval, and what the row cost (:mod:`.costs`).
No interval claims more than the data allow: none below :data:`MIN_N` seeds,
and each is clipped to what the quantity can be (an accuracy to [0, 1], a
difference of two to [-1, 1]) and says so. The search trials are listed
apart, never averaged into a row: every reported mean is over fresh seeds.
Pure: no MLflow, no files.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...records import Role, Status
from ..terms import DENSE, REFERENCE
from . import costs
from .costs import Cost

MIN_N = 3  # seeds an interval needs: at n = 2 a t interval is 12.7 standard errors wide and rests on one spread


def order_key(label: str) -> tuple:
    """A row's place in a section: DSR first, then the registry's order (the
    controls 1x before the long one, then compute-matched; dense last)."""
    from ... import methods
    from ..rows import MATCHED

    names = list(methods.REGISTRY)
    base, _, arg = label.partition(":")
    factor = 0.0
    for name in names:
        if base == f"{name}_{MATCHED}":
            base, factor = name, math.inf
        elif base.startswith(name + "_") and base.endswith("x"):
            base, factor = name, float(base[len(name) + 1:-1] or 0)
    place = -1 if base == REFERENCE else (len(names) if base == DENSE else names.index(base) if base in names else 99)
    return place, factor, int(arg) if arg.isdigit() else 0, label


@dataclass
class RunRow:
    """One run as MLflow (or its run folder) holds it."""

    key: str
    role: str                 # a Role
    method: str               # the row label: dsr, static_2x, dsr_stop:5, ...
    sparsity: float | None
    seed: int
    status: str
    metrics: dict             # final values: test_acc, val_acc, nonzero_params, epochs_done, ...
    epochs: int
    tuned: bool = False
    selected_from: str | None = None
    device: str | None = None  # what it trained on (its records', or MLflow's device param)
    trial: int | None = None  # a search run's Optuna trial number (the selection's last tie-breaker)


def clip(ci: tuple[float, float] | None, lo: float, hi: float) -> tuple[tuple[float, float] | None, bool]:
    """``ci`` within [lo, hi], and whether it had to be clipped."""
    if ci is None:
        return None, False
    out = (min(max(ci[0], lo), hi), min(max(ci[1], lo), hi))
    return out, out != ci


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean (Student t); None for n < 2."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    m, s = statistics.mean(values), statistics.stdev(values)
    half = t.ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return m - half, m + half


@dataclass
class Diff:
    """A seed-paired difference (row - reference) over ``n`` common seeds; ``ci``
    is None below :data:`MIN_N` and clipped to [-1, 1] (``clipped`` says so)."""

    mean: float
    n: int
    ci: tuple[float, float] | None
    sd: float = 0.0
    clipped: bool = False

    @property
    def p(self) -> float | None:
        """The two-sided p-value of "no difference" (paired t test; with no spread the
        sign test's); None below :data:`MIN_N`."""
        if self.n < MIN_N:
            return None
        if self.sd < 1e-9:
            return 1.0 if self.mean == 0 else min(1.0, 2 * 0.5 ** self.n)
        from scipy.stats import t

        return float(2 * t.sf(abs(self.mean) / (self.sd / math.sqrt(self.n)), self.n - 1))

    @property
    def degenerate(self) -> bool:
        """Every paired difference is the same (accuracy is counted in whole test
        samples, so small n often gives this): the t interval has width 0 and says
        nothing; a sign test stands in for it."""
        return self.ci is not None and self.sd < 1e-9

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (False without an interval). With no spread, the
        sign test at 5% (two-sided): n equal non-zero differences, n >= 6."""
        if self.degenerate:
            return self.mean != 0 and 2 * 0.5 ** self.n < 0.05
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)


def paired(row: dict[int, float], ref: dict[int, float]) -> Diff | None:
    seeds = sorted(set(row) & set(ref))
    if not seeds:
        return None
    d = [row[k] - ref[k] for k in seeds]
    ci, clipped = clip(t_interval(d) if len(d) >= MIN_N else None, -1.0, 1.0)
    return Diff(statistics.mean(d), len(d), ci, statistics.stdev(d) if len(d) > 1 else 0.0, clipped)


@dataclass
class Line:
    """One row of a section: a label at a sparsity over seeds."""

    method: str
    sparsity: float | None
    by_seed: dict[int, float]
    nonzero: float
    epochs: int
    tuned: bool = False
    note: str = ""
    diff: Diff | None = None
    cost: Cost = field(default_factory=lambda: Cost(None, None, None, "-"))

    @property
    def acc(self) -> list[float]:
        return [self.by_seed[k] for k in sorted(self.by_seed)]

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        return statistics.mean(self.acc)

    @property
    def std(self) -> float:
        return statistics.stdev(self.acc) if self.n > 1 else 0.0

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95% t interval of the mean within [0, 1]; None below :data:`MIN_N` seeds."""
        return clip(t_interval(self.acc), 0.0, 1.0)[0] if self.n >= MIN_N else None

    @property
    def clipped(self) -> bool:
        """The t interval reached past [0, 1] and was clipped."""
        return self.n >= MIN_N and clip(t_interval(self.acc), 0.0, 1.0)[1]

    @property
    def spread(self) -> bool:
        """The seeds differ (an interval of width 0 says nothing)."""
        return self.std > 1e-12


@dataclass
class Table:
    title: str
    metric: str                    # what was selected on
    mode: str
    reported: str = "test_acc"     # what the rows show
    sections: dict[float, list[Line]] = field(default_factory=dict)
    selection: dict[float, list[RunRow]] = field(default_factory=dict)  # the chosen search trial(s)
    searched: int = 0
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pareto: list[RunRow] = field(default_factory=list)
    flops_reference: str = ""      # where the dense run's training FLOPs at 1x came from
    test_n: list[int] = field(default_factory=list)  # the test split's sizes the runs recorded
    ties: list[str] = field(default_factory=list)  # selections a tie-breaker decided (select.tie_breaks)


def _epochs(r: RunRow) -> int:
    """Epochs trained: the configured ones, or fewer for a run stopped early."""
    return r.epochs if r.status == Status.FINISHED else int(r.metrics.get("epochs_done") or r.epochs)


def _line(label: str, sparsity, runs: list[RunRow], reported: str) -> Line:
    runs = [r for r in runs if reported in r.metrics]
    stopped = sum(r.status != Status.FINISHED for r in runs)
    notes = [f"{stopped} stopped early"] if stopped else []
    trained = sorted({_epochs(r) for r in runs})
    if len(trained) > 1:  # a compute-matched row: each seed's epochs are what its DSR run's FLOPs buy
        notes.append(f"epochs {trained[0]}-{trained[-1]} by seed (the column: the most)")
    return Line(label, sparsity, {r.seed: r.metrics[reported] for r in runs},
                statistics.mean(r.metrics.get("nonzero_params", 0) for r in runs), trained[-1],
                tuned=any(r.tuned for r in runs), note="; ".join(notes), cost=costs.of_runs(runs))


def _note_parents(lines: list[Line]) -> None:
    """A row that starts from another run (gmp: the dense run; the ablations: DSR's) says
    so, with the epochs that run trained first (its own epochs column counts only its own)."""
    from ... import methods

    by_label = {ln.method: ln for ln in lines}
    for ln in lines:
        entry = methods.REGISTRY.get(ln.method.partition(":")[0])
        if entry is not None and entry.needs:
            parent = by_label.get(entry.needs)
            first = f", which trained {parent.epochs} epochs first" if parent is not None else ""
            ln.note = "; ".join(filter(None, [ln.note, f"starts from the trained {entry.needs} run of its seed{first}"]))


def summarize(title: str, rows: list[RunRow], metric: str = "val_acc", mode: str = "max",
              reported: str = "test_acc", reference: str = REFERENCE) -> Table:
    """The table of ``rows`` (search trials and report runs of one comparison)."""
    table = Table(title, metric, mode, reported, searched=sum(r.role == Role.SEARCH for r in rows))
    report = [r for r in rows if r.role != Role.SEARCH and reported in r.metrics]
    table.seeds = sorted({r.seed for r in report})
    split = f"{reported.partition('_')[0]}_n"  # test_acc -> test_n: the images behind each number
    table.test_n = sorted({int(r.metrics[split]) for r in report if r.metrics.get(split)})
    dense = [r for r in report if r.role == Role.DENSE]
    sparsities = sorted({r.sparsity for r in report if r.sparsity is not None})
    chosen = {r.selected_from for r in report if r.selected_from}
    for s in sparsities:
        labels: dict[str, list[RunRow]] = {}
        for r in report:
            if r.sparsity == s and r.role != Role.DENSE:
                labels.setdefault(r.method, []).append(r)
        lines = [_line(m, s, labels[m], reported) for m in sorted(labels, key=order_key)]
        if dense:
            lines.append(_line(DENSE, None, dense, reported))
        _note_parents(lines)
        said = costs.attach(lines)
        table.flops_reference = table.flops_reference or said
        ref = next((ln for ln in lines if ln.method == reference), None)
        for ln in lines:
            if ref is not None and ln is not ref:
                ln.diff = paired(ln.by_seed, ref.by_seed)
        table.sections[s] = lines
        table.selection[s] = sorted((r for r in rows if r.role == Role.SEARCH and r.key in chosen  # dense's: all
                                     and (r.sparsity == s or r.method == DENSE)), key=lambda r: r.method)
    if metric.startswith("test_"):
        table.warnings.append(f"selected on {metric}, a test metric (search.select_on_test: true): the selected "
                              f"rows' test numbers are optimistic")
    return table


def pareto_front(rows: list[RunRow], metric: str = "val_acc") -> list[RunRow]:
    """Finished search runs no other one beats on both ``metric`` (higher) and
    nonzero_params (lower)."""
    pts = [r for r in rows if r.role == Role.SEARCH and r.status == Status.FINISHED
           and {metric, "nonzero_params"} <= set(r.metrics)]

    def beats(o, r):
        a, b = (o.metrics[metric], -o.metrics["nonzero_params"]), (r.metrics[metric], -r.metrics["nonzero_params"])
        return a[0] >= b[0] and a[1] >= b[1] and a != b

    front = [r for r in pts if not any(beats(o, r) for o in pts)]
    return sorted(front, key=lambda r: r.metrics["nonzero_params"])
