"""What explains a result, from the run folders: how the dynamic methods moved
their budget. One figure per sparsity (``report_dynamics_s<sparsity>.png``
beside the report), from the first report seed of every dynamic row: DSR's
threshold H and pruned count K against Np, the budget turned over per
reallocation, and per-layer density over training on one scale (the paper:
larger and deeper layers end up sparser). Every line is named in a legend
that sits beside its panel, never over a curve, and no panel is left empty.
The same numbers are in MLflow as ``realloc/*`` and ``density/*``.
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
        cols = min(4, n)  # the density panels wrap, four to a row
        rows = -(-n // cols)
        fig = plt.figure(figsize=(max(9.0, 4.2 * cols), 4.2 + 3.6 * rows), dpi=100, layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, 3.6 * rows])
        ax_h, ax_k = top.subplots(1, 2)
        _dsr_panels(ax_h, ax_k, runs)
        grid = bottom.subplots(rows, cols, squeeze=False, sharey=True)
        panels = [ax for row in grid for ax in row]
        for ax in panels[n:]:
            ax.remove()  # no empty panel: the last row keeps only the panels it has
        for i, (ax, (label, folder)) in enumerate(zip(panels, runs.items())):
            _density_panel(ax, label, folder, first=i % cols == 0)
        _layer_key(bottom, panels[:n], runs)
        fig.suptitle(f"{table.title}: how the budget moved at sparsity {s:g} (first report seed of each row)",
                     fontsize=10)
        out = sweep_dir / f"report_dynamics_{sparsity_tag(s)}.png"
        runfolder.save_figure(fig, out)
        plt.close(fig)
        written.append(out)
    return written


def _below(ax, handles=None, labels=None, ncol: int = 2) -> None:
    """The panel's legend under its axis label, where it covers no curve."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=ncol,
                  frameon=False)


def _dsr_panels(ax_h, ax_k, runs: dict[str, Path]) -> None:
    k_ax = None
    for label, folder in runs.items():
        reallocs = [r for r in runfolder.read_records(folder) if r.get("kind") == REALLOC]
        steps = [r["step"] for r in reallocs]
        share = [turnover(r) for r in reallocs]
        ax_k.plot(steps, share, lw=1, label=f"{label}: pruned / budget")
        if label == REFERENCE and reallocs and "threshold" in reallocs[0]:  # the reference row only
            cfg = C.load(folder / runfolder.CONFIG)
            ax_h.semilogy(steps, [r["threshold"] for r in reallocs], color="C0", lw=1.2, label="H, the threshold")
            np_, delta = cfg.sparsity.dsr.target_pruned, cfg.sparsity.dsr.delta
            k_ax = ax_h.twinx()
            k_ax.plot(steps, [r["pruned"] for r in reallocs], color="C1", lw=0.8, alpha=0.8, label="K, pruned")
            k_ax.axhspan(np_ * (1 - delta), np_ * (1 + delta), color="C1", alpha=0.15,
                         label=f"Np = {np_:,} (band: +-{delta:.0%})")
            k_ax.set_ylabel("pruned count K", color="C1")
    ax_h.set_title("DSR: threshold H (log) and K against Np", fontsize=9)
    ax_h.set_xlabel("iteration")
    ax_h.set_ylabel("threshold H", color="C0")
    ax_k.set_title("budget turned over per reallocation", fontsize=9)
    ax_k.set_xlabel("iteration")
    ax_k.set_yscale("log")
    ax_k.set_ylabel("pruned / budget")
    h, lab = ax_h.get_legend_handles_labels()
    if k_ax is not None:  # H on its axis, K and the band on the twin: one legend for the three
        h2, lab2 = k_ax.get_legend_handles_labels()
        h, lab = h + h2, lab + lab2
    _below(ax_h, h, lab, ncol=3)
    _below(ax_k)
    for ax in (ax_h, ax_k):
        ax.grid(alpha=0.3)
    if not h:
        ax_h.text(0.5, 0.5, "no DSR row at this sparsity", ha="center", va="center", transform=ax_h.transAxes)


def _density_panel(ax, label: str, folder: Path, first: bool) -> None:
    epochs = [r for r in runfolder.read_records(folder) if r.get("kind") == EPOCH and r.get("density")]
    from matplotlib.ticker import MaxNLocator

    ax.set_title(f"{label}: per-layer density", fontsize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if first:  # the row's panels share the scale
        ax.set_ylabel("active / all weights")
    ax.grid(alpha=0.3)
    if not epochs:
        ax.text(0.5, 0.5, "no density recorded", ha="center", va="center", transform=ax.transAxes)
        return
    layers = list(epochs[-1]["density"])
    cmap = _layer_colours(len(layers))
    for i, layer in enumerate(layers):  # earlier layers dark, later ones light
        ax.plot([r["epoch"] + 1 for r in epochs], [r["density"].get(layer) for r in epochs], color=cmap(i), lw=1,
                label=layer)


def _layer_colours(n: int):
    import matplotlib

    return matplotlib.colormaps["viridis"].resampled(max(2, n))


def _layer_key(fig, panels, runs: dict[str, Path]) -> None:
    """Which line is which layer, once for all density panels (they share the model): a
    legend below them, or, past 12 layers, a colour bar from the first layer to the last."""
    import matplotlib

    handles, labels = max((ax.get_legend_handles_labels() for ax in panels), key=lambda hl: len(hl[1]))
    if not labels:
        return
    if len(labels) <= 12:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
        return
    cmap = _layer_colours(len(labels))
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(1, len(labels)), cmap), ax=panels,
                       location="bottom", shrink=0.6, aspect=40)
    bar.set_label(f"layer, in the model's order: 1 = {labels[0]} ... {len(labels)} = {labels[-1]}", fontsize=7)
