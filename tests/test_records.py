"""The shared vocabulary (dsr_tune.records): the records the trainer writes are the ones
declared, what MLflow logs and what a sweep selects on derive from them, statuses and
roles are the strings MLflow and the run folders hold."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from dsr_tune import config as C
from dsr_tune import records as R
from dsr_tune.runfolder import read_records
from dsr_tune.train import train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")


def test_the_trainers_records_are_the_declared_ones(tmp_path):
    cfg = C.load(DIGITS, ["train.epochs=1", "optim.milestones=[]", "sparsity.period_schedule=[[0, 10]]",
                          "sparsity.stop_epoch=1", "sparsity.dsr.target_pruned=100"])
    train(cfg, tmp_path, progress=False)
    records = read_records(tmp_path)
    (epoch,) = [r for r in records if r["kind"] == R.EPOCH]
    reallocs = [r for r in records if r["kind"] == R.REALLOC]
    assert set(epoch) <= set(R.EpochRecord.__annotations__), set(epoch) - set(R.EpochRecord.__annotations__)
    assert set(R.EPOCH_METRICS) <= set(epoch)  # digits: 10 classes, a validation split: every metric is written
    assert reallocs and all(set(R.ReallocRecord.__annotations__) - {"reallocations"} <= set(r) for r in reallocs)
    for layer in reallocs[0]["layers"].values():
        assert set(layer) == set(R.LayerCounts.__annotations__)


def test_metric_names_derive_from_the_schema():
    from dsr_tune.sweep.spec import Search
    from dsr_tune.tracking import mlflow_runs as runs

    assert runs.EPOCH_KEYS == R.EPOCH_METRICS and runs.REALLOC_KEYS == R.REALLOC_METRICS
    assert "kind" not in R.EPOCH_METRICS and "density" not in R.EPOCH_METRICS and "total_params" not in R.EPOCH_METRICS
    assert typing.get_args(Search.model_fields["metric"].annotation) == R.SCORES
    assert R.SCORES == ("test_acc", "test_acc5", "test_loss", "train_loss", "train_acc", "val_acc", "val_acc5",
                        "val_loss")
    names = {k for k, _, _ in runs.record_metrics({"kind": R.REALLOC, "step": 5, "threshold": 0.1, "layers": {
        "a": {"pruned": 2, "grown": 2, "nonzero": 20}, "b": {"pruned": 1, "grown": 1, "nonzero": 10}}})}
    assert names == {"realloc/threshold", "realloc/pruned", "realloc/grown", "realloc/turnover"}
    totals = {k: v for k, v, _ in runs.record_metrics({"kind": R.REALLOC, "step": 5, "layers": {
        "a": {"pruned": 2, "grown": 2, "nonzero": 20}, "b": {"pruned": 1, "grown": 1, "nonzero": 10}}})}
    assert totals["realloc/pruned"] == 3.0 and totals["realloc/grown"] == 3.0  # summed from the layers


def test_statuses_and_roles_are_the_strings_they_stand_for():
    assert R.Status.FINISHED == "FINISHED" and f"{R.Status.KILLED}" == "KILLED"
    assert json.dumps({"status": R.Status.RUNNING, "role": R.Role.PARENT}) == '{"status": "RUNNING", "role": "parent"}'
    assert set(R.TERMINAL) == {"FINISHED", "FAILED", "KILLED"} and "RUNNING" not in R.TERMINAL
    assert set(R.SCORED) == {"FINISHED", "KILLED"}
    assert {r.value for r in R.Role} == {"parent", "search", "selected", "baseline", "dense"}
    assert R.turnover({"pruned": 30, "layers": {"a": {"nonzero": 200}, "b": {"nonzero": 100}}}) == 0.1
    assert R.turnover({"pruned": 3, "layers": {}}) is None
