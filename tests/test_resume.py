"""Interrupted sweeps end with the answer of uninterrupted ones, and storage faults stop them.

Fast: a run folder that cannot be written (no space left) marks its run FAILED with the
reason and stops the comparison with one line; run again, it finishes. Slow: a small
digits sweep run straight through, then the same sweep SIGKILLed at several points and
resumed each time (crafted pickles planted in its Tune folders before every resume), and
a soak against a real MLflow server with seeded faults; each ends with the straight
run's selections and report, every run once in MLflow.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from dsr_tune import cli

from conftest import DIGITS

FAST = ["train.epochs=2", "optim.milestones=[1]", "sparsity.period_schedule=[[0, 10]]", "sparsity.stop_epoch=2",
        "sparsity.dsr.target_pruned=100", "train.threads=1"]


def test_a_full_disk_stops_the_comparison_with_one_line_and_it_resumes(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    from dsr_tune import checkpoint
    from dsr_tune.tracking.mlflow_runs import read_run_file

    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cmp"
    argv = ["compare", DIGITS, *FAST, "--sparsity", "0.9", "--seeds", "1", "--methods", "dsr,static_1x",
            "--output", str(out), "--tracking-uri", uri]
    full = out / "runs" / "paired" / "static_1x"
    real = checkpoint.atomic_write

    def no_space(path, data):
        if Path(path).is_relative_to(full) and Path(path).name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", no_space)
    assert cli.main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "No space left on device" in err[0] and "paired/static_1x/s0.9/seed0" in err[0], err
    assert "--resume" not in err[0] and "dsr-tune compare" in err[0]  # a comparison continues by running it again
    dsr, static = out / "runs" / "paired" / "dsr" / "s0.9" / "seed0", full / "s0.9" / "seed0"
    assert read_run_file(dsr)["status"] == "FINISHED"  # what finished is kept
    info = read_run_file(static)
    assert info["status"] == "FAILED" and "No space left on device" in info["failure"]
    client = MlflowClient(uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["failure"]
    assert json.loads((out / "sweep.json").read_text())["status"] == "KILLED"
    kept = (dsr / "metrics.jsonl").read_bytes()

    monkeypatch.setattr(checkpoint, "atomic_write", real)  # room again
    assert cli.main(argv) == 0
    assert (dsr / "metrics.jsonl").read_bytes() == kept  # not trained again
    info = read_run_file(static)
    assert info["status"] == "FINISHED" and info.get("failure") is None
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and "failure" not in run.data.tags


def test_a_storage_fault_reported_by_a_trial_stops_the_phase():
    """Tune's side: the trial reports the fault as its result; the stopper ends the phase."""
    from dsr_tune.sweep.trial import FAULT, storage_fault
    from dsr_tune.sweep.tune import Halt

    halt = Halt()
    assert not halt("t1", {"val_acc": 0.9}) and not halt.stop_all()
    assert halt("t2", {FAULT: "search/dsr/t2: No space left on device: /x/checkpoint.pt"}) and halt.stop_all()
    assert halt.reason == "search/dsr/t2: No space left on device: /x/checkpoint.pt"
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/ro/metrics.jsonl")
        except OSError as inner:
            raise RuntimeError("while saving") from inner
    except RuntimeError as exc:
        assert storage_fault(exc) == "Read-only file system: /ro/metrics.jsonl"  # found behind a cause
    assert storage_fault(OSError(errno.ECONNREFUSED, "refused")) is None and storage_fault(ValueError()) is None
