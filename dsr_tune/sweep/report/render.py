"""The table written out: terminal text, Markdown, CSV, and the figure.

Every form says which split each number is from and how many images it
rests on, what selected the configuration, n, the 95% intervals and the
seed-paired differences to DSR (:mod:`.stats`), and what each row cost
(:mod:`.costs`), so no number is read without what it means.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ... import runfolder
from ...records import split_of as _split
from ..terms import REFERENCE
from .figure import plot, styles  # noqa: F401  (the figure: render.plot, as the table's other forms)
from .stats import MIN_N, Line, Table

COLUMNS = ("method", "epochs", "tuned", "n", "mean ± std", "95% CI", "Δ vs DSR (paired, 95% CI)",
           "non-zero params", "train FLOPs (x dense)", "infer FLOPs (x dense)", "time (s)", "device", "note")
CLIPPED = "*"  # after an interval clipped to what the quantity can be


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _ci(ln: Line) -> str:
    if ln.n < MIN_N:
        return f"n < {MIN_N}"
    if not ln.spread:
        return "no spread"
    return f"[{_pct(ln.ci[0])}, {_pct(ln.ci[1])}]" + (CLIPPED if ln.clipped else "")


def _diff(ln: Line) -> str:
    d = ln.diff
    if d is None:
        return "reference" if ln.method == REFERENCE else "-"
    if d.ci is None:
        return f"{_points(d.mean)} (n < {MIN_N})"
    mark = "" if d.resolved else " ~0"
    if d.degenerate:
        mark += " (no spread)"
    return f"{_points(d.mean)} [{_points(d.ci[0])}, {_points(d.ci[1])}]{CLIPPED if d.clipped else ''}{mark}"


def _points(x: float) -> str:
    """A difference of accuracies in signed points: +0.00 where it rounds to zero (two equal
    means differ by a float's last bit, which printed as -0.00)."""
    return f"{round(100 * x, 2) + 0.0:+.2f}"


def _flops(ln: Line) -> str:
    c = ln.cost
    own = f"{c.train_x:.2f}x" if c.train_x is not None else f"{c.train_flops:.3g}" if c.train_flops else "-"
    return own + (f" + {c.parent_x:.2f}x parent" if c.parent_x is not None else "")


def cells(ln: Line) -> list[str]:
    c = ln.cost
    return [ln.method, str(ln.epochs), "yes" if ln.tuned else "no", str(ln.n), f"{_pct(ln.mean)} ± {_pct(ln.std)}",
            _ci(ln), _diff(ln), f"{round(ln.nonzero):,}", _flops(ln),
            f"{c.infer_x:.3f}x" if c.infer_x is not None else "-",
            f"{c.train_time:.1f}" if c.train_time is not None else "-", c.device, ln.note]


SPLITS = {"val": "the validation split (a fixed slice of the training data)", "test": "the test split",
          "train": "the training split"}


def split_of(metric: str) -> str:
    """The split a metric is measured on, in words (``test_acc`` -> the test split)."""
    return SPLITS.get(_split(metric), "an unknown split")


def header(t: Table) -> list[str]:
    what = t.reported.replace("_acc", " accuracy").replace("test", "test-split").replace("val", "validation-split")
    if t.searched:
        chose = (f"{t.searched} search trials; the configuration of each method was selected on {t.metric} "
                 f"({t.mode}) of {split_of(t.metric)}")
    else:
        chose = "no search: the configuration as given"
    lines = [f"{t.title}: {chose}.",
             f"Rows: {what} in % over the seeds {t.seeds} (n per row; selection runs are not among them): "
             f"mean ± std, the 95% interval of the mean (Student t; none below n = {MIN_N}: \"n < {MIN_N}\"; "
             "\"no spread\": every seed scored the same), and the seed-paired difference to DSR with its 95% "
             "interval (~0: the interval contains 0, not resolved at this n; no spread: every paired difference "
             f"equal, judged by a sign test, which needs n >= 6). {CLIPPED}: an interval clipped to [0, 100] "
             "(a difference to [-100, 100]), where the t interval reaches past what accuracy can be.",
             _images(t),
             "Cost: training FLOPs as a multiple of the dense run's at 1x (" + (t.flops_reference or "not recorded")
             + "); a row that starts from another run adds it apart (+ ... parent), as its own count holds only "
             "its own training; inference FLOPs per image as a fraction of the dense model's; time: the mean "
             "seconds of training and evaluation per run on the device named."]
    if t.ties:
        lines.append("Ties in the selection (equal on " + t.metric + "; broken by validation loss, or accuracy when "
                     "selecting on loss, then the Optuna trial number): " + "; ".join(t.ties) + ".")
    return lines + [f"WARNING: {w}" for w in t.warnings]


def _images(t: Table) -> str:
    """The test split's size and what one image is worth, in points."""
    split = t.reported.partition("_")[0]
    if not t.test_n:
        return f"The {split} split's size was not recorded by these runs."
    n = t.test_n[0] if len(t.test_n) == 1 else None
    size = f"{n:,} images" if n else f"{t.test_n[0]:,} to {t.test_n[-1]:,} images (the runs differ)"
    return (f"The {split} split: {size}; one image is worth {100 / t.test_n[-1]:.3g} accuracy points"
            + ("" if n else " or more") + ".")


def _selection(t: Table, s: float) -> list[str]:
    out = []
    for r in t.selection.get(s, []):
        val = r.metrics.get("val_acc")
        out.append(f"selection run, not in the means: {r.key} ({r.method}, seed {r.seed}): "
                   f"val {_pct(val) if val is not None else '-'}%, test {_pct(r.metrics.get('test_acc', 0))}%")
    return out


def text(t: Table) -> str:
    out = header(t)
    rows = [cells(ln)[:-1] for lines in t.sections.values() for ln in lines]  # every column as wide as it needs
    widths = [max(len(c) for c in column) for column in zip(COLUMNS[:-1], *rows)]
    for s, lines in sorted(t.sections.items()):
        out += ["", f"sparsity {s:g}"] + [f"  {x}" for x in _selection(t, s)]
        out.append("  " + "  ".join(f"{c:<{w}}" for c, w in zip(COLUMNS, widths)) + "  note")
        for ln in lines:
            out.append(("  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells(ln), widths)) + f"  {ln.note}").rstrip())
    if t.pareto:
        out += ["", f"Pareto front of the search trials ({t.metric} vs non-zero params):"]
        out += [f"  {r.key:<24} {_pct(r.metrics[t.metric])}%  {int(r.metrics['nonzero_params']):>12,}" for r in t.pareto]
    return "\n".join(out) + "\n"


def markdown(t: Table) -> str:
    out = [f"# {t.title}", ""] + header(t)
    for s, lines in sorted(t.sections.items()):
        out += ["", f"## sparsity {s:g}", ""]
        sel = _selection(t, s)
        if sel:
            out += [f"- {x}" for x in sel] + [""]
        out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in cells(ln)) + " |" for ln in lines]
    if t.pareto:
        out += ["", "## Pareto front of the search trials", "", f"| run | {t.metric} % | non-zero params |",
                "|---|---|---|"]
        out += [f"| {r.key} | {_pct(r.metrics[t.metric])} | {int(r.metrics['nonzero_params']):,} |" for r in t.pareto]
    return "\n".join(out) + "\n"


CSV_COLUMNS = ("sparsity", "method", "epochs", "tuned", "n", "mean", "std", "ci_low", "ci_high", "diff_to_dsr",
               "diff_ci_low", "diff_ci_high", "diff_n", "nonzero_params", "seeds", "ci_clipped", "diff_clipped",
               "diff_sd", "diff_p", "train_flops", "train_flops_x", "parent_train_flops_x", "infer_flops",
               "infer_flops_x", "train_time", "device", "test_n")


def write_csv(t: Table, path: str | Path) -> Path:
    """One line per row and sparsity (:data:`CSV_COLUMNS`; intervals empty below n = 3, clipped as printed)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for s, lines in sorted(t.sections.items()):
        for ln in lines:
            ci, d, c = ln.ci or (None, None), ln.diff, ln.cost
            dci = d.ci if d and d.ci else (None, None)
            w.writerow([s, ln.method, ln.epochs, ln.tuned, ln.n, ln.mean, ln.std, ci[0], ci[1],
                        d.mean if d else None, dci[0], dci[1], d.n if d else None, round(ln.nonzero),
                        " ".join(map(str, sorted(ln.by_seed))), ln.clipped, d.clipped if d else None,
                        d.sd if d else None, d.p if d else None, c.train_flops, c.train_x, c.parent_x,
                        c.infer_flops, c.infer_x, c.train_time, c.device, " ".join(map(str, t.test_n))])
    return runfolder.atomic_write(path, buf.getvalue())
