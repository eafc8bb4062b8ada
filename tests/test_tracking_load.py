"""Tracking under load, the short version of benchmarks/bench_tracking.py: 8
trials at once, each its own process, log through the live logger for 30 s (an
epoch every 3 s, 6 reallocations between) to the embedded sqlite store and to
an MLflow server backed by PostgreSQL, started here from Debian's postgresql
package (.ci/run installs it). Every (key, step) sent must be in the store with
its value, and no MLflow call may fail. Nothing is skipped: a PostgreSQL that
cannot start fails the test, saying why."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_tracking.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tracking", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_tracking", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return sys.modules["bench_tracking"]


def test_the_read_back_counts_every_write_that_is_missing_or_wrong(tmp_path):
    """The load test's 'lost' is a real count: pairs left out or changed are found."""
    from mlflow import MlflowClient

    from dsr_tune.tracking import mlflow_runs as runs, store

    bench = _bench()
    sent = bench.sent_pairs(3, epochs=2, reallocs=2)
    assert len(sent) == 2 * (34 + 2 * 4) and all(isinstance(v, float) for v in sent.values())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.client(store.resolve(uri))
    rid = client.create_run(store.experiment_id(client, "e", store.resolve(uri))).info.run_id
    stored = sorted(sent.items())
    kept = [(k, v + (1.0 if i == 0 else 0.0), s) for i, ((k, s), v) in enumerate(stored[:-5])]  # 5 left out, 1 changed
    runs.log_metrics(MlflowClient(uri), rid, kept)
    assert bench._read_back(uri, {rid: sent}) == {rid: 6}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_trials_lose_no_write(kind, tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(BENCH), "--trials", "8", "--seconds", "30", "--stores", kind,
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.exists(), f"the load did not run (exit {done.returncode}): {done.stderr[-2000:]}"
    row, = json.loads(out.read_text())["rows"]
    # 8 trials x 10 epochs, each epoch 34 metrics and 6 reallocations of 4
    assert row["trials"] == 8 and row["epochs"] == 80 and row["pairs"] == 80 * (34 + 6 * 4), row
    assert row["lost"] == 0 and row["failed"] == 0 and row["offline"] == 0, (row, done.stdout[-2000:])
    assert row["calls"] >= 80 and row["batch_ms"][0] > 0, row  # one log_batch per epoch at least, timed
    assert done.returncode == 0, done.stderr[-2000:]
