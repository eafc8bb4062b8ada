"""``dsr-tune train`` in MLflow: every run logged to the sweeps' store by default
(experiment after the config, run after the run folder), its metrics, params,
artifacts and a logged model named after it with the final metrics linked;
``--resume`` continuing the same MLflow run; ``--no-mlflow``; a store given as a
path; MLflow down costing one warning, ``dsr-tune sync RUN_DIR`` logging the run
later, exactly once."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from dsr_tune import cli
from dsr_tune.runfolder import epochs as epoch_records
from dsr_tune.tracking.mlflow_runs import read_run_file

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
SHORT = ["train.epochs=3", "optim.milestones=[]", "sparsity.period_schedule=null", "sparsity.stop_epoch=null",
         "train.threads=1"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _runs(db: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client, exp, client.search_runs([exp.experiment_id]) if exp else []


def test_a_run_is_logged_and_resume_continues_it(here, capsys):
    import mlflow

    out = here / "runs" / "short"
    assert cli.main(["train", DIGITS, *SHORT, "train.stop_after=1", "--output", str(out)]) == 0
    first = read_run_file(out)
    assert first["kind"] == "train" and first["status"] == "KILLED" and first["synced"] is True
    assert "MLflow: run 'short' in experiment 'digits'" in capsys.readouterr().out
    db = here / "mlruns" / "mlflow.db"  # the default store, as for sweeps
    client, exp, (run,) = _runs(db, "digits")
    assert run.info.run_id == first["run_id"] and run.info.run_name == "short" and run.info.status == "KILLED"
    mlflow.set_tracking_uri(f"sqlite:///{db}")  # search_logged_models reads the global URI
    assert not mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")  # cut short

    assert cli.main(["train", DIGITS, *SHORT, "--output", str(out), "--resume"]) == 0
    _, _, runs = _runs(db, "digits")
    assert [r.info.run_id for r in runs] == [first["run_id"]]  # the same MLflow run, continued
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    records = epoch_records(out)
    history = sorted(client.get_metric_history(run.info.run_id, "epoch/test_acc"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3]  # each epoch once, the first part's too
    assert [m.value for m in history] == pytest.approx([r["test_acc"] for r in records])
    assert run.data.params["train.epochs"] == "3" and run.data.params["sparsity.method"] == "dsr"
    tags = run.data.tags
    assert tags["role"] == "train" and tags["method"] == "dsr" and tags["sparsity"] == "0.9" and tags["seed"] == "0"
    assert "dsr-tune train" in tags["mlflow.note.content"] and tags["dsr_tune.run"].startswith("train/")
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "density.png", "export"} <= arts
    # the logged model: named after the run, the final epoch's metrics linked, an input example kept
    (model,) = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert model.name == "dsr-s0_9-seed0" and model.source_run_id == run.info.run_id
    linked = {m.key: m for m in model.metrics}
    assert linked["epoch/val_acc"].step == 3 and linked["epoch/val_acc"].value == pytest.approx(records[-1]["val_acc"])
    assert mlflow.models.get_model_info(read_run_file(out)["mlflow_model"]).saved_input_example_info


def test_no_mlflow_and_a_store_given_as_a_path(here):
    off = here / "off"
    assert cli.main(["train", DIGITS, *SHORT, "train.stop_after=1", "--no-mlflow", "--output", str(off)]) == 0
    assert not (here / "mlruns").exists() and not (off / "tracking.json").exists()
    # a folder holding mlflow.db, and the file itself, name the same store
    store_dir = here / "store"
    store_dir.mkdir()
    from dsr_tune.tracking import store

    store.client(store.resolve(f"sqlite:///{store_dir / 'mlflow.db'}")).search_experiments()  # an empty store
    for arg, name in ((str(store_dir), "a"), (str(store_dir / "mlflow.db"), "b")):
        assert cli.main(["train", DIGITS, *SHORT, "train.stop_after=1", "--tracking-uri", arg,
                         "--output", str(here / name)]) == 0
        assert read_run_file(here / name)["uri"] == f"sqlite:///{store_dir / 'mlflow.db'}"
    _, _, runs = _runs(store_dir / "mlflow.db", "digits")
    assert sorted(r.info.run_name for r in runs) == ["a", "b"] and not (here / "mlruns").exists()


def test_mlflow_down_costs_one_warning_and_sync_logs_the_run_later(here, capsys, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    out = here / "offline"
    assert cli.main(["train", DIGITS, *SHORT, "--tracking-uri", dead, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "test accuracy" in captured.out and f"dsr-tune sync {out}" in captured.out
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "unreachable" in r.getMessage()]
    assert len(warned) == 1 and "unreachable" not in captured.err  # one warning, training went on
    info = read_run_file(out)
    assert info["status"] == "FINISHED" and info["synced"] is False and "unreachable" in info["error"]

    db = here / "back" / "mlflow.db"
    assert cli.main(["sync", str(out), "--tracking-uri", f"sqlite:///{db}"]) == 0
    assert "1 MLflow run(s) created" in capsys.readouterr().out
    client, _, (run,) = _runs(db, "digits")
    assert run.info.status == "FINISHED" and run.info.run_name == "offline"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch/test_acc")) == [1, 2, 3]
    assert read_run_file(out)["mlflow_model"].startswith("models:/")
    assert cli.main(["sync", str(out), "--tracking-uri", f"sqlite:///{db}"]) == 0
    again = capsys.readouterr().out
    assert "0 MLflow run(s) created, 0 params, 0 metric values, 0 artifacts" in again, again
    assert json.loads((out / "tracking.json").read_text())["synced"] is True
