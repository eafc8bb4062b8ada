"""Per-epoch learning curves from run folders' metrics.jsonl: a PNG, and a table.

    .venv/bin/python scripts/plot_curves.py runs/dense_seed0 --out docs/mnist5k_dense_curve.png --table

Each argument is a run folder (or its metrics.jsonl). The plot has one panel per
run, with train_acc, val_acc and test_acc (in %) against the 1-based epoch; the
epochs where the LR dropped are marked. --table prints each run's per-epoch
numbers as a Markdown table. Only the per-epoch records ("kind": "epoch") are
read; the reallocation records in the same file are passed over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPLITS = ("train_acc", "val_acc", "test_acc")


def epochs(path: str | Path) -> list[dict]:
    """The per-epoch records of one run, in epoch order."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in records if r.get("kind") == "epoch"), key=lambda r: r["epoch"])


def table(records: list[dict]) -> str:
    rows = ["| epoch | lr | train acc % | val acc % | test acc % |", "|---|---|---|---|---|"]
    for r in records:
        accs = " | ".join(f"{100 * r[k]:.2f}" if k in r else "-" for k in SPLITS)
        rows.append(f"| {r['epoch'] + 1} | {r['lr']:g} | {accs} |")
    return "\n".join(rows)


def plot(runs: dict[str, list[dict]], out: Path, ymin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False, sharey=True)
    for ax, (name, records) in zip(axes[0], runs.items()):
        x = [r["epoch"] + 1 for r in records]
        for key in SPLITS:
            if all(key in r for r in records):
                ax.plot(x, [100 * r[key] for r in records], marker="o", ms=3, label=key.replace("_acc", ""))
        for prev, r in zip(records, records[1:]):  # LR drops, between the epochs they separate
            if r["lr"] < prev["lr"]:
                ax.axvline(r["epoch"] + 0.5, color="grey", lw=0.8, ls=":")
        ax.set(title=name, xlabel="epoch (dotted: LR drop)", ylim=(ymin, 100.2), xticks=x)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy %")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files")
    p.add_argument("--out", type=Path, help="PNG to write (none: no plot)")
    p.add_argument("--table", action="store_true", help="print a Markdown table per run")
    p.add_argument("--ymin", type=float, default=90.0, help="lower end of the accuracy axis")
    args = p.parse_args(argv)
    runs = {}
    for arg in args.runs:
        path = Path(arg)
        name = (path if path.is_dir() else path.parent).name
        runs[name] = epochs(path)
        if not runs[name]:
            print(f"plot_curves.py: error: {arg}: no per-epoch records", file=sys.stderr)
            return 2
    if args.table:
        for name, records in runs.items():
            print(f"{name}\n\n{table(records)}\n")
    if args.out:
        plot(runs, args.out, args.ymin)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
