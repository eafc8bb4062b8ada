"""``dsr-tune report SWEEP``: the comparison table and figure of a sweep, from MLflow.

For every sparsity: the best search trial of each method (by the sweep's
metric) with its repeats on the other seeds, each paired baseline, and the
dense reference; test accuracy mean and std over seeds (sample std, 0 for
one seed), non-zero parameters, epochs. The figure plots accuracy against
non-zero parameters, one line per method (the paper's figure); it is saved
as PNG beside the table and logged to the sweep's parent run.

The same report can be built from a sweep folder's run folders
(:func:`load_local`) when MLflow is out of reach.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .. import runfolder

ROLE_ORDER = {"search": 0, "seed": 0, "baseline": 1, "dense": 2}


@dataclass
class RunRow:
    """One run of a sweep, as MLflow (or its run folder) holds it."""

    key: str
    role: str                 # search | seed | baseline | dense
    method: str
    sparsity: float | None
    seed: int
    status: str
    metrics: dict             # final values: test_acc, nonzero_params, epochs_done, ...
    epochs: int
    repeat_of: str | None = None
    baseline_for: str | None = None


@dataclass
class Line:
    """One row of the table: a method at a sparsity over seeds."""

    method: str
    sparsity: float | None
    acc: list[float]
    nonzero: float
    epochs: int
    note: str = ""

    @property
    def mean(self) -> float:
        return statistics.mean(self.acc)

    @property
    def std(self) -> float:
        return statistics.stdev(self.acc) if len(self.acc) > 1 else 0.0


@dataclass
class Report:
    sweep_id: str
    metric: str
    mode: str
    sections: dict[float, list[Line]]          # sparsity -> lines
    pareto: list[RunRow] = field(default_factory=list)
    searched: int = 0

    def text(self) -> str:
        out = [f"sweep {self.sweep_id}: {self.searched} search trials (best by {self.metric}, {self.mode})"]
        for s, lines in sorted(self.sections.items()):
            out += ["", f"sparsity {s:g}",
                    f"  {'method':<16}{'seeds':>5}  {'test acc %':>15}  {'non-zero params':>15}  {'epochs':>6}  note"]
            for ln in lines:
                acc = f"{100 * ln.mean:.2f} ± {100 * ln.std:.2f}"
                out.append(f"  {ln.method:<16}{len(ln.acc):>5}  {acc:>15}  {round(ln.nonzero):>15,}  "
                           f"{ln.epochs:>6}  {ln.note}")
        if self.pareto:
            out += ["", "Pareto front (test accuracy vs non-zero params):"]
            out += [f"  {r.key:<24} {100 * r.metrics['test_acc']:6.2f}%  {int(r.metrics['nonzero_params']):>12,}"
                    for r in self.pareto]
        return "\n".join(out) + "\n"


def best_per_cell(rows: list[RunRow], metric: str, mode: str) -> dict[tuple[str, float], RunRow]:
    """``{(method, sparsity): best search run}``: finished runs before early-stopped
    ones, then more epochs, then the metric; ties go to the smaller key, so
    the choice does not depend on the order runs are listed in."""
    sign = 1 if mode == "max" else -1
    best: dict[tuple[str, float], RunRow] = {}

    def score(r: RunRow):
        return r.status == "FINISHED", r.metrics.get("epochs_done", 0), sign * r.metrics[metric]

    for r in sorted(rows, key=lambda r: r.key):
        if r.role != "search" or metric not in r.metrics:
            continue
        cell = (r.method, r.sparsity)
        if cell not in best or score(r) > score(best[cell]):
            best[cell] = r
    return best


def chosen(rows: list[RunRow], metric: str, mode: str) -> dict[tuple[str, float], RunRow]:
    """The best search run per (method, sparsity) as the paired phase chose it
    (its repeats and baselines name it), else by :func:`best_per_cell`."""
    best = best_per_cell(rows, metric, mode)
    by_key = {r.key: r for r in rows if r.role == "search"}
    for r in rows:
        ref = by_key.get(r.repeat_of or r.baseline_for or "")
        if ref is not None and (r.role == "seed" or ref.method == "dsr"):
            best[(ref.method, ref.sparsity)] = ref
    return best


def pareto_front(rows: list[RunRow]) -> list[RunRow]:
    """Finished search runs no other one beats on both test_acc (higher) and
    nonzero_params (lower); runs stopped early are left out."""
    pts = [r for r in rows if r.role == "search" and r.status == "FINISHED"
           and {"test_acc", "nonzero_params"} <= set(r.metrics)]
    front = [r for r in pts if not any(
        o.metrics["test_acc"] >= r.metrics["test_acc"] and o.metrics["nonzero_params"] <= r.metrics["nonzero_params"]
        and (o.metrics["test_acc"] > r.metrics["test_acc"] or o.metrics["nonzero_params"] < r.metrics["nonzero_params"])
        for o in pts)]
    return sorted(front, key=lambda r: r.metrics["nonzero_params"])


def _epochs(r: RunRow) -> int:
    """Epochs trained: the configured ones, or fewer for a run stopped early."""
    return r.epochs if r.status == "FINISHED" else int(r.metrics.get("epochs_done") or r.epochs)


def _line(method: str, sparsity, runs: list[RunRow], note: str = "") -> Line:
    runs = [r for r in runs if "test_acc" in r.metrics]
    stopped = [r for r in runs if r.status != "FINISHED"]
    if stopped:
        note += f" ({len(stopped)} stopped early)"
    return Line(method, sparsity, [r.metrics["test_acc"] for r in runs],
                statistics.mean(r.metrics.get("nonzero_params", 0) for r in runs), max(_epochs(r) for r in runs), note)


def summarize(sweep_id: str, rows: list[RunRow], metric: str = "test_acc", mode: str = "max",
              pareto: bool = False) -> Report:
    """The report's numbers from the runs (pure: tests feed it directly)."""
    best = chosen(rows, metric, mode)
    dense = [r for r in rows if r.role == "dense" and "test_acc" in r.metrics]
    sections: dict[float, list[Line]] = {}
    for (method, s), b in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        repeats = [r for r in rows if r.role == "seed" and r.repeat_of == b.key]
        tried = sum(r.role == "search" and r.method == method and r.sparsity == s for r in rows)
        sections.setdefault(s, []).append(_line(method, s, [b, *repeats], f"best of {tried}: {b.key}"))
    for s in sections:
        baselines: dict[str, list[RunRow]] = {}
        for r in rows:
            if r.role == "baseline" and r.sparsity == s:
                baselines.setdefault(r.method, []).append(r)
        sections[s] += [_line(m, s, runs) for m, runs in sorted(baselines.items())
                        if any("test_acc" in r.metrics for r in runs)]
        if dense:
            sections[s].append(_line("dense", None, dense))
    return Report(sweep_id, metric, mode, sections, pareto_front(rows) if pareto else [],
                  searched=sum(r.role == "search" for r in rows))


def plot(report: Report, out: str | Path) -> Path:
    """Accuracy against non-zero parameters, one line per method; dense as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[Line]] = {}
    dense = None
    for lines in report.sections.values():
        for ln in lines:
            if ln.method == "dense":
                dense = ln
            else:
                by_method.setdefault(ln.method, []).append(ln)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method, lines in sorted(by_method.items()):
        lines = sorted(lines, key=lambda ln: ln.nonzero)
        ax.errorbar([ln.nonzero for ln in lines], [100 * ln.mean for ln in lines],
                    yerr=[100 * ln.std for ln in lines], marker="o", capsize=3, label=method)
    if dense is not None:
        ax.axhline(100 * dense.mean, color="k", ls="--", lw=1, label=f"dense ({round(dense.nonzero):,} params)")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report.sweep_id}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


# ---------------------------------------------------------------- loading runs


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def row_from_mlflow(run) -> RunRow:
    tags, params, metrics = run.data.tags, run.data.params, dict(run.data.metrics)
    metrics["epochs_done"] = int(metrics.get("epoch", 0))
    key = tags.get("dsr_tune.run", run.info.run_id).split("/", 1)[-1]
    return RunRow(key=key, role=tags.get("role", ""), method=tags.get("method", "?"),
                  sparsity=_float(tags.get("sparsity")), seed=int(tags.get("seed", 0)), status=run.info.status,
                  metrics=metrics, epochs=int(_float(params.get("train.epochs")) or 0),
                  repeat_of=tags.get("repeat_of"), baseline_for=tags.get("baseline_for"))


def load_mlflow(client, sweep_id: str) -> tuple[list[RunRow], object]:
    """The child runs and the parent run of ``sweep_id`` (searching every experiment)."""
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = client.search_runs(exps, filter_string=f"tags.sweep = '{sweep_id}'", max_results=50000)
    parent = next((r for r in runs if r.data.tags.get("role") == "parent"), None)
    return [row_from_mlflow(r) for r in runs if r.data.tags.get("role") != "parent"], parent


def latest_sweep(client, name: str) -> str | None:
    """The newest sweep id of experiment ``name`` (or the id itself if it names a sweep)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    return parents[0].data.tags.get("sweep") if parents else None


def load_local(sweep_dir: str | Path) -> list[RunRow]:
    """The same rows from a sweep folder's run folders (no MLflow)."""
    import yaml

    from ..tracking.runs import last_epoch
    from ..tracking.sync import run_folders
    from ..tracking.tracker import read_run_file

    rows = []
    for run_dir in run_folders(sweep_dir):
        info, last = read_run_file(run_dir) or {}, last_epoch(run_dir)
        if last is None or "key" not in info:
            continue
        tags = info.get("tags", {})
        cfg = yaml.safe_load((run_dir / runfolder.CONFIG).read_text())
        rows.append(RunRow(key=info["key"], role=tags.get("role", ""), method=tags.get("method", "?"),
                           sparsity=_float(tags.get("sparsity")), seed=int(tags.get("seed", 0)),
                           status=info.get("status", ""), metrics=last, epochs=cfg["train"]["epochs"],
                           repeat_of=tags.get("repeat_of"), baseline_for=tags.get("baseline_for")))
    return rows


# ---------------------------------------------------------------- the command


def _settings(params: dict) -> tuple[str, str, bool]:
    return (params.get("search.metric", "test_acc"), params.get("search.mode", "max"),
            str(params.get("search.pareto", "False")).lower() == "true")


def build(sweep: str, uri: str | None = None, out_dir: str | Path | None = None) -> tuple[Report, dict[str, Path], str]:
    """The report of ``sweep`` (a sweep folder, a sweep id, or an experiment
    name: its newest sweep). Writes report.md and report.png (into the sweep
    folder, else ``out_dir`` or the working directory) and logs both to the
    parent run. Returns the report, the files and where the numbers came from."""
    from ..tracking import store

    folder = Path(sweep) if (Path(sweep) / "sweep.json").is_file() else None
    metric, mode, pareto = "test_acc", "max", False
    meta = json.loads((folder / "sweep.json").read_text()) if folder else None
    if meta:
        tgt = store.resolve(uri) if uri else store.with_credentials(store.Target(**meta["tracker"]["target"]))
        sweep_id = meta["sweep_id"]
        s = meta["space"].get("search") or {}
        metric, mode, pareto = s.get("metric", "test_acc"), s.get("mode", "max"), bool(s.get("pareto", False))
    else:
        tgt, sweep_id = store.resolve(uri), sweep
    rows, parent, source = [], None, store.redact(tgt.uri)
    error = store.probe(tgt)
    try:
        if error:
            raise RuntimeError(error)
        client = store.client(tgt)
        if not meta:
            sweep_id = sweep if client.search_runs([e.experiment_id for e in client.search_experiments()],
                                                   filter_string=f"tags.sweep = '{sweep}'", max_results=1) \
                else (latest_sweep(client, sweep) or sweep)
        rows, parent = load_mlflow(client, sweep_id)
        if parent is not None and not meta:
            metric, mode, pareto = _settings(parent.data.params)
    except Exception as exc:  # noqa: BLE001 (MLflow out of reach: the run folders hold the same records)
        if folder is None:
            raise
        rows, why = [], f"MLflow: {store.redact(str(exc).splitlines()[0])}"
    else:  # MLflow answers; it may still hold nothing of this sweep (another store, or it ran offline)
        why = f"{source} holds no run of {sweep_id}"
    if not rows and folder is not None:
        rows, source = load_local(folder), f"the run folders in {folder} ({why})"
    if not rows:
        raise LookupError(f"no runs of sweep {sweep!r} in {source}")
    report = summarize(sweep_id, rows, metric, mode, pareto)
    where = folder or Path(out_dir or ".")
    stem = "report" if folder else f"report-{sweep_id}"
    files = {"md": where / f"{stem}.md", "png": where / f"{stem}.png"}
    files["md"].write_text(report.text())
    plot(report, files["png"])
    if parent is not None:
        try:
            for path in files.values():
                client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
        except Exception:  # noqa: BLE001 (the files are on disk anyway)
            pass
    return report, files, source
