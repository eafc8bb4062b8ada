"""Where a sweep's time goes: training epochs against everything around them.

Runs the demo sweep (search_spaces/digits_demo.yaml, embedded MLflow, local
Ray) in a fresh folder, or analyses a finished sweep folder, and prints:

- per trial, from the ``timing`` its job writes to tracking.json
  (dsr_tune.sweep.trial.run_job) and its epoch records: **set-up** (the trial
  function's first line to the first training step: the MLflow run, data,
  model; the imports when it is the first job of its process, marked ``*``),
  **epochs** split into **steps** and **evaluation**, **between epochs**
  (checkpoint, metrics.jsonl, the MLflow queue, Tune's report), **close**
  (the last Tune report, the live logger draining) and **artifacts**
  (density plot, sparse export, MLflow model, status);
- for the sweep: its wall time, the slot time (wall x trials at a time), the
  share of the slot time inside epochs, the slot time outside any trial
  (Ray and MLflow start, trial processes starting, Tune between trials,
  phase ends, the report), Tune's hand-over between two trials of one
  process, and the CPU seconds of the sweep's processes by
  kind (trials, the driver, Ray's own), which a loaded machine does not
  inflate as it does wall time;
- the parts of the artifacts, timed apart on one finished run folder
  (checkpoint write, density plot, sparse export, MLflow model).

``--against REV`` runs the demo alternately with this checkout and with git
revision REV (a temporary worktree: its package on PYTHONPATH, its space and
config files), ``--repeats`` times each, and prints the medians side by side
with their ratios: a before/after that a busy machine hits alike. CPU seconds
are the steadier measure there: a loaded machine stretches wall time, not them.

    .venv/bin/python benchmarks/bench_sweep.py                       # the demo, its breakdown (~2 min)
    .venv/bin/python benchmarks/bench_sweep.py --sweep runs/sweeps/digits_demo   # analyse only
    .venv/bin/python benchmarks/bench_sweep.py --against main --repeats 3        # before / after
    .venv/bin/python benchmarks/bench_sweep.py search.samples=1 seeds=[1]        # a smaller demo

Not a timed test: the numbers depend on the machine and on what else runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "digits_demo.yaml"


# ---------------------------------------------------------------- running the demo


def _tree_cpu(root_pid: int, seen: dict) -> None:
    """Note the CPU seconds of every live process below ``root_pid`` into ``seen``
    ({(pid, start): (kind, cpu)}); processes that ended keep their last sample."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        procs[int(pid)] = (int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / tick, cmd)
    mine, grew = {root_pid}, True
    while grew:
        grew = False
        for pid, (ppid, *_rest) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    for pid in mine & procs.keys():
        _, start, cpu, cmd = procs[pid]
        old = seen.get((pid, start))
        seen[(pid, start)] = (_kind(cmd) if cmd else (old[0] if old else "?"), cpu)


def _kind(cmd: str) -> str:
    if "ImplicitFunc" in cmd or "_inner" in cmd or "RayTrainWorker" in cmd:
        return "trials"
    if "dsr_tune.cli" in cmd or "dsr-tune" in cmd:
        return "driver"
    return "Ray's own processes"


def run_demo(overrides: list[str], tree: str | None = None, space: str | Path = DEMO) -> tuple[Path, float, dict]:
    """A sweep (the demo) in a fresh folder: (sweep folder, wall s, CPU s by kind); ``tree``:
    another checkout, whose package (on PYTHONPATH) and space file run instead of this one's."""
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    space = (Path(tree) if tree else ROOT) / Path(space).resolve().relative_to(ROOT)
    cmd = [sys.executable, "-m", "dsr_tune.cli", "sweep", str(space), *overrides, "--output", str(work / "sweep")]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    if tree:
        env["PYTHONPATH"] = tree
    seen: dict = {}
    t0 = time.time()
    with open(work / "out.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            _tree_cpu(proc.pid, seen)
            time.sleep(0.5)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"the sweep failed ({proc.returncode}):\n{(work / 'out.log').read_text()[-3000:]}")
    cpu: dict[str, float] = collections.defaultdict(float)
    for kind, seconds in seen.values():
        cpu[kind] += seconds
    return work / "sweep", wall, dict(cpu)


# ---------------------------------------------------------------- one sweep folder


def trial_times(sweep: Path) -> list[dict]:
    """One dict per trained job from its tracking.json ``timing`` and metrics.jsonl (seconds).
    A trial trained by a Ray Train worker group (``search.in_trial=false``) records no
    timing: its row has its epochs and its total only (start to the end of training)."""
    from dsr_tune.runfolder import read_records

    nan = float("nan")
    out = []
    for info_path in sorted((sweep / "runs").glob("**/tracking.json")):
        info = json.loads(info_path.read_text())
        t = info.get("timing")
        epochs = [r for r in read_records(info_path.parent / "metrics.jsonl") if r.get("kind") == "epoch"]
        if not epochs:
            continue
        per_step = _config(info_path.parent)["data"]["batch_size"]
        steps, last = 0.0, 0
        for r in epochs:
            steps += (r["step"] - last) * per_step / r["samples_per_s"]
            last = r["step"]
        epoch_s = sum(r["epoch_time"] for r in epochs)
        row = {"key": info["key"], "epochs": len(epochs), "steps": steps, "eval": epoch_s - steps, "in_epochs": epoch_s}
        if t and len(t.get("epochs", [])) == len(epochs):
            ends = [e[0] for e in t["epochs"]]
            start = t["started"] or t["began"][0]
            row.update(fresh=t["first_in_process"], set_up=ends[0] - epochs[0]["epoch_time"] - start,
                       between=(ends[-1] - ends[0]) - sum(r["epoch_time"] for r in epochs[1:]),
                       close=t["trained"][0] - ends[-1], artifacts=t["closed"][0] - t["trained"][0],
                       total=t["closed"][0] - start, start=start, end=t["closed"][0], pid=t.get("pid"))
        elif info.get("started") and info.get("trained"):
            row.update(fresh=False, set_up=nan, between=nan, close=nan, artifacts=nan,
                       total=info["trained"] - info["started"], start=info["started"], end=info["trained"], pid=None)
        else:
            continue
        out.append(row)
    return out


def _config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


COLUMNS = ("set_up", "steps", "eval", "between", "close", "artifacts", "total")


def summarize(rows: list[dict], wall: float | None, cpu: dict[str, float] | None, slots: int) -> str:
    lines = [f"{'trial (* first in its process)':<34}{'epochs':>7}" + "".join(f"{c.replace('_', '-'):>11}" for c in COLUMNS)]
    for r in rows:
        lines.append(f"{r['key'] + ('*' if r['fresh'] else ''):<34}{r['epochs']:>7}"
                     + "".join(f"{r[c]:>11.2f}" if r[c] == r[c] else f"{'-':>11}" for c in COLUMNS))
    total = {c: sum(r[c] for r in rows if r[c] == r[c]) for c in (*COLUMNS, "in_epochs")}  # x == x: not nan
    lines.append(f"{'sum':<34}{sum(r['epochs'] for r in rows):>7}" + "".join(f"{total[c]:>11.1f}" for c in COLUMNS))
    timed = [r for r in rows if r["set_up"] == r["set_up"]]
    fresh = [r["set_up"] for r in timed if r["fresh"]]
    warm = [r["set_up"] for r in timed if not r["fresh"]]
    lines += ["", f"{len(rows)} trials: set-up median {statistics.median(warm or [0]):.2f} s in a reused process, "
              f"{statistics.median(fresh or [0]):.2f} s in a fresh one ({len(fresh)} of them); between epochs "
              f"{total['between'] / max(1, sum(r['epochs'] - 1 for r in timed)):.3f} s an epoch; close + artifacts "
              f"median {statistics.median([r['close'] + r['artifacts'] for r in timed] or [0]):.2f} s a trial"
              + ("" if len(timed) == len(rows) else f" ({len(rows) - len(timed)} trial(s) through a worker group: "
                 "epochs and total only)")]
    gaps = _gaps(rows)
    if gaps:
        lines.append(f"Tune between two trials of one process (one's end to the next one's first line): median "
                     f"{statistics.median(gaps):.2f} s, {sum(gaps):.1f} s in all over {len(gaps)} hand-overs")
    if wall:
        slot = wall * slots
        lines.append(f"sweep wall {wall:.1f} s; slot time {slot:.0f} s ({slots} trials at a time); inside epochs "
                     f"{total['in_epochs']:.0f} s = {total['in_epochs'] / slot:.0%} of the slot time; inside trials "
                     f"{total['total']:.0f} s; outside any trial {slot - total['total']:.0f} s (Ray and MLflow start, "
                     "trial processes starting, Tune between trials, phase ends, the report)")
    if cpu:
        lines.append("CPU seconds of the sweep's processes: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])) + f"; in all {sum(cpu.values()):.1f}")
    return "\n".join(lines)


def _gaps(rows: list[dict]) -> list[float]:
    by_process = collections.defaultdict(list)
    for r in rows:
        if r["pid"] is not None:
            by_process[r["pid"]].append(r)
    gaps = []
    for trials in by_process.values():
        trials.sort(key=lambda r: r["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(trials, trials[1:])]
    return gaps


def artifact_parts(run_dir: Path, repeats: int = 3) -> str:
    """The parts of a trial's tail, timed apart on a copy of one finished run folder."""
    import shutil

    import torch

    from dsr_tune import checkpoint as ckpt
    from dsr_tune.runfolder import read_records
    from dsr_tune.tracking import artifacts, store
    from dsr_tune.train.export import export_run

    work = Path(tempfile.mkdtemp(prefix="bench_parts_"))
    run = Path(shutil.copytree(run_dir, work / "run"))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    client = store.client(store.Target(f"sqlite:///{work / 'm.db'}", (work / "a").as_uri()))
    exp = client.create_experiment("parts", artifact_location=(work / "a").as_uri())

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    parts = {"checkpoint write": timed(lambda: ckpt.save(state, work / "c.pt")),
             "density plot": timed(lambda: artifacts.density_plot(read_records(run), work / "d.png")),
             "sparse export": timed(lambda: export_run(run, run / artifacts.EXPORT)),
             "MLflow model": timed(lambda: artifacts.log_model(client.tracking_uri,
                                                               client.create_run(exp).info.run_id, run))}
    shutil.rmtree(work, ignore_errors=True)
    return (f"parts, timed apart on {run_dir.name} (medians of {repeats}; the first call of a process also "
            "imports): " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items()))


def analyse(sweep: Path, wall: float | None = None, cpu: dict | None = None) -> tuple[str, dict]:
    meta = json.loads((sweep / "sweep.json").read_text())
    rows = trial_times(sweep)
    if not rows:
        sys.exit(f"{sweep}: no run folder holds a finished trial with its epochs")
    slots = _slots(sweep, meta)
    text = summarize(rows, wall, cpu, slots)
    done = next((r for r in rows if not r["fresh"] and r["key"].startswith("paired")), rows[0])
    if (sweep / "runs" / done["key"] / "checkpoint.pt").exists():
        text += "\n" + artifact_parts(sweep / "runs" / done["key"])
    in_epochs = sum(r["in_epochs"] for r in rows)
    return text, {"wall": wall, "slot_share_in_epochs": in_epochs / (wall * slots) if wall else None,
                  "cpu": sum((cpu or {}).values()), "in_epochs": in_epochs, "trials": len(rows)}


def _slots(sweep: Path, meta: dict) -> int:
    """Trials at a time, as the sweep's log said (else 2, the demo's)."""
    log = sweep.parent / "out.log"
    if log.exists():
        for line in log.read_text().splitlines():
            if " trial(s) at a time" in line:
                return int(line.split(" trial(s) at a time")[0].rsplit(" ", 1)[1])
    return meta["space"].get("search", {}).get("max_concurrent") or 2


# ---------------------------------------------------------------- before / after


def against(rev: str, repeats: int, overrides: list[str], space: str | Path = DEMO) -> str:
    """The demo alternately here and at ``rev``; medians and ratios."""
    base = Path(tempfile.mkdtemp(prefix="bench_rev_")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), rev], check=True,
                   capture_output=True)
    results: dict[str, list[dict]] = {"here": [], rev: []}
    try:
        for i in range(repeats):
            for label, path in (("here", None), (rev, str(base))):
                sweep, wall, cpu = run_demo(overrides, tree=path, space=space)
                slots = _slots(sweep, json.loads((sweep / "sweep.json").read_text()))
                rows = trial_times(sweep) if label == "here" else []
                in_epochs = sum(r["in_epochs"] for r in rows) if rows else _epoch_seconds(sweep)
                results[label].append({"wall": wall, "cpu": sum(cpu.values()), "trials_cpu": cpu.get("trials", 0),
                                       "driver_cpu": cpu.get("driver", 0), "share": in_epochs / (wall * slots),
                                       "in_epochs": in_epochs, "load": os.getloadavg()[0]})
                print(f"[{i + 1}/{repeats}] {label}: wall {wall:.1f} s, CPU {sum(cpu.values()):.1f} s, "
                      f"in epochs {in_epochs:.0f} s = {results[label][-1]['share']:.0%} of the slot time, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    lines = [f"{'median of ' + str(repeats):<34}{'here':>12}{rev:>14}{'here / ' + rev:>18}"]
    for key, what in (("wall", "sweep wall s"), ("cpu", "CPU s, all its processes"), ("trials_cpu", "CPU s, trials"),
                      ("driver_cpu", "CPU s, driver"), ("in_epochs", "s inside epochs"),
                      ("share", "share of slot time in epochs")):
        a = statistics.median(r[key] for r in results["here"])
        b = statistics.median(r[key] for r in results[rev])
        lines.append(f"{what:<34}{a:>12.2f}{b:>14.2f}{a / b if b else float('nan'):>18.2f}")
    return "\n".join(lines)


def _epoch_seconds(sweep: Path) -> float:
    """Seconds inside epochs from the run folders alone (a revision that records no timing)."""
    from dsr_tune.runfolder import read_records

    return sum(r["epoch_time"] for p in (sweep / "runs").glob("**/metrics.jsonl") for r in read_records(p)
               if r.get("kind") == "epoch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", help="analyse this finished sweep folder instead of running the demo")
    p.add_argument("--against", metavar="REV", help="run the demo alternately here and at git revision REV")
    p.add_argument("--repeats", type=int, default=3, help="with --against: runs of each (default 3)")
    p.add_argument("--space", default=str(DEMO), help="another space file of this checkout (default: the demo)")
    p.add_argument("overrides", nargs="*", help="overrides for the demo sweep")
    args = p.parse_args()
    if args.against:
        print(against(args.against, args.repeats, args.overrides, args.space))
        return
    if args.sweep:
        print(analyse(Path(args.sweep))[0])
        return
    sweep, wall, cpu = run_demo(args.overrides, space=args.space)
    print((sweep.parent / "out.log").read_text())
    print(analyse(sweep, wall, cpu)[0])


if __name__ == "__main__":
    main()
