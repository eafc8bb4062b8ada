"""The table written out: terminal text, Markdown, CSV, and the figure.

Every form says which split each number is from, what selected the
configuration, n, the 95% intervals and the seed-paired differences to DSR
(:mod:`.stats`), so no number is read without what it means.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ... import runfolder
from ...records import split_of as _split
from ..terms import DENSE, REFERENCE
from .stats import Line, Table

COLUMNS = ("method", "epochs", "tuned", "n", "mean ± std", "95% CI", "Δ vs DSR (paired, 95% CI)",
           "non-zero params", "note")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "n/a (n = 1)"


def _diff(ln: Line) -> str:
    d = ln.diff
    if d is None:
        return "reference" if ln.method == REFERENCE else "-"
    mark = "" if d.resolved else " ~0"
    if d.degenerate:
        mark += " (no spread)"
    ci = f" [{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}]" if d.ci else " (n = 1)"
    return f"{100 * d.mean:+.2f}{ci}{mark}"


def cells(ln: Line) -> list[str]:
    return [ln.method, str(ln.epochs), "yes" if ln.tuned else "no", str(ln.n), f"{_pct(ln.mean)} ± {_pct(ln.std)}",
            _ci(ln.ci), _diff(ln), f"{round(ln.nonzero):,}", ln.note]


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
             "mean ± std, the 95% interval of the mean (Student t), and the seed-paired difference to DSR "
             "with its 95% interval (~0: the interval contains 0, not resolved at this n; no spread: every "
             "paired difference equal, judged by a sign test, which needs n >= 6)."]
    if t.ties:
        lines.append("Ties in the selection (equal on " + t.metric + "; broken by validation loss, or accuracy when "
                     "selecting on loss, then the Optuna trial number): " + "; ".join(t.ties) + ".")
    return lines + [f"WARNING: {w}" for w in t.warnings]


def _selection(t: Table, s: float) -> list[str]:
    out = []
    for r in t.selection.get(s, []):
        val = r.metrics.get("val_acc")
        out.append(f"selection run, not in the means: {r.key} ({r.method}, seed {r.seed}): "
                   f"val {_pct(val) if val is not None else '-'}%, test {_pct(r.metrics.get('test_acc', 0))}%")
    return out


def text(t: Table) -> str:
    out = header(t)
    widths = [16, 6, 5, 3, 14, 16, 26, 15]
    for s, lines in sorted(t.sections.items()):
        out += ["", f"sparsity {s:g}"] + [f"  {x}" for x in _selection(t, s)]
        out.append("  " + "  ".join(f"{c:<{w}}" for c, w in zip(COLUMNS, widths)) + "  note")
        for ln in lines:
            out.append("  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells(ln), widths)) + f"  {ln.note}".rstrip())
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


def write_csv(t: Table, path: str | Path) -> Path:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["sparsity", "method", "epochs", "tuned", "n", "mean", "std", "ci_low", "ci_high",
                "diff_to_dsr", "diff_ci_low", "diff_ci_high", "diff_n", "nonzero_params", "seeds"])
    for s, lines in sorted(t.sections.items()):
        for ln in lines:
            ci, d = ln.ci or (None, None), ln.diff
            dci = d.ci if d and d.ci else (None, None)
            w.writerow([s, ln.method, ln.epochs, ln.tuned, ln.n, ln.mean, ln.std, ci[0], ci[1],
                        d.mean if d else None, dci[0], dci[1], d.n if d else None, round(ln.nonzero),
                        " ".join(map(str, sorted(ln.by_seed)))])
    return runfolder.atomic_write(path, buf.getvalue())


MARKERS = "osD^v<>pPX*h"


def styles(methods: list[str]) -> dict[str, dict]:
    """One colour and marker per method, none shared (matplotlib's 10-colour cycle
    gave DSR and SNFS the same orange in a 16-row table); DSR black and thicker."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    out, others = {}, [m for m in sorted(methods) if m != REFERENCE]
    for i, m in enumerate(others):
        out[m] = {"color": cmap(i % 20), "marker": MARKERS[i % len(MARKERS)], "lw": 1.2}
    out[REFERENCE] = {"color": "k", "marker": "o", "lw": 2.4}
    return out


def plot(t: Table, out: str | Path) -> Path:
    """Left: test accuracy against non-zero parameters, one line per method, bars the
    95% intervals of the mean (none where n = 1), dense dashed. Then one panel per
    sparsity: each row's seed-paired difference to DSR with its 95% interval, filled
    where the interval excludes 0, hollow where it is not resolved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[Line]] = {}
    dense = None
    for lines in t.sections.values():
        for ln in lines:
            if ln.method == DENSE:
                dense = ln
            else:
                by_method.setdefault(ln.method, []).append(ln)
    look = styles(list(by_method) + [DENSE])
    sections = [(s, [ln for ln in lines if ln.diff is not None]) for s, lines in sorted(t.sections.items())]
    sections = [(s, lines) for s, lines in sections if lines]
    fig, axes = plt.subplots(1, 1 + len(sections), figsize=(7.2 + 4.2 * len(sections), 5.2), dpi=110,
                             gridspec_kw={"width_ratios": [1.6] + [1] * len(sections)}, squeeze=False)
    ax = axes[0][0]
    for method, lines in sorted(by_method.items()):
        lines = sorted(lines, key=lambda ln: ln.nonzero)
        err = [[100 * (ln.mean - ln.ci[0]) if ln.ci else 0 for ln in lines],
               [100 * (ln.ci[1] - ln.mean) if ln.ci else 0 for ln in lines]]
        st = look[method]
        ax.errorbar([ln.nonzero for ln in lines], [100 * ln.mean for ln in lines], yerr=err, marker=st["marker"],
                    color=st["color"], lw=st["lw"], capsize=3, label=method, zorder=3 if method == REFERENCE else 2)
    if dense is not None:
        ax.axhline(100 * dense.mean, color="k", ls="--", lw=1, label=f"dense ({round(dense.nonzero):,} params)")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{t.title}\nmeans over seeds {t.seeds}; bars: 95% CI of the mean (Student t)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    for ax, (s, lines) in zip(axes[0][1:], sections):
        for y, ln in enumerate(lines):
            d, st = ln.diff, look.get(ln.method, look[DENSE])
            lo, hi = (d.ci if d.ci else (d.mean, d.mean))
            ax.errorbar([100 * d.mean], [y], xerr=[[100 * (d.mean - lo)], [100 * (hi - d.mean)]],
                        marker=st["marker"], color=st["color"], capsize=3, ls="none",
                        mfc=st["color"] if d.resolved else "white")
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(range(len(lines)), [f"{ln.method} (n {ln.diff.n})" for ln in lines], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("row - DSR, test accuracy points")
        ax.set_title(f"sparsity {s:g}: paired difference to DSR, 95% CI\n(hollow: interval contains 0)",
                     fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    out = Path(out)
    runfolder.save_figure(fig, out)
    plt.close(fig)
    return out
