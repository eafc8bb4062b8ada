"""Tracking under load: many trials logging to one MLflow store at once.

N simulated trials, each its own process, go through the tool's own tracking
path as a sweep's trials do: the trial's child run (``SweepTracker.child``:
found by tag or created), the worker's live logger (``MlflowLogger``: the
resolved config as params, each record queued and written by a background
thread, the reallocations since the last epoch sent with the epoch's record
in one ``log_batch``) and the trial's end (``SweepTracker.finish``). An epoch
record (13 epoch metrics, ``epoch`` and 20 per-layer densities) every
``--epoch-s`` seconds, ``--reallocs`` reallocation records (threshold, pruned,
grown, turnover) in between, for ``--seconds``; then every (key, step) sent is
read back from the store and compared, value included.

Stores: ``sqlite``, the embedded default (one sqlite file, every trial
writing to it directly), and ``postgres``, an ``mlflow server`` on 127.0.0.1
backed by a private PostgreSQL cluster started here (Debian's ``postgresql``
package: initdb and pg_ctl from PATH or /usr/lib/postgresql/*/bin; as root the
cluster runs as the ``postgres`` user; the driver is psycopg2).

    .venv/bin/python benchmarks/bench_tracking.py                     # 32 trials x 120 s, both stores
    .venv/bin/python benchmarks/bench_tracking.py --trials 8 --seconds 30 --stores sqlite

Per store it prints: records and (key, step) pairs sent, pairs lost (not in
the store or another value), failed MLflow calls and trials whose logger went
offline (their records stay in the run folder for ``dsr-tune sync``), the
latency of each ``log_batch`` call (median, p95, max) and the delay from an
epoch record's hand-over to its being in the store. Timings depend on the
machine and on what else runs on it; tests/test_tracking_load.py runs a short
version and asserts that nothing is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORES = ("sqlite", "postgres")
LAYERS = 20
BARRIER_S = 600.0  # every trial has its run and its logger before the clock starts


@dataclass(frozen=True)
class Load:
    trials: int = 32
    seconds: float = 120.0
    epoch_s: float = 3.0
    reallocs: int = 6

    def describe(self) -> str:
        return (f"{self.trials} trials x {self.seconds:g} s, each an epoch every {self.epoch_s:g} s (34 metrics: "
                f"13 epoch keys, epoch, {LAYERS} densities) with {self.reallocs} reallocations (4 metrics each) "
                "between, sent as one log_batch per epoch")


# ---------------------------------------------------------------- what a trial logs


def realloc_record(trial: int, epoch: int, i: int, reallocs: int) -> dict:
    step = epoch * 1000 + (i + 1) * (1000 // (reallocs + 1))
    layers = {f"layer{k}.conv.weight": {"pruned": 10 + k + i, "grown": 10 + k + i, "nonzero": 1000 + 10 * k}
              for k in range(LAYERS)}
    return {"kind": "realloc", "step": step, "epoch": epoch, "threshold": 1e-3 / (1 + epoch + i / 10 + trial / 100),
            "pruned": sum(v["pruned"] for v in layers.values()), "grown": sum(v["grown"] for v in layers.values()),
            "layers": layers}


def epoch_record(trial: int, epoch: int) -> dict:
    x = (epoch + 1) / (epoch + 2) - trial / 1000
    return {"kind": "epoch", "epoch": epoch, "step": (epoch + 1) * 1000, "train_loss": 1 - x, "train_acc": x,
            "val_acc": x - 0.01, "val_acc5": min(1.0, x + 0.05), "val_loss": 1.1 - x, "test_acc": x - 0.02,
            "test_acc5": min(1.0, x + 0.04), "test_loss": 1.2 - x, "nonzero_params": 20000 + trial,
            "lr": 0.1 * 0.2 ** (epoch // 10), "samples_per_s": 5000.0 + epoch, "epoch_time": 3.0 + trial / 100,
            "bad_images": 0, "density": {f"layer{k}.conv.weight": 0.1 + k / 1000 + epoch / 1e5 for k in range(LAYERS)}}


def sent_pairs(trial: int, epochs: int, reallocs: int) -> dict[tuple[str, int], float]:
    """Every (key, step) -> value a trial that logged ``epochs`` epochs sent."""
    from dsr_tune.tracking import mlflow_runs as runs

    out = {}
    for e in range(epochs):
        for rec in [*(realloc_record(trial, e, i, reallocs) for i in range(reallocs)), epoch_record(trial, e)]:
            out.update({(k, s): v for k, v, s in runs.record_metrics(rec)})
    return out


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def _timed(calls: list, written: dict):
    """``runs.log_metrics`` as the live logger calls it, timed; an epoch's
    write time is kept by its step."""
    from dsr_tune.tracking import mlflow_runs as runs

    real = runs.log_metrics

    def log_metrics(client, run_id, triples, skip=None):
        triples = list(triples)
        t0 = time.perf_counter()
        try:
            n = real(client, run_id, triples, skip)
        except Exception as exc:
            calls.append([time.perf_counter() - t0, repr(exc)[:300]])
            raise
        calls.append([time.perf_counter() - t0, None])
        written.update({s: time.monotonic() for k, _, s in triples if k == "epoch"})
        return n

    return log_metrics


def trial(index: int, tracker_json: dict, load: Load, barrier, folder: str) -> None:
    """One trial (a process of its own): its run, its live logger, its epochs."""
    from dsr_tune import config as C
    from dsr_tune.tracking import MlflowLoggerSpec, SweepTracker, mlflow_runs as runs

    calls: list = []
    written: dict[int, float] = {}
    enqueued: dict[int, float] = {}
    try:
        tracker = SweepTracker.from_json(tracker_json)
        run_dir = Path(folder) / f"t{index:02d}"
        identity = {"key": f"search/t{index:02d}", "run_name": f"dsr s0.9 seed0 t{index:02d}",
                    "tags": {"method": "dsr", "role": "search", "seed": 0, "sparsity": "0.9"}}
        run_id = tracker.child(run_dir, identity)
        runs.log_metrics = _timed(calls, written)
        logger = MlflowLoggerSpec(tracker.target.uri, str(run_dir), run_id=run_id).make()
        logger.log_params(C.load(ROOT / "configs" / "digits.yaml").flat())
    except BaseException:
        barrier.abort()
        raise
    barrier.wait(BARRIER_S)
    start, epoch = time.monotonic(), 0
    while (epoch + 1) * load.epoch_s <= load.seconds:
        base = start + epoch * load.epoch_s
        for i in range(load.reallocs):
            _sleep_until(base + (i + 1) * load.epoch_s / (load.reallocs + 1))
            logger.log_record(realloc_record(index, epoch, i, load.reallocs))
        _sleep_until(base + load.epoch_s)
        enqueued[epoch + 1] = time.monotonic()
        logger.log_record(epoch_record(index, epoch))
        epoch += 1
    logger.close()
    tracker.finish(run_dir, run_id, "FINISHED")
    delays = [written[s] - t for s, t in enqueued.items() if s in written]
    if run_id is None:  # the child run could not be made: the trial trained offline (dsr-tune sync logs it later)
        calls.append([0.0, f"child run: {runs.read_run_file(run_dir).get('error')}"])
    result = {"run_id": run_id, "epochs": epoch, "online": logger.online and run_id is not None, "calls": calls,
              "delays": delays}
    (Path(folder) / f"t{index:02d}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------- stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} was not found (PATH, /usr/lib/postgresql/*/bin): install Debian's "
                           "postgresql package (apt-get install -y postgresql)")
    return found


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"PostgreSQL: {what} failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-600:]}")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 (a free port; trust for its one
    user, nothing else listens); yields the SQLAlchemy URI of its database."""
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="dsr-tune-pg-"))  # under /tmp: the postgres user must reach it
    if os.geteuid() == 0:  # postgres refuses to run as root
        if not shutil.which("runuser"):
            raise RuntimeError("PostgreSQL: running as root needs runuser (util-linux) to start it as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        try:
            shutil.chown(root, "postgres")
        except LookupError:
            raise RuntimeError("PostgreSQL: as root the cluster runs as the user postgres, which does not exist "
                               "(Debian's postgresql package makes it)") from None
    data, port = root / "data", free_port()
    try:
        _run(as_user + [_pg_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"], "initdb")
        _run(as_user + [_pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "120",
                        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=300",
                        "start"], "pg_ctl start")
        try:
            _run(as_user + [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                 "createdb")
            yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
        finally:
            subprocess.run(as_user + [_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                           timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path, workers: int = 4, ready_s: float = 300.0) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 over ``backend`` (MLflow's default 4
    workers); yields its URI once every worker has started (the first answers
    /health while the others still load, slowly on a busy machine). Stopped
    (its whole process group) on exit."""
    from dsr_tune.tracking import store

    port, log = free_port(), folder / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--default-artifact-root",
           (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def started() -> bool:
        return log.read_text(errors="replace").count("Application startup complete") >= workers

    try:
        deadline = time.monotonic() + ready_s
        while not started() or store.probe(store.Target(uri), timeout=2.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server over PostgreSQL did not answer within {ready_s:.0f} s: "
                                   f"{log.read_text(errors='replace')[-800:]}")
            time.sleep(1.0)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@contextlib.contextmanager
def tracking_uri(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'mlflow.db'}"
    elif kind == "postgres":
        with postgres() as db, mlflow_server(db, folder) as uri:
            yield uri
    else:
        raise ValueError(f"store {kind!r}: one of {', '.join(STORES)}")


# ---------------------------------------------------------------- the load and the read-back


def _in_child(ctx, fn, *args):
    """``fn(*args)`` in a forked process, its result back through a pipe: the
    parent never opens the store, so no connection is shared across fork."""
    here, there = ctx.Pipe(duplex=False)

    def run():
        try:
            there.send(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 (reported by the parent)
            there.send(("error", f"{type(exc).__name__}: {exc}"))

    p = ctx.Process(target=run)
    p.start()
    kind, value = here.recv()
    p.join()
    if kind == "error":
        raise RuntimeError(value)
    return value


def _connect(uri: str) -> dict:
    from dsr_tune.tracking import SweepTracker, store

    tracker = SweepTracker(store.resolve(uri), "load", "load-1", git="bench")
    error = tracker.connect({"trials": 0})
    if error or tracker.experiment_id is None or tracker.parent_id is None:
        raise RuntimeError(f"the sweep's experiment and parent run: {error or tracker.to_json()}")
    return tracker.to_json()


def _read_back(uri: str, expected: dict[str, dict]) -> dict:
    """Per run id: (key, step) pairs sent and not in the store with the value sent."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    lost = {}
    for run_id, pairs in expected.items():
        have = {}
        for key in {k for k, _ in pairs}:
            have.update({(key, m.step): m.value for m in client.get_metric_history(run_id, key)})
        lost[run_id] = sum(1 for (k, s), v in pairs.items() if (k, s) not in have or abs(have[(k, s)] - v) > 1e-9)
    return lost


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_load(kind: str, load: Load, folder: Path) -> dict:
    """The load against one store; returns the counts and timings."""
    import mlflow  # noqa: F401 (imported once here, shared by the forked trials; no store is opened)

    from dsr_tune.tracking import mlflow_runs as runs

    ctx = mp.get_context("fork")
    folder.mkdir(parents=True, exist_ok=True)
    with tracking_uri(kind, folder) as uri:
        tracker_json = _in_child(ctx, _connect, uri)
        barrier = ctx.Barrier(load.trials)
        procs = [ctx.Process(target=trial, args=(i, tracker_json, load, barrier, str(folder)))
                 for i in range(load.trials)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(BARRIER_S + load.seconds + 300)
        missing = [i for i, p in enumerate(procs) if p.exitcode != 0 or not (folder / f"t{i:02d}.json").exists()]
        if missing:
            raise RuntimeError(f"{kind}: trials {missing} did not finish (exit codes "
                               f"{[procs[i].exitcode for i in missing]})")
        results = [json.loads((folder / f"t{i:02d}.json").read_text()) for i in range(load.trials)]
        expected = {r["run_id"] or f"none-{i}": sent_pairs(i, r["epochs"], load.reallocs)
                    for i, r in enumerate(results)}
        lost = _in_child(ctx, _read_back, uri, {k: v for k, v in expected.items() if not k.startswith("none-")})
        lost.update({k: len(v) for k, v in expected.items() if k.startswith("none-")})  # never reached the store
    calls = [c for r in results for c in r["calls"]]
    latency = [c[0] for c in calls if c[1] is None]
    delays = [d for r in results for d in r["delays"]]
    return {"store": kind, "trials": load.trials, "epochs": sum(r["epochs"] for r in results),
            "pairs": sum(len(p) for p in expected.values()), "lost": sum(lost.values()),
            "failed": sum(1 for c in calls if c[1] is not None), "errors": sorted({c[1] for c in calls if c[1]})[:3],
            "offline": sum(1 for r in results if not r["online"]), "calls": len(calls),
            "batch_ms": [1000 * statistics.median(latency) if latency else float("nan"),
                         1000 * _pct(latency, 0.95), 1000 * max(latency, default=float("nan"))],
            "delay_ms": [1000 * statistics.median(delays) if delays else float("nan"),
                         1000 * _pct(delays, 0.95), 1000 * max(delays, default=float("nan"))],
            "metrics_per_epoch": len(runs.record_metrics(epoch_record(0, 0)))}


NAMES = {"sqlite": "sqlite (embedded)", "postgres": "MLflow server + PostgreSQL"}


def table(rows: list[dict]) -> str:
    head = (f"{'store':28} {'trials':>6} {'epochs':>6} {'pairs sent':>10} {'lost':>5} {'failed':>6} {'offline':>7}  "
            f"{'log_batch ms med/p95/max':>25}  {'epoch->store ms med/p95/max':>28}")
    lines = [head, "-" * len(head)]
    for r in rows:
        b, d = r["batch_ms"], r["delay_ms"]
        lines.append(f"{NAMES[r['store']]:28} {r['trials']:>6} {r['epochs']:>6} {r['pairs']:>10} {r['lost']:>5} "
                     f"{r['failed']:>6} {r['offline']:>7}  {b[0]:>7.0f} {b[1]:>7.0f} {b[2]:>9.0f}  "
                     f"{d[0]:>8.0f} {d[1]:>8.0f} {d[2]:>10.0f}")
        lines += [f"    {NAMES[r['store']]}: {e}" for e in r["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=Load.trials)
    ap.add_argument("--seconds", type=float, default=Load.seconds)
    ap.add_argument("--epoch-s", type=float, default=Load.epoch_s)
    ap.add_argument("--reallocs", type=int, default=Load.reallocs)
    ap.add_argument("--stores", default=",".join(STORES), help="comma-separated: sqlite, postgres")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    load = Load(args.trials, args.seconds, args.epoch_s, args.reallocs)
    print(f"tracking under load: {load.describe()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsr-tune-load-") as tmp:
        for kind in args.stores.split(","):
            rows.append(run_load(kind.strip(), load, Path(tmp) / kind.strip()))
            print(f"{NAMES[rows[-1]['store']]}: done", flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"load": asdict(load), "rows": rows}, indent=1))
    return 0 if all(r["lost"] == 0 and r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
