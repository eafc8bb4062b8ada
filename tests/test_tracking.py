"""MLflow tracking without Ray: an unreachable server never stops training, and
``sync`` puts the lost records into MLflow from the run folder, exactly once.
Also: the live logger skips what a restarted worker group logs again, and a
parent run that ``sync`` creates is the one a live sweep makes (``dsr-tune ui``:
tests/test_serve.py)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from dsr_tune import cli, config as C
from dsr_tune.tracking import MlflowLoggerSpec, SweepTracker, mlflow_runs, store
from dsr_tune.tracking.logger import OFFLINE_FILE
from dsr_tune.tracking.sync import SWEEP_FILE, SyncError, sync_sweep
from dsr_tune.tracking.tracker import read_run_file
from dsr_tune.train import train
from dsr_tune.runfolder import read_records

from conftest import ROOT
FAST = ["train.epochs=2", "optim.milestones=[1]", "sparsity.period_schedule=[[0, 10]]", "sparsity.stop_epoch=2",
        "sparsity.dsr.target_pruned=100", "train.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TimedLogger:
    """Passes every call on to a logger and records how long it kept the trainer waiting."""

    def __init__(self, inner):
        self.inner, self.waits, self.close_s = inner, [], None

    def log_params(self, params: dict) -> None:
        t0 = time.perf_counter()
        self.inner.log_params(params)
        self.waits.append(time.perf_counter() - t0)

    def log_record(self, record: dict) -> None:
        t0 = time.perf_counter()
        self.inner.log_record(record)
        self.waits.append(time.perf_counter() - t0)

    def close(self, status: str = "FINISHED") -> None:
        t0 = time.perf_counter()
        self.inner.close(status)
        self.close_s = time.perf_counter() - t0


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
    identity = {"key": "search/t1", "run_name": "dsr s0.9 seed0 t1",  # a reported run: it gets an MLflow model
                "tags": {"method": "dsr", "role": "selected", "seed": 0, "sparsity": "0.9"}}
    run_id = tracker.child(run_dir, identity)
    # the worker's logger, as if the trial had got a run id before the server went away
    logger = MlflowLoggerSpec(dead, str(run_dir), run_id="0123456789abcdef").make()
    timed = TimedLogger(logger)
    record = train(C.load(ROOT / "configs" / "digits.yaml", FAST), run_dir, loggers=[timed], progress=False)
    ok = tracker.finish(run_dir, run_id, "FINISHED")
    (root / SWEEP_FILE).write_text(json.dumps({"sweep_id": "offline-1", "status": "FINISHED",
                                               "tracker": tracker.to_json()}))
    return dict(root=root, run_dir=run_dir, error=error, connect_s=connect_s, run_id=run_id, logger=logger,
                timed=timed, record=record, ok=ok, dead=dead)


def test_unreachable_server_does_not_stop_training(offline_sweep):
    o = offline_sweep
    assert o["error"] and "unreachable" in o["error"] and o["connect_s"] < 10
    assert o["run_id"] is None and not o["ok"] and not o["logger"].online
    # training never waited for MLflow: a logger that called the dead server in line would hold
    # the trainer >= 2 s on its first call (a refused connection, 2 fast retries), here every call
    # only queues; close() waits for the background thread, which gave up long before
    t = o["timed"]
    # (1.5 s: far below the 2 s an inline call costs, far above a queue put on a loaded 2-core machine)
    assert len(t.waits) >= 3 and max(t.waits) < 1.5, t.waits
    assert t.close_s is not None and t.close_s < 10
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
    first = [t for r in records[:records.index(epochs[0]) + 1] for t in mlflow_runs.record_metrics(r)]
    rid = mlflow_runs.find_or_create(client, exp, "offline-1/search/t1", "dsr s0.9 seed0 t1", {"sweep": "offline-1"})
    mlflow_runs.log_metrics(client, rid, first)

    s = sync_sweep(o["root"], uri=uri)
    assert s.runs == 1 and s.created == 0 and s.params > 50 and s.artifacts >= 3 and not s.failed
    c = MlflowClient(uri)
    run = c.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "dsr"
    assert run.data.tags["mlflow.parentRunId"] and run.data.tags["git_revision"] == "abc123"
    assert run.data.params["sparsity.method"] == "dsr"
    hist = c.get_metric_history(rid, "epoch/test_acc")
    assert sorted(m.step for m in hist) == [1, 2]  # epoch 1 was there already: not logged twice
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx([r["test_acc"] for r in epochs])
    assert sorted(m.step for m in c.get_metric_history(rid, "realloc/threshold")) == [r["step"] for r in reallocs]
    arts = {a.path for a in c.list_artifacts(rid)} | {a.path for a in c.list_artifacts(rid, "export")}
    assert {"config.yaml", "density.png", "export/model.sparse.pt"} <= arts
    # the run's cost: cumulative FLOPs and time per epoch, the device, the export's size
    flops = sorted(c.get_metric_history(rid, "epoch/train_flops"), key=lambda m: m.step)
    assert [m.value for m in flops] == [float(r["train_flops"]) for r in epochs] and flops[0].value > 0
    assert run.data.metrics["epoch/infer_flops"] == epochs[-1]["infer_flops"]
    assert run.data.metrics["epoch/train_time"] == pytest.approx(sum(r["epoch_time"] for r in epochs))
    assert sorted(m.step for m in c.get_metric_history(rid, "realloc/realloc_time")) == [r["step"] for r in reallocs]
    assert run.data.params["device"] == "cpu"
    assert run.data.metrics["export_bytes"] == (o["run_dir"] / "model.sparse.pt").stat().st_size
    assert read_run_file(o["run_dir"])["mlflow_model"].startswith("models:/")  # and the MLflow model
    import mlflow  # its logged model: named after the run, the last epoch's metrics linked to it

    mlflow.set_tracking_uri(uri)  # search_logged_models reads the global URI
    (model,) = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
    assert model.name == "dsr-s0_9-seed0" and model.source_run_id == rid
    linked = {m.key: m for m in model.metrics}
    assert linked["epoch/test_acc"].step == 2 and linked["epoch/test_acc"].value == pytest.approx(epochs[-1]["test_acc"])
    assert model.params["sparsity.method"] == "dsr" and model.tags["mlflow.source.name"] == "dsr-tune"
    info = mlflow.models.get_model_info(read_run_file(o["run_dir"])["mlflow_model"])
    assert info.saved_input_example_info and list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == \
        [-1, 1, 8, 8]
    assert read_run_file(o["run_dir"])["synced"] is True and not (o["run_dir"] / OFFLINE_FILE).exists()
    parent = c.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["role"] == "parent" and parent.info.status == "FINISHED"

    before = [(r.info.status, r.info.end_time, r.data.tags) for r in (c.get_run(rid), parent)]
    again = sync_sweep(o["root"], uri=uri, everything=True)
    assert again.runs == 1 and again.created == again.metrics == again.params == again.artifacts == 0
    after = [c.get_run(x.info.run_id) for x in (run, parent)]  # closed once: the same end time, the same tags
    assert [(r.info.status, r.info.end_time, r.data.tags) for r in after] == before
    assert len(c.get_metric_history(rid, "epoch/test_acc")) == 2
    assert len(c.get_metric_history(rid, "export_bytes")) == 1


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
    assert sorted(m.step for m in c.get_metric_history(rid, "epoch/test_acc")) == [1, 2, 3]
    assert [(m.step, m.value) for m in c.get_metric_history(rid, "realloc/pruned")] == [(30, 7.0)]
    assert c.get_metric_history(rid, "density/conv.weight")[0].value == pytest.approx(0.1)
    assert first.online and second.online


def test_a_server_that_died_mid_sweep_costs_a_trial_one_quick_probe(tmp_path):
    # connected when the sweep started (ids set); now nothing listens there: each trial-side call
    # gives up after one /health probe instead of importing mlflow and retrying every request
    tracker = SweepTracker(store.resolve(f"http://127.0.0.1:{free_port()}"), "e", "s-1", experiment_id="1",
                           parent_id="0123")
    run_dir = tmp_path / "runs" / "search" / "t1"
    identity = {"key": "search/t1", "run_name": "t1", "tags": {"role": "search"}}
    t0 = time.perf_counter()
    assert tracker.child(run_dir, identity) is None
    assert tracker.finish(run_dir, "4567", "KILLED", replay=True) is False
    assert time.perf_counter() - t0 < 2.0  # two refused probes; MLflow's own calls would take ~3 s each
    info = read_run_file(run_dir)
    assert info["status"] == "KILLED" and info["synced"] is False and "unreachable" in info["error"]


def test_credentials_in_a_tracking_uri_are_never_written_down(tmp_path, monkeypatch):
    from dsr_tune.sweep import folder as driver, spec as space

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    secret_uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    plain = secret_uri.replace("alice:s3cret@", "")
    tracker = SweepTracker(store.resolve(secret_uri), "e", "s-1")
    assert tracker.to_json()["target"]["uri"] == plain
    back = SweepTracker.from_json(tracker.to_json())
    assert store.with_credentials(back.target, secret_uri).uri == secret_uri  # put back from the user's URI
    assert store.with_credentials(back.target, "http://bob:x@elsewhere:5000").uri == plain
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    assert store.with_credentials(back.target).uri == secret_uri  # ... or from the environment
    error = tracker.connect()  # the probe and the messages name the server without the password
    assert error and "unreachable" in error and "s3cret" not in error
    assert "s3cret" not in store.describe(RuntimeError(f"API request to {secret_uri}/api failed"), secret_uri)
    sp = space.load(ROOT / "search_spaces" / "digits_demo.yaml", [f"tracking.uri={secret_uri}"])
    driver.prepare(sp, tmp_path / "sweep", resume=False, overwrite=False)
    written = (tmp_path / "sweep" / SWEEP_FILE).read_text()
    assert "s3cret" not in written and plain in written
    assert driver.prepare(sp, tmp_path / "sweep", resume=True, overwrite=False)  # the same space on resume


def test_embedded_store_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = store.resolve(None, cwd=tmp_path)
    assert t.uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db" and t.artifact_root == (tmp_path / "mlruns" / "artifacts").as_uri()
    rel = store.resolve("sqlite:///sub/x.db", cwd=tmp_path)
    assert rel.uri == f"sqlite:///{tmp_path}/sub/x.db" and rel.embedded
    assert not store.resolve("http://h:5000").embedded and store.resolve("http://h:5000").remote


def test_a_store_given_as_a_path(tmp_path, monkeypatch):
    """--tracking-uri / tracking.uri: a plain sqlite file or a folder holding mlflow.db is that store; a
    missing path, a file that is not sqlite or a scheme with no store here is a ConfigError naming it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "st" / "mlflow.db"
    store.client(store.resolve(f"sqlite:///{db}")).search_experiments()  # makes the store
    want = store.resolve(f"sqlite:///{db}")
    assert want.uri == f"sqlite:///{db}" and want.embedded
    for given in (str(db), str(db.parent), "st", "st/mlflow.db", db.as_uri()):
        assert store.resolve(given, cwd=tmp_path) == want, given
    monkeypatch.chdir(tmp_path)
    assert store.resolve("st") == want
    (tmp_path / "notes.txt").write_text("not a database")
    (tmp_path / "empty").mkdir()
    for given, why in (("nope.db", "no such file"), ("notes.txt", "not an SQLite"), ("empty", "holds no mlflow.db"),
                       ("ftp://host/x", "ftp://"), ("s3://bucket/mlflow.db", "s3://")):
        with pytest.raises(C.ConfigError, match=why) as exc:
            store.resolve(given, key="tracking.uri")
        assert exc.value.key == "tracking.uri" and given in str(exc.value)
    for kept in ("http://h:5000", "https://h", "postgresql://u@h/db", "mysql+pymysql://u@h/db"):
        assert store.resolve(kept).uri == kept and not store.resolve(kept).embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://x")  # a bad environment is named as such
    with pytest.raises(C.ConfigError) as exc:
        store.resolve(None)
    assert exc.value.key == "MLFLOW_TRACKING_URI"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(db))
    assert store.resolve(None) == want


def test_sync_creates_the_parent_run_a_live_sweep_makes(tmp_path, monkeypatch):
    """MLflow down when the sweep started: the parent that sync creates later has the
    live parent's params and tags (the same sweep, logged once live and once by sync)."""
    from mlflow import MlflowClient

    from dsr_tune.sweep import folder as driver, spec as space
    from dsr_tune.sweep.folder import open_tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    live_uri, later_uri = (f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("live", "later"))
    sp = space.load(ROOT / "search_spaces" / "digits_demo.yaml", [f"tracking.uri={live_uri}", "search.samples=3"])
    out = tmp_path / "sweep"
    meta = driver.prepare(sp, out, resume=False, overwrite=False)
    live = open_tracker(sp, out, meta, resume=False)  # MLflow up: the parent is made live
    assert live.parent_id
    s = sync_sweep(out, uri=later_uri)  # a store that never saw the sweep: sync makes its parent
    assert s.runs == 0 and not s.failed

    def parent(uri):
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("digits_demo").experiment_id],
                                    filter_string="tags.role = 'parent'")
        return run

    a, b = parent(live_uri), parent(later_uri)
    assert len(a.data.params) > 50 and a.data.params["search.samples"] == "3"
    assert b.data.params == a.data.params
    assert b.data.tags == a.data.tags and b.info.run_name == a.info.run_name
    assert sync_sweep(out, uri=later_uri).params == 0  # the second sync logs nothing again


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
    rid = mlflow_runs.find_or_create(client, exp, "s-1/search/t", "t", {})
    logger.close()
    assert logger.online and logger.run_id == rid
    assert [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(rid, "epoch/test_acc")] == [(1, 0.5)]


def test_mlflow_telemetry_is_off_in_every_process_that_imports_dsr_tune_unless_the_user_set_it():
    """MLflow 3.17's telemetry thread, failing to reach its server, removes an environment
    variable while logging threads read the environment (a trial's live logging lost to that
    KeyError under load): dsr_tune turns it off before mlflow is imported, and leaves a
    user's own setting alone."""
    import os
    import subprocess
    import sys

    probe = ("import dsr_tune, mlflow, os; from mlflow.telemetry import get_telemetry_client; "
             "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client() is None)")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["true", "True"], out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", "import dsr_tune, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"],
                         env={**env, "MLFLOW_DISABLE_TELEMETRY": "false"}, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "false", out.stderr[-2000:]
