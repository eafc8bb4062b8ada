"""The report's figure (``report.png``): test accuracy against non-zero
parameters and against training FLOPs (the Pareto view of cost), each with the
95% intervals of the mean, every sparsity labelled; then per sparsity each
row's seed-paired difference to DSR with its interval. Accuracy stays on its
[0, 100] scale and no legend lies over the data: it sits below the panels.
"""

from __future__ import annotations

from pathlib import Path

from ... import runfolder
from ..terms import DENSE, REFERENCE
from .stats import Line, Table

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


def _err(lines: list[Line]) -> list[list[float]]:
    """Error-bar lengths in points from each mean to its (clipped) interval; 0 without one."""
    return [[100 * (ln.mean - ln.ci[0]) if ln.ci else 0 for ln in lines],
            [100 * (ln.ci[1] - ln.mean) if ln.ci else 0 for ln in lines]]


def _accuracy(ax, by_method: dict[str, list[Line]], look: dict, x, xlabel: str) -> None:
    """One accuracy panel: a line per method over the sparsities, x = ``x(line)`` on a log scale."""
    for method, lines in sorted(by_method.items()):
        lines = sorted((ln for ln in lines if x(ln) is not None), key=x)
        if not lines:
            continue
        st = look[method]
        ax.errorbar([x(ln) for ln in lines], [100 * ln.mean for ln in lines], yerr=_err(lines), marker=st["marker"],
                    color=st["color"], lw=st["lw"], capsize=3, label=method, zorder=3 if method == REFERENCE else 2)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")


def _label_sparsities(ax, by_method: dict[str, list[Line]], x) -> None:
    """Each sparsity written beside its points (those of DSR, else of the first row)."""
    ref = by_method.get(REFERENCE) or next(iter(by_method.values()), [])
    for ln in ref:
        if x(ln) is not None and ln.sparsity is not None:
            ax.annotate(f"sparsity {ln.sparsity:g}", (x(ln), 100 * ln.mean), xytext=(6, -12),
                        textcoords="offset points", fontsize=7, color="0.25")


def _parents(ax, by_method: dict[str, list[Line]], look: dict) -> bool:
    """A derived row's own FLOPs joined to its total with the run it starts from (hollow)."""
    drawn = False
    for method, lines in by_method.items():
        for ln in lines:
            c = ln.cost
            if c.train_x is None or c.parent_x is None:
                continue
            st = look[method]
            ax.plot([c.train_x, c.train_x + c.parent_x], [100 * ln.mean] * 2, ls=":", color=st["color"], lw=1)
            ax.plot([c.train_x + c.parent_x], [100 * ln.mean], marker=st["marker"], mfc="white", color=st["color"],
                    ls="none")
            drawn = True
    return drawn


def _axes_limits(ax, fmt) -> None:
    """Accuracy within [0, 100]; the log x axis ticked at 1, 2 and 5 of each decade (every
    digit when the data span less than one, where those would leave a single tick), in ``fmt``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim()
    ax.set_ylim(max(0.0, lo), min(100.0, hi))
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if hi > 8 * lo else range(1, 10)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _differences(ax, s: float, lines: list[Line], look: dict) -> None:
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
    ax.set_title(f"sparsity {s:g}: paired difference to DSR, 95% CI\n(hollow: interval contains 0 or n < 3)",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="x")


def plot(t: Table, out: str | Path) -> Path:
    """The figure of ``t`` (see the module docstring), written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

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
    fig, axes = plt.subplots(1, 2 + len(sections), figsize=(11 + 4.2 * len(sections), 5.6), dpi=110,
                             gridspec_kw={"width_ratios": [1.3, 1.3] + [1] * len(sections)}, squeeze=False,
                             layout="constrained")
    params, cost = axes[0][0], axes[0][1]
    _accuracy(params, by_method, look, lambda ln: ln.nonzero, "non-zero parameters")
    _accuracy(cost, by_method, look, lambda ln: ln.cost.train_x, "training FLOPs, x the dense run's at 1x")
    extra = [Line2D([], [], marker="o", mfc="white", color="0.3", ls=":", label="with the run it starts from")] \
        if _parents(cost, by_method, look) else []
    if dense is not None:
        label = f"dense ({round(dense.nonzero):,} params)"
        params.axhline(100 * dense.mean, color="k", ls="--", lw=1, label=label)
        if dense.cost.train_x is not None:
            cost.axhline(100 * dense.mean, color="k", ls="--", lw=1, label=label)
            cost.errorbar([dense.cost.train_x], [100 * dense.mean], yerr=_err([dense]), marker="s", color="k",
                          mfc="white", capsize=3, ls="none", label="the dense run (1x)")
    for ax, x, fmt in ((params, lambda ln: ln.nonzero, "{:,.0f}".format), (cost, lambda ln: ln.cost.train_x,
                                                                            "{:g}x".format)):
        _label_sparsities(ax, by_method, x)
        _axes_limits(ax, fmt)
    params.set_title(f"{t.title}\nmeans over seeds {t.seeds}; bars: 95% CI of the mean (n >= 3)", fontsize=9)
    cost.set_title("accuracy against training compute (Pareto view)", fontsize=9)
    if not any(ln.cost.train_x for lines in by_method.values() for ln in lines):
        cost.text(0.5, 0.5, "the runs recorded no training FLOPs", ha="center", va="center", transform=cost.transAxes)
    handles = {}
    for ax in (params, cost):
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    for h in extra:
        handles[h.get_label()] = h
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(6, len(handles)),
               fontsize=7, frameon=False)
    for ax, (s, lines) in zip(axes[0][2:], sections):
        _differences(ax, s, lines, look)
    out = Path(out)
    runfolder.save_figure(fig, out)
    plt.close(fig)
    return out
