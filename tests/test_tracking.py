"""MLflow tracking without Ray: an unreachable server never stops training, and
``sync`` puts the lost records into MLflow from the run folder, exactly once.
Also: the live logger skips what a restarted worker group logs again, and
``dsr-tune ui`` serves the embedded store on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dsr_tune import cli, config as C
from dsr_tune.tracking import MlflowLoggerSpec, SweepTracker, runs, store
from dsr_tune.tracking.logger import OFFLINE_FILE
from dsr_tune.tracking.sync import SWEEP_FILE, SyncError, sync_sweep
from dsr_tune.tracking.tracker import read_run_file
from dsr_tune.train import train
from dsr_tune.train.metrics import read_records

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.epochs=2", "optim.milestones=[1]", "sparsity.period_schedule=[[0, 10]]", "sparsity.stop_epoch=2",
        "sparsity.target_pruned=100", "train.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory):
    """A sweep folder whose one run trained while MLflow was unreachable."""
    root = tmp_path_factory.mktemp("offline")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = SweepTracker(store.resolve(dead), "offline", "offline-1", git="abc123")
    t0 = time.perf_counter()
    error = tracker.connect()
    connect_s = time.perf_counter() - t0
    run_dir = root / "runs" / "search" / "t1"
    identity = {"key": "search/t1", "run_name": "dsr s0.9 seed0 t1",
                "tags": {"method": "dsr", "role": "search", "seed": 0, "sparsity": "0.9"}}
    run_id = tracker.child(run_dir, identity)
    # the worker's logger, as if the trial had got a run id before the server went away
    t0 = time.perf_counter()
    logger = MlflowLoggerSpec(dead, str(run_dir), run_id="0123456789abcdef").make()
    make_s = time.perf_counter() - t0
    record = train(C.load(ROOT / "configs" / "digits.yaml", FAST), run_dir, loggers=[logger], progress=False)
    ok = tracker.finish(run_dir, run_id, "FINISHED")
    (root / SWEEP_FILE).write_text(json.dumps({"sweep_id": "offline-1", "status": "FINISHED",
                                               "tracker": tracker.to_json()}))
    return dict(root=root, run_dir=run_dir, error=error, connect_s=connect_s, run_id=run_id, logger=logger,
                make_s=make_s, record=record, ok=ok, dead=dead)


def test_unreachable_server_does_not_stop_training(offline_sweep):
    o = offline_sweep
    assert o["error"] and "unreachable" in o["error"] and o["connect_s"] < 10
    assert o["run_id"] is None and not o["ok"] and not o["logger"].online
    assert o["make_s"] < 15  # fails fast, not MLflow's default ~4 minutes of retries
    assert o["record"]["epoch"] == 1 and (o["run_dir"] / "checkpoint.pt").exists()
    assert (o["run_dir"] / OFFLINE_FILE).exists()
    info = read_run_file(o["run_dir"])
    assert info["status"] == "FINISHED" and info["synced"] is False and "unreachable" in info["error"]
    with pytest.raises(SyncError, match="unreachable"):
        sync_sweep(o["root"])  # still down: a clear error, nothing half done


def test_sync_restores_the_records_exactly_once(offline_sweep, tmp_path):
    from mlflow import MlflowClient

    o = offline_sweep
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the store that is back (here: another one)
    records = read_records(o["run_dir"] / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    reallocs = [r for r in records if r["kind"] == "realloc"]
    assert len(epochs) == 2 and reallocs

    # a live logger had got the first epoch and two reallocations in before the server went away
    client = store.client(store.resolve(uri))
    exp = store.experiment_id(client, "offline", store.resolve(uri))
    first = [t for r in records[:records.index(epochs[0]) + 1] for t in runs.record_metrics(r)]
    rid = runs.find_or_create(client, exp, "offline-1/search/t1", "dsr s0.9 seed0 t1", {"sweep": "offline-1"})
    runs.log_metrics(client, rid, first)

    s = sync_sweep(o["root"], uri=uri)
    assert s.runs == 1 and s.created == 0 and s.params > 50 and s.artifacts >= 3 and not s.failed
    c = MlflowClient(uri)
    run = c.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "dsr"
    assert run.data.tags["mlflow.parentRunId"] and run.data.tags["git_revision"] == "abc123"
    assert run.data.params["sparsity.method"] == "dsr"
    hist = c.get_metric_history(rid, "test_acc")
    assert sorted(m.step for m in hist) == [1, 2]  # epoch 1 was there already: not logged twice
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx([r["test_acc"] for r in epochs])
    assert sorted(m.step for m in c.get_metric_history(rid, "threshold")) == [r["step"] for r in reallocs]
    arts = {a.path for a in c.list_artifacts(rid)} | {a.path for a in c.list_artifacts(rid, "model")}
    assert {"config.yaml", "density.png", "model/model.sparse.pt"} <= arts
    assert read_run_file(o["run_dir"])["synced"] is True and not (o["run_dir"] / OFFLINE_FILE).exists()
    parent = c.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["role"] == "parent" and parent.info.status == "FINISHED"

    again = sync_sweep(o["root"], uri=uri, everything=True)
    assert again.runs == 1 and again.created == again.metrics == again.params == again.artifacts == 0
    assert len(c.get_metric_history(rid, "test_acc")) == 2


def test_live_logger_skips_what_a_restart_logs_again(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.client(store.resolve(uri))
    rid = client.create_run(store.experiment_id(client, "live", store.resolve(uri))).info.run_id
    rec = lambda e, acc: {"kind": "epoch", "epoch": e, "test_acc": acc, "train_loss": 1.0, "nonzero_params": 9,  # noqa: E731
                          "lr": 0.1, "samples_per_s": 5.0, "density": {"conv.weight": 0.1}}
    realloc = {"kind": "realloc", "step": 30, "epoch": 0, "threshold": 1e-3, "pruned": 7, "grown": 7,
               "layers": {"conv.weight": {"pruned": 7, "grown": 7, "nonzero": 9}}}
    first = MlflowLoggerSpec(uri, str(tmp_path), run_id=rid).make()
    first.log_params({"a.b": 1})
    for r in (realloc, rec(0, 0.5), rec(1, 0.6)):
        first.log_record(r)
    first.close("FAILED")  # the worker group died after epoch 2; it restarts from the epoch-1 checkpoint
    second = MlflowLoggerSpec(uri, str(tmp_path), run_id=rid).make()
    second.log_params({"a.b": 1})
    for r in (rec(1, 0.6), rec(2, 0.7)):
        second.log_record(r)
    second.close()
    c = MlflowClient(uri)
    assert sorted(m.step for m in c.get_metric_history(rid, "test_acc")) == [1, 2, 3]
    assert [(m.step, m.value) for m in c.get_metric_history(rid, "pruned")] == [(30, 7.0)]
    assert c.get_metric_history(rid, "density/conv.weight")[0].value == pytest.approx(0.1)
    assert first.online and second.online


def test_embedded_store_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = store.resolve(None, cwd=tmp_path)
    assert t.uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db" and t.artifact_root == (tmp_path / "mlruns" / "artifacts").as_uri()
    rel = store.resolve("sqlite:///sub/x.db", cwd=tmp_path)
    assert rel.uri == f"sqlite:///{tmp_path}/sub/x.db" and rel.embedded
    assert not store.resolve("http://h:5000").embedded and store.resolve("http://h:5000").remote


@pytest.mark.slow
def test_ui_serves_the_embedded_store(tmp_path):
    store.client(store.embedded(tmp_path)).search_experiments()  # creates mlruns/mlflow.db
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", "ui", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.read().strip() == b"OK"
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the MLflow UI never answered /health")
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_refuses_a_missing_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["ui"]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_logger_waits_for_the_run_the_trial_creates(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.client(store.resolve(uri))
    exp = store.experiment_id(client, "late", store.resolve(uri))
    logger = MlflowLoggerSpec(uri, str(tmp_path), experiment_id=exp, key="s-1/search/t").make()
    logger.log_record({"kind": "epoch", "epoch": 0, "test_acc": 0.5})  # queued: training never waits
    time.sleep(1.5)
    rid = runs.find_or_create(client, exp, "s-1/search/t", "t", {})
    logger.close()
    assert logger.online and logger.run_id == rid
    assert [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(rid, "test_acc")] == [(1, 0.5)]
