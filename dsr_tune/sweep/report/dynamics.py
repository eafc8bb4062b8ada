"""What explains a result, from the run folders: how the dynamic methods moved
their budget. One figure per sparsity (``report_dynamics_s<sparsity>.png``
beside the report), from the first report seed of every dynamic row: DSR's
threshold H and pruned count K against Np, the budget turned over per
reallocation, and per-layer density over training on one scale (the paper:
larger and deeper layers end up sparser). The same numbers are in MLflow as
``realloc/*`` and ``density/*``.
"""

from __future__ import annotations

from pathlib import Path

from ... import config as C
from ... import methods, runfolder
from ...records import EPOCH, REALLOC, turnover
from ..terms import REFERENCE, paired_key, sparsity_tag
from .stats import Table


def _runs(sweep_dir: Path, table: Table, s: float) -> dict[str, Path]:
    """``{row label: run folder}``: the first report seed of each dynamic row at ``s``."""
    out = {}
    for ln in table.sections.get(s, []):
        entry = methods.REGISTRY.get(ln.method.partition(":")[0].removesuffix("_1x").removesuffix("_2x"))
        if entry is None or methods.get(entry.trains_as).kind != "dynamic" or not ln.by_seed:
            continue
        seed = sorted(ln.by_seed)[0]
        folder = sweep_dir / runfolder.RUNS / paired_key(ln.method, s, seed)
        if (folder / runfolder.METRICS).exists():
            out[ln.method] = folder
    return out


def plot(sweep_dir: str | Path, table: Table) -> list[Path]:
    """The figures of every sparsity with dynamic rows; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir, written = Path(sweep_dir), []
    for s in sorted(table.sections):
        runs = _runs(sweep_dir, table, s)
        if not runs:
            continue
        n = len(runs)
        cols = min(4, max(2, n))  # the density panels wrap, four to a row
        rows = 1 + -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=100, squeeze=False)
        _dsr_panels(axes[0][0], axes[0][1], runs)
        for ax in axes[0][2:]:
            ax.axis("off")
        density_axes = [ax for row in axes[1:] for ax in row]
        for ax, (label, folder) in zip(density_axes, runs.items()):
            ax.sharey(density_axes[0])  # one scale: where each method puts its budget, side by side
            _density_panel(ax, label, folder)
        for ax in density_axes[n:]:
            ax.axis("off")
        fig.suptitle(f"{table.title}: how the budget moved at sparsity {s:g} (first report seed of each row)",
                     fontsize=10)
        fig.tight_layout()
        out = sweep_dir / f"report_dynamics_{sparsity_tag(s)}.png"
        runfolder.save_figure(fig, out)
        plt.close(fig)
        written.append(out)
    return written


def _dsr_panels(ax_h, ax_k, runs: dict[str, Path]) -> None:
    for label, folder in runs.items():
        reallocs = [r for r in runfolder.read_records(folder) if r.get("kind") == REALLOC]
        steps = [r["step"] for r in reallocs]
        share = [turnover(r) for r in reallocs]
        ax_k.plot(steps, share, lw=1, label=f"{label}: pruned / budget")
        if label == REFERENCE and reallocs and "threshold" in reallocs[0]:  # the reference row only
            cfg = C.load(folder / runfolder.CONFIG)
            ax_h.semilogy(steps, [r["threshold"] for r in reallocs], color="C0", lw=1.2, label=f"{label}: H")
            np_, delta = cfg.sparsity.dsr.target_pruned, cfg.sparsity.dsr.delta
            k_ax = ax_h.twinx()
            k_ax.plot(steps, [r["pruned"] for r in reallocs], color="C1", lw=0.8, alpha=0.8, label="K")
            k_ax.axhspan(np_ * (1 - delta), np_ * (1 + delta), color="C1", alpha=0.15,
                         label=f"Np = {np_:,} (band: +-{delta:.0%})")
            k_ax.set_ylabel("pruned count K", color="C1")
            k_ax.legend(fontsize=7, loc="upper right")
    ax_h.set_title("DSR: threshold H (log) and K against Np", fontsize=9)
    ax_h.set_xlabel("iteration")
    ax_k.set_title("budget turned over per reallocation", fontsize=9)
    ax_k.set_xlabel("iteration")
    ax_k.set_yscale("log")
    ax_k.legend(fontsize=7)
    for ax in (ax_h, ax_k):
        ax.grid(alpha=0.3)


def _density_panel(ax, label: str, folder: Path) -> None:
    epochs = [r for r in runfolder.read_records(folder) if r.get("kind") == EPOCH and r.get("density")]
    if not epochs:
        ax.axis("off")
        return
    layers = list(epochs[-1]["density"])
    cmap = __import__("matplotlib.pyplot").pyplot.get_cmap("viridis", max(2, len(layers)))
    for i, layer in enumerate(layers):  # earlier layers dark, later ones light
        ax.plot([r["epoch"] + 1 for r in epochs], [r["density"].get(layer) for r in epochs], color=cmap(i), lw=1,
                label=layer if len(layers) <= 8 else None)
    ax.set_title(f"{label}: per-layer density", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("active / all weights")
    ax.grid(alpha=0.3)
    if len(layers) <= 8:
        ax.legend(fontsize=6)
