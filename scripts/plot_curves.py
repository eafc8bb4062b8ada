"""Per-epoch learning curves from run folders' metrics.jsonl: a PNG, and a table.

    .venv/bin/python scripts/plot_curves.py runs/dense_seed0 --out docs/mnist5k_dense_curve.png --table
    .venv/bin/python scripts/plot_curves.py dense=SWEEP/runs/paired/dense "dsr 0.9=SWEEP/runs/paired/dsr/s0.9" \
        --out docs/curves.png --table

Each argument is one panel: a run folder (or its metrics.jsonl), or a folder
whose sub-folders are run folders (the seeds of one row of a comparison), whose
curves are averaged, with the lowest and highest seed as a band. ``NAME=PATH``
names the panel (default: the path's last two parts). A panel shows train_acc,
val_acc and test_acc (in %) against the 1-based epoch; the epochs where the LR
dropped are marked. --table prints each panel's per-epoch numbers (the mean
over its runs) as a Markdown table. Only the per-epoch records ("kind":
"epoch") are read; the reallocation records in the same file are passed over.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from dsr_tune import runfolder  # torch-free: reading records needs no torch

SPLITS = ("train_acc", "val_acc", "test_acc")


def epochs(path: str | Path) -> list[dict]:
    """The per-epoch records of one run, in epoch order."""
    path = Path(path)
    records = runfolder.read_records(path / runfolder.METRICS if path.is_dir() else path)
    return sorted((r for r in records if r.get("kind") == "epoch"), key=lambda r: r["epoch"])


def runs_of(path: Path) -> list[list[dict]]:
    """The per-epoch records of every run ``path`` stands for (itself, or its sub-folders)."""
    if path.is_file() or (path / runfolder.METRICS).is_file():
        return [epochs(path)]
    subs = sorted(p for p in path.iterdir() if (p / runfolder.METRICS).is_file()) if path.is_dir() else []
    return [epochs(p) for p in subs]


def mean_curve(runs: list[list[dict]]) -> list[dict]:
    """Per epoch (those every run reached): the mean of each split, its min and max over
    the runs, and the LR (the same for every run)."""
    n = min(len(r) for r in runs)
    out = []
    for i in range(n):
        rows = [r[i] for r in runs]
        rec = {"epoch": rows[0]["epoch"], "lr": rows[0]["lr"], "n": len(rows)}
        for key in SPLITS:
            vals = [r[key] for r in rows if key in r]
            if len(vals) == len(rows):
                rec[key], rec[key + "_lo"], rec[key + "_hi"] = statistics.mean(vals), min(vals), max(vals)
        out.append(rec)
    return out


def table(records: list[dict]) -> str:
    rows = ["| epoch | lr | train acc % | val acc % | test acc % |", "|---|---|---|---|---|"]
    for r in records:
        accs = " | ".join(f"{100 * r[k]:.2f}" if k in r else "-" for k in SPLITS)
        rows.append(f"| {r['epoch'] + 1} | {r['lr']:g} | {accs} |")
    return "\n".join(rows)


def plot(panels: dict[str, list[dict]], out: Path, ymin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, (name, records) in zip(axes.flat, panels.items()):
        x = [r["epoch"] + 1 for r in records]
        for key in SPLITS:
            if all(key in r for r in records):
                line, = ax.plot(x, [100 * r[key] for r in records], marker="o", ms=3, label=key.replace("_acc", ""))
                if all(key + "_lo" in r for r in records) and records[0]["n"] > 1:
                    ax.fill_between(x, [100 * r[key + "_lo"] for r in records],
                                    [100 * r[key + "_hi"] for r in records], color=line.get_color(), alpha=0.15)
        for prev, r in zip(records, records[1:]):  # LR drops, between the epochs they separate
            if r["lr"] < prev["lr"]:
                ax.axvline(r["epoch"] + 0.5, color="grey", lw=0.8, ls=":")
        n = records[0].get("n", 1)
        ax.set(title=name if n == 1 else f"{name} (mean of {n}; band: min-max)", xlabel="epoch (dotted: LR drop)",
               ylim=(ymin, 100.2))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("accuracy %")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="[NAME=]PATH: a run folder, its metrics.jsonl, or a folder of run folders")
    p.add_argument("--out", type=Path, help="PNG to write (none: no plot)")
    p.add_argument("--table", action="store_true", help="print a Markdown table per panel")
    p.add_argument("--ymin", type=float, default=90.0, help="lower end of the accuracy axis")
    args = p.parse_args(argv)
    panels = {}
    for arg in args.runs:
        name, sep, where = arg.rpartition("=")
        path = Path(where)
        name = name if sep else "/".join((path if path.suffix != ".jsonl" else path.parent).parts[-2:])
        runs = [r for r in runs_of(path) if r]
        if not runs:
            print(f"plot_curves.py: error: {where}: no per-epoch records (a run folder or a folder of them)",
                  file=sys.stderr)
            return 2
        panels[name] = runs[0] if len(runs) == 1 else mean_curve(runs)
    if args.table:
        for name, records in panels.items():
            print(f"{name} ({records[0].get('n', 1)} run(s), mean)\n\n{table(records)}\n")
    if args.out:
        plot(panels, args.out, args.ymin)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
