"""What a trial spends outside its epochs (issue 22): the timing a job records for
benchmarks/bench_sweep.py, Tune reports only as often as something acts on them, and
no MLflow model for a search trial."""

import json

import pytest

from dsr_tune.records import Role
from dsr_tune.sweep import spec as S
from dsr_tune.sweep.jobs import SweepContext
from dsr_tune.tracking import SweepTracker, store

from conftest import DEMO

SHORT = ["train.epochs=3", "optim.milestones=[2]", "sparsity.period_schedule=[[0, 15]]", "sparsity.stop_epoch=2",
         "model.width=0.25"]


@pytest.mark.parametrize("every,expected", [(0.0, [0, 1, 2, 3, 4, 5]), (2.0, [0, 5]), (None, [0, 1, 2, 3, 4, 5])])
def test_a_trial_reports_each_epoch_only_when_asked(monkeypatch, every, expected):
    """Without ASHA a trial reports at most every 2 s, and always its last epoch;
    a context pickled before the setting existed reports every epoch."""
    from ray import tune

    from dsr_tune.sweep import trial

    sp = S.load(DEMO, ["train.epochs=6", "optim.milestones=[4]", "sparsity.period_schedule=[[0, 15]]",
                       "sparsity.stop_epoch=5"])
    ctx = SweepContext("/x", sp.base.to_dict(), 0, None)
    if every is None:
        del ctx.__dict__["report_every_s"]  # as unpickled from an older sweep
    else:
        ctx.report_every_s = every
    job = ctx.search_job({"method": "dsr", "job": "search/dsr/t1"})
    reported = []
    monkeypatch.setattr(tune, "report", lambda metrics: reported.append(metrics["epochs_done"] - 1))

    def fake_run_job(ctx, job, *, on_epoch_end, **kw):  # six epochs in a moment
        for e in range(6):
            on_epoch_end({"kind": "epoch", "epoch": e, "step": e, "test_acc": 0.5}, None)
        return {}, True
    monkeypatch.setattr(trial, "run_job", fake_run_job)
    trial._local_trial(ctx, job, 0.0)
    assert reported == expected


def test_a_job_records_its_timing_and_a_search_trial_logs_no_model(tmp_path):
    """run_job writes wall and CPU marks (began, each epoch's end, trained, closed) into
    tracking.json; a search trial's MLflow run gets its export but no logged model, a
    reported run gets both."""
    from mlflow import MlflowClient

    from dsr_tune.sweep.trial import run_job

    sp = S.load(DEMO, SHORT)
    tracker = SweepTracker(store.resolve(f"sqlite:///{tmp_path / 'mlflow.db'}"), "cost", "cost-1")
    assert tracker.connect({"a": 1}) is None
    ctx = SweepContext(str(tmp_path / "sweep"), sp.base.to_dict(), 0, tracker)
    search = ctx.search_job({"method": "dsr", "sparsity.sparsity": 0.9, "job": "search/dsr/s0.9-t1"})
    run_job(ctx, search)
    info = json.loads((ctx.run_dir(search.key) / "tracking.json").read_text())
    t = info["timing"]
    assert len(t["epochs"]) == 3 and info["logged_model"] is False
    marks = [t["began"], *t["epochs"], t["trained"], t["closed"]]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(marks, marks[1:]))  # wall and CPU never go back
    client = MlflowClient(tracker.target.uri)
    arts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert "export" in arts and "model" not in arts and "mlflow_model" not in info

    reported = ctx.search_job({"method": "dsr", "sparsity.sparsity": 0.9, "job": "search/dsr/s0.9-t2"})
    reported.role = Role.SELECTED  # a row of the report: the same job, kept as a model
    run_job(ctx, reported)
    info = json.loads((ctx.run_dir(reported.key) / "tracking.json").read_text())
    assert info["logged_model"] is True and info["mlflow_model"].startswith("models:/")
    assert not info["timing"]["first_in_process"]
