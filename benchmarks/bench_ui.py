"""What ``dsr-tune ui`` costs: MLflow's server as the tool starts it (one uvicorn
worker, no GenAI job runners) against MLflow's defaults (4 workers, job
execution on), measured in one run, alternating, so a busy machine hits both
alike (not a timed test).

    .venv/bin/python benchmarks/bench_ui.py                 # 3 starts of each
    .venv/bin/python benchmarks/bench_ui.py --repeats 5 --store mlruns/mlflow.db

Per start: seconds from the start to the first answer of /health, seconds for
the runs-table page's requests (the index page, experiments/search,
runs/search) once it answers, and 10 s after the answer the processes of the
server's tree and their memory (sum of PSS, which counts shared pages once).
Medians are printed, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dsr_tune.cli import serve
from dsr_tune.distributed import reaper
from dsr_tune.tracking import store

SETTLE_S = 10.0  # after the first answer: MLflow's job runners start a little later


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0) / 1024


def demo_store(root: Path) -> store.Target:
    """An embedded store with an experiment of 20 runs, 30 epochs of metrics each."""
    target = store.resolve(f"sqlite:///{root / 'mlflow.db'}")
    client = store.client(target)
    exp = store.experiment_id(client, "bench", target)
    from dsr_tune.tracking import mlflow_runs as runs

    for i in range(20):
        rid = client.create_run(exp, run_name=f"dsr s0.9 seed{i}").info.run_id
        runs.log_metrics(client, rid, [(f"epoch/{k}", 0.5 + e / 100, e) for e in range(1, 31)
                                       for k in ("val_acc", "test_acc", "train_loss")])
        client.set_terminated(rid)
    return target


def one_start(target: store.Target, lighter: bool) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = serve.ui_command(target, "127.0.0.1", port, workers=1 if lighter else 4)
    env = {**os.environ, **serve.UI_ENV} if lighter else dict(os.environ)
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while not serve._answers(f"{base}/health"):
            if proc.poll() is not None or time.monotonic() - t0 > serve.READY_S:
                raise RuntimeError(f"the server did not answer: {' '.join(cmd)}")
            time.sleep(0.1)
        answered = time.monotonic() - t0
        t1 = time.monotonic()
        urllib.request.urlopen(base + "/", timeout=60).read()
        url = serve._runs_table(base, None)
        page = time.monotonic() - t1
        time.sleep(SETTLE_S)
        family = reaper.family(proc.pid)
        return {"answer_s": answered, "page_s": page, "processes": len(family),
                "pss_mib": sum(pss_mib(p.pid) for p in family), "url": url}
    finally:
        serve._stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", help="an existing store (default: a temporary one with 20 runs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target = store.resolve(args.store) if args.store else demo_store(Path(tmp))
        load = os.getloadavg()
        results: dict[str, list[dict]] = {"dsr-tune ui": [], "MLflow's defaults": []}
        for i in range(args.repeats):
            for name, lighter in ((("dsr-tune ui", True), ("MLflow's defaults", False)) if i % 2 == 0 else
                                  (("MLflow's defaults", False), ("dsr-tune ui", True))):
                results[name].append(one_start(target, lighter))
                print(name, json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                        for k, v in results[name][-1].items()}), file=sys.stderr)
    print(f"\nload average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
          f"{args.repeats} starts of each, alternating; medians\n")
    print("| | first answer (s) | runs-table requests (s) | processes | memory, PSS (MiB) |\n|---|---|---|---|---|")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("answer_s", "page_s", "processes", "pss_mib")}
        print(f"| {name} | {med['answer_s']:.1f} | {med['page_s']:.2f} | {med['processes']:.0f} | "
              f"{med['pss_mib']:.0f} |")


if __name__ == "__main__":
    main()
