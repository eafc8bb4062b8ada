"""DSR against the static controls over a range of sparsities, from one or more reports.

    .venv/bin/python scripts/sparsity_curve.py runs/sweeps/mnist5k runs/sweeps/mnist5k_curve \
        --out docs/results/mnist5k_sparsity_curve.png --table

Each argument is a sweep (or comparison) folder, or its report.csv, as ``dsr-tune
report`` writes it. Their sections are pooled by sparsity (a sparsity two reports
both hold is taken from the first). Two panels: test accuracy against non-zero
parameters, and against training FLOPs as a multiple of the dense run's at 1x (the
report's ``train_flops_x``: the question "at what compute"); one line per row
(DSR, static and thin dense at 1x, at the epoch factor and compute-matched), bars
the report's 95% intervals (none below n = 3), the dense run dashed. ``--table``
prints one Markdown line per sparsity: each row's mean, its paired difference to
DSR with its interval (``~0``: not resolved at this n) and its training FLOPs.
Reads CSV only: nothing here imports torch.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROWS = ("dsr", "static_1x", "static_2x", "static_cm", "thin_dense_1x", "thin_dense_2x", "thin_dense_cm")
REPORT = "report.csv"


def _num(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read(paths: list[str]) -> dict[float, dict[str, dict]]:
    """``{sparsity: {row: its CSV line, numbers as floats}}`` pooled over the reports."""
    out: dict[float, dict[str, dict]] = {}
    for p in paths:
        path = Path(p) / REPORT if Path(p).is_dir() else Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"{p}: no {REPORT} there (give a sweep folder after dsr-tune report, or a report.csv)")
        seen: dict[float, dict[str, dict]] = {}
        with open(path, newline="") as f:
            for line in csv.DictReader(f):
                s = _num(line["sparsity"])
                row = {k: (_num(v) if k not in ("method", "device", "seeds", "tuned") else v) for k, v in line.items()}
                seen.setdefault(s, {})[line["method"]] = row
        for s, rows in seen.items():
            out.setdefault(s, rows)  # the first report that holds a sparsity gives all of its rows
    return dict(sorted(out.items()))


def _pct(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")


def _diff(r: dict) -> str:
    if r["method"] == "dsr":
        return "reference"
    if r.get("diff_to_dsr") is None:
        return "-"
    lo, hi = r.get("diff_ci_low"), r.get("diff_ci_high")
    if lo is None or hi is None:
        return f"{_pct(r['diff_to_dsr'], True)} (n < 3)"
    mark = "" if lo > 0 or hi < 0 else " ~0"
    return f"{_pct(r['diff_to_dsr'], True)} [{_pct(lo, True)}, {_pct(hi, True)}]{mark}"


def table(curve: dict[float, dict[str, dict]]) -> str:
    head = ["sparsity", "non-zero"] + [f"{m}: test % / Δ vs DSR / train FLOPs x dense" for m in ROWS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, rows in curve.items():
        nz = rows.get("dsr", {}).get("nonzero_params")
        cells = [f"{s:g}", "-" if nz is None else f"{round(nz):,}"]
        for m in ROWS:
            r = rows.get(m)
            flops = None if r is None else r.get("train_flops_x")
            cells.append("-" if r is None else f"{_pct(r['mean'])} / {_diff(r)} / "
                         + ("-" if flops is None else f"{flops:.3g}x"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(curve: dict[float, dict[str, dict]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsr_tune.sweep.report.figure import styles

    look = styles(list(ROWS))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110)
    dense = [rows["dense"] for rows in curve.values() if "dense" in rows]
    for ax, x_key, x_label in ((axes[0], "nonzero_params", "non-zero parameters (log)"),
                               (axes[1], "train_flops_x", "training FLOPs, x the dense run's at 1x (log)")):
        for m in ROWS:
            pts = [(rows[m], s) for s, rows in curve.items() if m in rows and rows[m].get(x_key) is not None]
            if not pts:
                continue
            xs, ys = [r[x_key] for r, _ in pts], [100 * r["mean"] for r, _ in pts]
            err = [[100 * (r["mean"] - r["ci_low"]) if r.get("ci_low") is not None else 0 for r, _ in pts],
                   [100 * (r["ci_high"] - r["mean"]) if r.get("ci_high") is not None else 0 for r, _ in pts]]
            st = look[m]
            ax.errorbar(xs, ys, yerr=err, marker=st["marker"], color=st["color"], lw=st["lw"], capsize=3, label=m,
                        ls="--" if m.endswith("_cm") else "-", zorder=3 if m == "dsr" else 2)
            if m == "dsr":
                for (r, s), x, y in zip(pts, xs, ys):
                    ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7)
        if dense:
            ax.axhline(100 * dense[0]["mean"], color="k", ls=":", lw=1, label="dense")
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(top=min(100.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title(f"{title}: accuracy at each parameter budget (labels: sparsity)", fontsize=9)
    axes[1].set_title("the same runs against their training compute", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="sweep or comparison folders, or their report.csv")
    p.add_argument("--out", help="write the figure here (PNG)")
    p.add_argument("--title", default="DSR against static controls")
    p.add_argument("--table", action="store_true", help="print the Markdown table")
    args = p.parse_args(argv)
    try:
        curve = read(args.reports)
    except FileNotFoundError as exc:
        print(f"sparsity_curve: error: {exc}", file=sys.stderr)
        return 2
    if not curve:
        print("sparsity_curve: the reports hold no rows", file=sys.stderr)
        return 2
    if args.out:
        plot(curve, Path(args.out), args.title)
    if args.table or not args.out:
        print(table(curve), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
