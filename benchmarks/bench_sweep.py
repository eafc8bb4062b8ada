"""Where a sweep's wall time goes: training steps vs Ray/Tune/MLflow overhead.

Runs the demo sweep (search_spaces/digits_demo.yaml, embedded MLflow, local
Ray) twice in fresh folders, one after the other on the same machine: with
single-worker trials trained in the Tune trial's own process (the default)
and through a Ray Train worker group per trial (``search.in_trial=false``,
the 0.1 path); or analyses a finished sweep folder. It prints per trial:

- start-up: from the trial function's first line to the first training step
  (imports, MLflow run, Ray Train controller and worker group, gloo, data,
  model), i.e. first epoch's end (its MLflow timestamp) minus its epoch time;
  the start of a new trial process (when Tune does not reuse one) comes
  before that line and is not counted; split (from rank 0's worker file) into
  the trial's own preparation, Ray Train's start (TorchTrainer.fit to the
  worker function) and the worker's set-up before its first step;
- training: the sum of the epoch times (training steps plus evaluation);
- per-epoch overhead: the rest of the time between the first and the last
  epoch end, per epoch (checkpoint, hand-over to Ray, Tune report, MLflow);
- tail: from the last epoch end to the trial's end (worker group shutdown,
  artifacts: export, density plot, upload);

then the share of the sweep's trial-time spent in training, and what the
fixed and per-epoch costs would be for a 2-minute trial.

    .venv/bin/python benchmarks/bench_sweep.py                   # both paths, side by side (several minutes)
    .venv/bin/python benchmarks/bench_sweep.py --sweep runs/sweeps/digits_demo   # analyse only
    .venv/bin/python benchmarks/bench_sweep.py search.samples=1 seeds=[1]        # a smaller demo
    .venv/bin/python benchmarks/bench_sweep.py --floor --sweep DIR   # + bare TorchTrainer trials alike

``--floor`` then runs bare trials (a TorchTrainer whose function only makes
an optimizer) at the demo's concurrency and resources: Ray Train V2's own
start-up on this machine, the part of the start-up the trainer cannot cut.

Not a timed test: the numbers depend on the machine and on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(overrides: list[str]) -> tuple[Path, float]:
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    cmd = [sys.executable, "-m", "dsr_tune.cli", "sweep", str(ROOT / "search_spaces" / "digits_demo.yaml"),
           *overrides, "--output", str(work / "sweep")]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"the sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(proc.stdout)
    return work / "sweep", wall


def trial_times(sweep: Path) -> list[dict]:
    """One dict per trial from its tracking.json, metrics.jsonl and MLflow timestamps."""
    from mlflow import MlflowClient

    from dsr_tune.runfolder import read_records

    meta = json.loads((sweep / "sweep.json").read_text())
    client = MlflowClient(meta["tracker"]["target"]["uri"])
    out = []
    for info_path in sorted((sweep / "runs").glob("**/tracking.json")):
        info = json.loads(info_path.read_text())
        if "started" not in info or not info.get("run_id"):
            continue
        epochs = [r for r in read_records(info_path.parent / "metrics.jsonl") if r.get("kind") == "epoch"]
        run = client.get_run(info["run_id"])
        ends = sorted(m.timestamp / 1000 for m in client.get_metric_history(info["run_id"], "epoch/test_acc"))
        if not epochs or len(ends) != len(epochs) or not run.info.end_time:
            continue
        train = sum(r["epoch_time"] for r in epochs)
        start_up = ends[0] - epochs[0]["epoch_time"] - info["started"]
        worker = _read_json(info_path.parent / "ray_workers" / "rank0.json")  # the last (re)start of rank 0
        split = {}
        if worker.get("launched") and worker.get("started") and epochs[0].get("epoch", 0) == 0:
            split = {"prep": worker["launched"] - info["started"], "ray_train": worker["started"] - worker["launched"],
                     "worker": ends[0] - epochs[0]["epoch_time"] - worker["started"]}
        between = (ends[-1] - ends[0]) - sum(r["epoch_time"] for r in epochs[1:])
        total = run.info.end_time / 1000 - info["started"]
        out.append({"key": info["key"], "epochs": len(epochs), "start_up": start_up, "train": train,
                    "per_epoch": between / max(1, len(epochs) - 1), "tail": run.info.end_time / 1000 - ends[-1],
                    "total": total, "epoch_time": statistics.mean(r["epoch_time"] for r in epochs), **split})
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def summarize(rows: list[dict], wall: float | None) -> str:
    lines = [f"{'trial':<28}{'epochs':>7}{'start-up s':>11}{'train s':>9}{'per-epoch overhead s':>22}"
             f"{'tail s':>8}{'total s':>9}{'train share':>12}"]
    for r in rows:
        lines.append(f"{r['key']:<28}{r['epochs']:>7}{r['start_up']:>11.1f}{r['train']:>9.1f}{r['per_epoch']:>22.2f}"
                     f"{r['tail']:>8.1f}{r['total']:>9.1f}{r['train'] / r['total']:>11.0%}")
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    train, total = sum(r["train"] for r in rows), sum(r["total"] for r in rows)
    lines += ["", f"{len(rows)} trials: start-up median {med('start_up'):.1f} s (max {max(r['start_up'] for r in rows):.1f} s), "
              f"per-epoch overhead median {med('per_epoch'):.2f} s, tail median {med('tail'):.1f} s",
              f"time inside training (steps + evaluation): {train:.0f} s of {total:.0f} s of trial time = {train / total:.0%}"]
    split = [r for r in rows if "ray_train" in r]
    if split:
        m = lambda k: statistics.median(r[k] for r in split)  # noqa: E731
        lines.append(f"start-up, medians over {len(split)} trials: trial function to TorchTrainer.fit {m('prep'):.1f} s "
                     f"(job, MLflow run started in a thread), fit to the worker function {m('ray_train'):.1f} s "
                     f"(Ray Train V2: controller, worker group, process group), worker function to first step "
                     f"{m('worker'):.1f} s (imports, data, model, optimizer, MLflow client)")
    if wall:
        lines.append(f"sweep wall time {wall:.0f} s (Ray start, MLflow store, both Tune phases, report)")
    fixed = med("start_up") + med("tail")
    for epoch_s in (med("epoch_time"), 10.0, 30.0):
        n = max(1, round(120 / epoch_s))
        over = fixed + n * med("per_epoch")
        lines.append(f"a 2-minute trial of {n} epochs x {epoch_s:.1f} s: overhead {over:.1f} s = {over / (120 + over):.0%} "
                     f"of its wall time (fixed {fixed:.1f} s + {n} x {med('per_epoch'):.2f} s)")
    return "\n".join(lines)


def side_by_side(results: dict[str, tuple[list[dict], float]]) -> str:
    """The two paths in one table, measured one after the other in this run."""
    lines = [f"{'':<34}" + "".join(f"{label:>26}" for label in results)]

    def row(name: str, fn) -> None:
        lines.append(f"{name:<34}" + "".join(f"{fn(rows, wall):>26}" for rows, wall in results.values()))

    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    row("sweep wall time", lambda rows, wall: f"{wall:.0f} s")
    row("trials", lambda rows, wall: str(len(rows)))
    row("trial start-up, median (max)", lambda rows, wall: f"{med(rows, 'start_up'):.1f} s "
        f"({max(r['start_up'] for r in rows):.1f} s)")
    row("per-epoch overhead, median", lambda rows, wall: f"{med(rows, 'per_epoch'):.2f} s")
    row("tail, median", lambda rows, wall: f"{med(rows, 'tail'):.1f} s")
    row("trial time in training steps + eval", lambda rows, wall: f"{sum(r['train'] for r in rows) / sum(r['total'] for r in rows):.0%}")
    return "\n".join(lines)


def _bare_trial(config: dict) -> None:
    """A Tune trial that only starts a 1-worker TorchTrainer whose function
    notes when it began and creates an SGD optimizer (its first call imports
    torch._dynamo, as any training loop's does)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer

    note = Path(config["storage"]) / f"bare{config['i']}.json"

    def loop(cfg):
        import torch

        entered = time.time()
        torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        note.write_text(json.dumps({"entered": entered, "optimizer": time.time()}))

    started = time.time()
    note.parent.mkdir(parents=True, exist_ok=True)
    TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(
        num_workers=1, resources_per_worker={"CPU": config["worker_cpus"]}),
        run_config=ray.train.RunConfig(storage_path=config["storage"], name=f"bare{config['i']}")).fit()
    times = json.loads(note.read_text())
    tune.report({"fit_to_worker": times["entered"] - started, "worker_optimizer": times["optimizer"] - times["entered"]})


def ray_train_floor(trials: int, concurrency: int, trial_cpus: float, worker_cpus: float) -> str:
    """Ray Train V2's own start-up at the demo's concurrency and resources:
    ``trials`` bare trials, ``concurrency`` at a time, in a fresh local Ray."""
    import ray
    from ray import tune

    from dsr_tune.distributed import ray_env
    from dsr_tune.sweep.tune import TUNE_ENV

    env = ray_env(False, TUNE_ENV)
    work = Path(tempfile.mkdtemp(prefix="bench_floor_"))
    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": env})
    try:
        grid = tune.grid_search(list(range(trials)))
        tuner = tune.Tuner(tune.with_resources(_bare_trial, {"cpu": trial_cpus}),
                           param_space={"i": grid, "worker_cpus": worker_cpus, "storage": str(work / "train")},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
                           run_config=tune.RunConfig(storage_path=str(work / "tune"), name="floor", verbose=0))
        frame = tuner.fit().get_dataframe()
    finally:
        ray.shutdown()
    fit, opt = frame["fit_to_worker"].median(), frame["worker_optimizer"].median()
    return (f"bare Ray Train V2 floor, {trials} trials {concurrency} at a time ({trial_cpus} CPU trial + 1 worker x "
            f"{worker_cpus} CPU): TorchTrainer.fit to the worker function median {fit:.1f} s "
            f"(max {frame['fit_to_worker'].max():.1f} s), first optimizer in a fresh worker {opt:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", help="analyse this finished sweep folder instead of running the demo")
    p.add_argument("--floor", action="store_true",
                   help="then run bare TorchTrainer trials at the demo's concurrency: Ray Train's own start-up")
    p.add_argument("overrides", nargs="*", help="overrides for the demo sweep")
    args = p.parse_args()
    if args.sweep:
        sweep, wall = Path(args.sweep), None
        print(summarize(trial_times(sweep), wall))
    else:
        results = {}
        for label, extra in (("in the trial's process", []), ("Ray Train worker group", ["search.in_trial=false"])):
            sweep, wall = run_demo([*args.overrides, *extra])
            rows = trial_times(sweep)
            print(f"== {label}\n{summarize(rows, wall)}\n")
            results[label] = (rows, wall)
        print(side_by_side(results))
    if args.floor:
        meta = json.loads((sweep / "sweep.json").read_text())
        train = meta["space"]["config"].get("train", {})
        trial_cpus = meta["space"].get("search", {}).get("trial_cpus", 0.1)
        worker_cpus = train.get("cpus_per_worker", 1.0)
        per = trial_cpus + worker_cpus * train.get("workers", 1)
        print(ray_train_floor(8, max(1, int((os.cpu_count() or 1) / per + 1e-9)), trial_cpus, worker_cpus))


if __name__ == "__main__":
    main()
