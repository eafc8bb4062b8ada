"""``dsr-tune compare``: every row of the paper's comparison, run one after another.

For each sparsity, method and seed it derives the run's config from the DSR
config (:func:`dsr_tune.baselines.baseline_config`: static baselines train
``epoch_factor`` x as long), trains it in its own folder under ``out_dir``

    out_dir/<method>/s<sparsity>/seed<k>/   (dense: out_dir/dense/seed<k>/)

and writes ``result.json`` there when it finishes. Runs that a row needs come
first (the dense run GMP prunes, the DSR run the ablations take masks from).
A second call with the same arguments skips finished runs and resumes a run
cut off mid-way from its checkpoint, so an interrupted comparison continues
where it stopped. Finally it writes ``results.csv`` and ``results.md``: method,
sparsity, non-zero parameters, epochs (GMP's include the dense training it
prunes), test accuracy mean and std over seeds.

No Ray: the sweep spreads the same runs over a cluster.
"""

from __future__ import annotations

import csv
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import config as C
from .. import runfolder
from . import plan as P

log = logging.getLogger("dsr_tune")

class CompareError(RuntimeError):
    """The output folder holds runs that do not belong to this comparison."""


def default_methods() -> list[str]:
    """Every method row (the ablations only on request: ``--methods ablations``)."""
    return P.default_labels()


def _final_record(folder: Path) -> dict:
    epochs = runfolder.epochs(folder)
    if not epochs:
        raise RuntimeError(f"{folder} has no epoch records")
    return epochs[-1]


def status(folder: Path, rcfg: C.Config) -> str:
    """"new", "started" (a checkpoint to resume) or "finished" (result.json)."""
    saved = folder / runfolder.CONFIG
    if not (saved.exists() and runfolder.has_run(folder)):
        return "new"
    # compared as configs, not text: a key added to the code since keeps its default
    if C.load(saved).to_dict() != rcfg.to_dict():
        raise CompareError(f"{folder} holds a run with another config; use a new --output folder "
                         "(or delete that folder to redo the run)")
    return "finished" if (folder / runfolder.RESULT).exists() else "started"


def execute(run: P.PlannedRun, folder: Path, rcfg: C.Config, resume: bool, parent: Path | None) -> dict:
    """Train ``run`` (continuing its checkpoint if ``resume``); write and return its result."""
    from ..train import train

    t0 = time.perf_counter()
    train(rcfg, folder, resume=resume, progress=False)
    last = _final_record(folder)
    epochs = rcfg.train.epochs
    if run.row.needs == "dense":  # GMP's count includes the dense training it starts from
        epochs += C.load(parent / runfolder.CONFIG).train.epochs
    result = {"method": run.row.label, "sparsity": run.sparsity, "seed": run.seed,
              "epochs": epochs, "test_acc": last["test_acc"],
              "nonzero_params": last["nonzero_params"], "total_params": last["total_params"],
              "time_s": round(time.perf_counter() - t0, 1)}
    runfolder.write_json(folder / runfolder.RESULT, result)
    return result


def summarize(results: Sequence[dict], methods: Sequence[str], sparsities: Sequence[float]) -> list[dict]:
    """One row per (method, sparsity): mean and sample std (n-1) of test accuracy over seeds."""
    rows = []
    cells = [("dense", None)] if "dense" in methods else []
    cells += [(m, s) for s in sparsities for m in methods if m != "dense"]
    for m, s in cells:
        got = [r for r in results if r["method"] == m and r["sparsity"] == s]
        if not got:
            continue
        acc = [r["test_acc"] for r in got]
        rows.append({"method": m, "sparsity": 0.0 if s is None else s,
                     "nonzero_params": round(statistics.mean(r["nonzero_params"] for r in got)),
                     "epochs": got[0]["epochs"], "acc_mean": statistics.mean(acc),
                     "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "seeds": len(acc)})
    return rows


def markdown(rows: Sequence[dict]) -> str:
    lines = ["| method | sparsity | non-zero params | epochs | test acc % (mean) | std | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['sparsity']:g} | {r['nonzero_params']:,} | {r['epochs']} | "
                     f"{100 * r['acc_mean']:.2f} | {100 * r['acc_std']:.2f} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "sparsity", "nonzero_params", "epochs", "acc_mean", "acc_std", "seeds"])
        w.writeheader()
        w.writerows(rows)
    md_path.write_text(markdown(rows))
    return csv_path, md_path


def compare(cfg: C.Config, out_dir: str | Path, *, sparsities: Sequence[float], seeds: int = 3,
            methods: Sequence[str] | None = None, factor: float | None = None,
            progress: Callable[[str], None] = log.info) -> list[dict]:
    """Run (or finish) the whole comparison and write the tables; returns the rows.

    seeds: how many; they are ``cfg.train.seed + i``. factor: the static
    baselines' epoch factor (default ``cfg.sparsity.epoch_factor``).
    """
    out_dir = Path(out_dir).resolve()  # run configs name their source runs by absolute path
    if factor is not None:
        cfg = C.replace(cfg, **{"sparsity.epoch_factor": factor})
    rows = P.rows(methods or default_methods(), cfg.sparsity.epoch_factor, cfg.train.epochs)
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    runs = P.plan(rows, sparsities, seed_list)
    folder_of = lambda key: out_dir / key  # noqa: E731
    for run in runs:  # refuse bad configs before any training (dependent ones are checked when due)
        P.config_for(cfg, run, folder_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    runfolder.atomic_write(out_dir / "compare.yaml", C.dump(cfg))
    labels = [r.label for r in rows]
    results = []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.name()}"
        folder = folder_of(run.key)
        rcfg = P.config_for(cfg, run, folder_of)
        state = status(folder, rcfg)
        if state == "finished":
            result = runfolder.read_json(folder / runfolder.RESULT)
        else:
            progress(f"{head}: {'resuming' if state == 'started' else 'training'} ({rcfg.train.epochs} epochs) ...")
            result = execute(run, folder, rcfg, state == "started", folder_of(run.needs) if run.needs else None)
        results.append(result)
        how = "finished before, skipped" if state == "finished" else f"{result['time_s']:.1f} s"
        progress(f"{head}: test {100 * result['test_acc']:.2f}%, {result['nonzero_params']:,} non-zero, "
                 f"{result['epochs']} epochs ({how})")
    rows_out = summarize(results, labels, sparsities)
    write_tables(rows_out, out_dir)
    return rows_out
