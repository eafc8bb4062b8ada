"""What the progress lines say: every ETA, and the best so far.

The ``total ETA`` counts epochs: those planned and not yet trained in this
phase plus every later phase's (:func:`epochs_after`: the searches to come,
then the paired runs, counted from the space until ``paired.json`` exists),
at the time per trained epoch of the runs this process saw end. The
``phase ETA`` of a Tune phase counts trials (they run side by side); a phase
run here, one job after another, counts epochs. The best so far: in a
search, the best ``search.metric`` per searched sparsity; in the paired
phases, DSR's and the leading row's test mean over the seeds ended so far.

Tune's callback (:class:`.tune.Progress`) and the driver's runner without Ray
both call it, so it imports neither Ray (but :func:`table`, Tune's own trial
table) nor torch.
"""

from __future__ import annotations

import math
import time

from ..records import Status
from ..train.metrics import duration
from . import plan
from .rows import rows as rows_of
from .jobs import Job, SweepContext
from .params import SPARSITY
from .report.stats import RunRow, summarize
from .spec import Space, params_for
from .terms import DENSE, REFERENCE, Phase, sparsity_tag

_now = time.time  # the ETAs' clock
ENDED, ERROR = ("TERMINATED", "ERROR"), "ERROR"  # Tune's trial statuses


def pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def scores(r: dict) -> str:
    """A trial's accuracies: ``val 91.20%, test 90.80%``."""
    val = f"val {pct(r.get('val_acc'))}, " if "val_acc" in r else ""
    return f"{val}test {pct(r.get('test_acc'))}"


def _etas(total_s: float | None, phase_s: float | None) -> list[str]:
    return ([f"total ETA {duration(total_s)}"] if total_s is not None else []) + \
           ([f"phase ETA {duration(phase_s)}"] if phase_s is not None else [])


# ---------------------------------------------------------------- what is left


def planned_sparsities(space: Space) -> list[float]:
    """The sparsities the paired phases will cover, as far as the space says
    before the search: its searched choices (the search may reach fewer), or
    the comparison's, or the base config's."""
    if space.sparsities is not None:
        return list(space.sparsities)
    return plan.searched_sparsities(space) or [space.base.sparsity.sparsity]


def paired_epochs_from_space(space: Space) -> int:
    """The epochs the paired phases will train, counted from the space before
    ``paired.json`` exists: sparsities x seeds x rows (each at its epoch factor)."""
    epochs, factor = space.base.train.epochs, space.base.sparsity.epoch_factor
    runs = plan.plan(rows_of(plan.sweep_labels(space), factor, epochs), planned_sparsities(space), space.seeds)
    return sum(max(1, round(epochs * run.row.factor)) for run in runs)


def epochs_after(space: Space, ctx: SweepContext, phase: Phase) -> int:
    """The planned epochs of every phase after ``phase``: the searches still to
    come, then the paired jobs (from ``paired.json`` once the search has ended)."""
    if phase.is_search:
        searches = plan.search_phases(space)
        later = searches[searches.index(phase) + 1:]
        return len(later) * space.search.samples * space.base.train.epochs + paired_epochs_from_space(space)
    return sum(j.config["train"]["epochs"] for j in ctx.paired_jobs().values() if j.stage > phase.stage)


# ---------------------------------------------------------------- a Tune phase


def table(phase: Phase, space: Space):
    """Tune's own trial table (its legacy CLIReporter), at most every 30 s:
    the searched values (or the paired run) and the latest metrics per trial."""
    from ray.tune import CLIReporter

    s = space.search
    keys = [p.key for p in params_for(space, phase.method, phase.sparsity)] if phase.is_search else []
    short = [k.rsplit(".", 1)[-1] for k in keys]  # sparsity.dsr.delta -> delta, unless two keys end alike
    params = dict(zip(keys, short if len(set(short)) == len(short) else keys))
    return CLIReporter(metric_columns={"epochs_done": "epochs", s.metric: s.metric, "test_acc": "test_acc",
                                       "nonzero_params": "non-zero"},
                       parameter_columns=params if keys else {"job": "run"}, max_report_frequency=30,
                       metric=None if s.pareto else s.metric, mode=None if s.pareto else s.mode,
                       sort_by_metric=not s.pareto)


def clock(done: int, epochs_done: int) -> tuple[float, int, int]:
    """(now, trials ended, epochs trained): when this process first saw a trial start."""
    return _now(), done, epochs_done


def tune_eta(start: tuple[float, int, int] | None, *, done: int, total: int, epochs_done: int,
             epochs_left: int, later: int | None) -> str:
    """``; total ETA ..., phase ETA ...`` from the trials ended since ``start`` (their
    rate, with the concurrency); no total without ``later`` (the epochs of later phases)."""
    if start is None or done <= start[1]:
        return ""
    elapsed = _now() - start[0]
    total_s = None
    if later is not None and epochs_done > start[2] and epochs_left + later:
        total_s = elapsed / (epochs_done - start[2]) * (epochs_left + later)
    phase_s = elapsed / (done - start[1]) * (total - done) if done < total else None
    parts = _etas(total_s, phase_s)
    return "; " + ", ".join(parts) if parts else ""


def ended(trials, trial=None) -> list:
    """Trials ended so far (restored ones included); ``trial`` is ending now."""
    out = [t for t in trials if t.status in ENDED]
    return out + ([trial] if trial is not None and trial not in out else [])


def best_so_far(trials, metric: str, mode: str, name_of) -> str:
    """``; best <metric> so far ...`` of the ended search ``trials``, per searched
    sparsity (one value when sparsity is not searched); ``name_of(trial)`` names one."""
    sign = 1 if mode == "max" else -1
    best: dict = {}
    for t in trials:
        v, s = (t.last_result or {}).get(metric), t.config.get(SPARSITY)
        if t.status != ERROR and isinstance(v, (int, float)) and math.isfinite(v) and (
                s not in best or sign * v > sign * best[s][0]):
            best[s] = (v, t)
    if not best:
        return ""
    shown = {s: f"{pct(v) if 'acc' in metric else f'{v:.4g}'} ({name_of(t)})" for s, (v, t) in best.items()}
    if list(shown) == [None]:
        return f"; best {metric} so far {shown[None]}"
    return f"; best {metric} so far: " + ", ".join(f"{sparsity_tag(s)} {shown[s]}" for s in sorted(shown))


def _row(job: Job, record: dict) -> RunRow:
    return RunRow(job.key, job.role, job.method, job.sparsity, job.seed, Status.FINISHED, record,
                  job.config["train"]["epochs"])


def standing(rows: list[RunRow], sparsity: float) -> str:
    """A paired phase's best so far at ``sparsity``, saying what it is of: DSR's
    and the leading row's test-split mean over the fresh seeds ended so far."""
    lines = [ln for ln in summarize("", rows).sections.get(sparsity, []) if ln.method != DENSE]
    if not lines:
        return ""
    best = max(lines, key=lambda ln: ln.mean)
    ref = next((ln for ln in lines if ln.method == REFERENCE), None)
    shown = [] if ref is None else [f"{REFERENCE} {100 * ref.mean:.2f}% (n {ref.n})" + (", the best" if best is ref else "")]
    if best is not ref:
        shown.append(f"best {best.method} {100 * best.mean:.2f}% (n {best.n})")
    return f"{sparsity_tag(sparsity)} so far (test mean over the seeds ended): {', '.join(shown)}"


def paired_standing(jobs: dict[str, Job], trials, trial) -> str:
    """``; <standing>`` at the sparsity of the paired ``trial`` ending now, from the ended ``trials``."""
    job = jobs.get(trial.config.get("job"))
    if job is None or job.sparsity is None:
        return ""
    rows = [_row(jobs[t.config["job"]], t.last_result) for t in trials
            if t.config.get("job") in jobs and t.status != ERROR and "test_acc" in (t.last_result or {})]
    line = standing(rows, job.sparsity)
    return f"; {line}" if line else ""


# ---------------------------------------------------------------- a phase run here, one job after another


class Local:
    """The end-of-job lines of a phase the driver runs itself (no Ray): ETAs per trained epoch."""

    def __init__(self, jobs: dict[str, Job], keys: list[str]):
        self.left = sum(jobs[k].config["train"]["epochs"] for k in keys)
        self.later = sum(j.config["train"]["epochs"] for j in jobs.values() if j.stage > jobs[keys[0]].stage) if keys else 0
        self.spent, self.trained, self.rows = 0.0, 0, []  # what this process trained

    def ended(self, job: Job, record: dict, trained: bool, took: float) -> str:
        """The line of ``job``, which ended after ``took`` s (``trained``: now, not before)."""
        epochs = job.config["train"]["epochs"]
        self.left -= epochs
        if trained:
            self.spent, self.trained = self.spent + took, self.trained + epochs
        self.rows.append(_row(job, record))
        per_epoch = self.spent / self.trained if self.trained else 0
        eta = _etas(per_epoch * (self.left + self.later) if per_epoch and self.left + self.later else None,
                    per_epoch * self.left if per_epoch and self.left else None)
        best = standing(self.rows, job.sparsity) if job.sparsity is not None else ""
        val = f"val {100 * record['val_acc']:.2f}%, " if "val_acc" in record else ""
        how = f"{took:.0f} s" if trained else "trained before, skipped"
        return (f"{val}test {100 * record['test_acc']:.2f}%, {record['nonzero_params']:,} non-zero, "
                f"{record['epoch'] + 1} epochs ({how}{f'; {best}' if best else ''}"
                f"{'; ' + ', '.join(eta) if eta else ''})")

