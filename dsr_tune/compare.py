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
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config as C
from . import methods_table
from .baselines import ABLATIONS, baseline_config, dependencies, parse_label

log = logging.getLogger("dsr_tune")

RESULT = "result.json"


class CompareError(RuntimeError):
    """The output folder holds runs that do not belong to this comparison."""


def default_methods() -> list[str]:
    """Every method row (the ablations only on request: ``--methods ablations``)."""
    return list(methods_table.labels(default=True))


def expand_methods(methods: Sequence[str], epochs: int) -> list[str]:
    """``ablations`` -> the workshop paper's set (DSR stopped at a quarter and
    at half of the epochs); labels are checked, duplicates dropped."""
    stops = [f"dsr_stop:{max(1, epochs // 4)}", f"dsr_stop:{max(1, epochs // 2)}"]
    out: list[str] = []
    for m in methods:
        items = [*ABLATIONS, *stops] if m == "ablations" else [m]
        for item in items:
            parse_label(item)
            if item not in out:
                out.append(item)
    return out


@dataclass
class Run:
    label: str
    sparsity: float | None  # None: the dense run, the same for every sparsity
    seed: int
    folder: Path
    needs: Path | None = None  # the folder of the run this one starts from

    def name(self) -> str:
        s = "" if self.sparsity is None else f" s={self.sparsity:g}"
        return f"{self.label}{s} seed {self.seed}"


def plan(out_dir: Path, methods: Sequence[str], sparsities: Sequence[float], seeds: Sequence[int]) -> list[Run]:
    """Every run, each after the runs it needs."""
    out_dir = Path(out_dir)
    dense = {k: Run("dense", None, k, out_dir / "dense" / f"seed{k}") for k in seeds}
    dsr = {(s, k): Run("dsr", s, k, out_dir / "dsr" / f"s{s:g}" / f"seed{k}") for s in sparsities for k in seeds}
    runs: list[Run] = []
    needs = {dependencies(m) for m in methods}
    if "dense" in methods or "dense" in needs:
        runs += dense.values()
    if "dsr" in methods or "dsr" in needs:
        runs += dsr.values()
    for m in methods:
        if m in ("dense", "dsr"):
            continue
        dep = dependencies(m)
        for s in sparsities:
            for k in seeds:
                before = dense[k].folder if dep == "dense" else dsr[(s, k)].folder if dep == "dsr" else None
                runs.append(Run(m, s, k, out_dir / m.replace(":", "_") / f"s{s:g}" / f"seed{k}", before))
    return runs


def run_config(cfg: C.Config, run: Run, factor: float | None) -> C.Config:
    """The derived config of one run (its dependency must exist by then)."""
    data = cfg.to_dict()
    data["train"]["seed"] = run.seed
    if run.sparsity is not None:
        data["sparsity"]["sparsity"] = run.sparsity
    base = C.from_dict(data)
    dep = dependencies(run.label)
    return baseline_config(base, run.label, factor, dsr_run=run.needs if dep == "dsr" else None,
                           dense_run=run.needs if dep == "dense" else None)


def _final_record(folder: Path) -> dict:
    from .train.metrics import read_records

    epochs = [r for r in read_records(folder / "metrics.jsonl") if r.get("kind") == "epoch"]
    if not epochs:
        raise RuntimeError(f"{folder} has no epoch records")
    return epochs[-1]


def status(run: Run, rcfg: C.Config) -> str:
    """"new", "started" (a checkpoint to resume) or "finished" (result.json)."""
    folder = run.folder
    saved = folder / "config.yaml"
    if not (saved.exists() and (folder / "checkpoint.pt").exists()):
        return "new"
    # compared as configs, not text: a key added to the code since keeps its default
    if C.load(saved).to_dict() != rcfg.to_dict():
        raise CompareError(f"{folder} holds a run with another config; use a new --output folder "
                         "(or delete that folder to redo the run)")
    return "finished" if (folder / RESULT).exists() else "started"


def execute(run: Run, rcfg: C.Config, resume: bool) -> dict:
    """Train ``run`` (continuing its checkpoint if ``resume``); write and return its result."""
    from .train import train

    t0 = time.perf_counter()
    train(rcfg, run.folder, resume=resume, progress=False)
    last = _final_record(run.folder)
    epochs = rcfg.train.epochs
    if dependencies(run.label) == "dense":  # GMP's count includes the dense training it starts from
        epochs += C.load(run.needs / "config.yaml").train.epochs
    result = {"method": run.label, "sparsity": run.sparsity, "seed": run.seed,
              "epochs": epochs, "test_acc": last["test_acc"],
              "nonzero_params": last["nonzero_params"], "total_params": last["total_params"],
              "time_s": round(time.perf_counter() - t0, 1)}
    (run.folder / RESULT).write_text(json.dumps(result, indent=1) + "\n")
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
    methods = expand_methods(methods or default_methods(), cfg.train.epochs)
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    runs = plan(out_dir, methods, sparsities, seed_list)
    for run in runs:  # refuse bad configs before any training (dependent ones are checked when due)
        if run.needs is None:
            run_config(cfg, run, factor)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.yaml").write_text(C.dump(cfg))
    results = []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.name()}"
        rcfg = run_config(cfg, run, factor)
        state = status(run, rcfg)
        if state == "finished":
            result = json.loads((run.folder / RESULT).read_text())
        else:
            progress(f"{head}: {'resuming' if state == 'started' else 'training'} ({rcfg.train.epochs} epochs) ...")
            result = execute(run, rcfg, resume=state == "started")
        results.append(result)
        how = "finished before, skipped" if state == "finished" else f"{result['time_s']:.1f} s"
        progress(f"{head}: test {100 * result['test_acc']:.2f}%, {result['nonzero_params']:,} non-zero, "
                 f"{result['epochs']} epochs ({how})")
    rows = summarize(results, methods, sparsities)
    write_tables(rows, out_dir)
    return rows
