"""What ``--resume`` accepts (README, "Resume"): another train.epochs (longer, or
shorter down to the epochs already trained) and train.stop_after; schedules
left null follow the new length from the resumed epoch on. Anything else that
differs is refused in one line naming the key as the user wrote it: a config
left null compares as null, so a DSR run never hears of sparsity.deepr.*."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsr_tune import checkpoint as ckpt
from dsr_tune import cli, config as C, runfolder
from dsr_tune.records import TIMED
from dsr_tune.cli.train import _changed_keys
from dsr_tune.train import train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
# schedules left null: they follow train.epochs (40 iterations per epoch on digits)
NULL = ["optim.milestones=[]", "sparsity.period_schedule=null", "sparsity.stop_epoch=null", "train.threads=1",
        "data.loader_workers=0"]
TIMING = set(TIMED)


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runfolder.read_records(run_dir)]


def _run(out: Path, *keys: str, resume: bool = False) -> int:
    return cli.main(["train", DIGITS, *NULL, *keys, "--output", str(out), *(["--resume"] if resume else [])])


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_run_resumed_longer_before_its_schedules_part_is_the_run_of_the_new_length(tmp_path):
    """8 and 16 epochs share the first epoch's period (100 iterations from epoch 0;
    the next start is epoch 1 of 8, 2 of 16): stopped after epoch 1 and resumed at
    16 epochs, the run is the 16-epoch run, weights, masks and records."""
    straight, grown = tmp_path / "straight", tmp_path / "grown"
    assert _run(straight, "train.epochs=16", "train.stop_after=4") == 0
    assert _run(grown, "train.epochs=8", "train.stop_after=1") == 0
    assert _run(grown, "train.epochs=16", "train.stop_after=4", resume=True) == 0
    assert _records(grown) == _records(straight)
    a, b = ckpt.load(grown), ckpt.load(straight)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    saved = C.load(grown / runfolder.CONFIG)  # the run's config now holds the schedules of its new length
    assert saved.train.epochs == 16 and saved.sparsity.stop_epoch == 15
    assert saved.sparsity.period_schedule == [[0, 100], [2, 200], [6, 400], [11, 800]]


def test_a_run_resumed_longer_follows_the_new_schedule_from_the_resumed_epoch(tmp_path):
    """Resumed at epoch 3: of 8 epochs the period there is 400 iterations (from
    epoch 3), of 16 it is 200 (epochs 2-5). The epochs trained keep the old one."""
    run = tmp_path / "run"
    assert _run(run, "train.epochs=8", "train.stop_after=3") == 0
    # epochs 0-2 of 8 (steps 1-120): 100 in epoch 0, 200 in epochs 1-2: no multiple falls in its epoch
    assert [r for r in runfolder.read_records(run) if r["kind"] == "realloc"] == []
    assert _run(run, "train.epochs=16", "train.stop_after=6", resume=True) == 0
    steps = [r["step"] for r in runfolder.read_records(run) if r["kind"] == "realloc"]
    assert steps == [200]  # epochs 3-5 (steps 121-240) of 16: every 200; 8's 400 would give none


def test_a_run_resumed_shorter_stops_at_the_new_length_and_not_below_what_it_trained(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(run, "train.epochs=8", "train.stop_after=3") == 0
    capsys.readouterr()
    assert _run(run, "train.epochs=2", resume=True) == 2
    line = _one_error(capsys)
    assert "train.epochs: 2 is below the 3 epochs" in line and "train.epochs >= 3" in line, line
    assert ckpt.load(run)["epoch"] == 3 and [r["epoch"] for r in runfolder.epochs(run)] == [0, 1, 2]  # untouched
    assert _run(run, "train.epochs=5", resume=True) == 0
    assert ckpt.load(run)["epoch"] == 5 and C.load(run / runfolder.CONFIG).sparsity.stop_epoch == 5


def test_a_deepr_run_resumed_longer_takes_the_temperatures_of_its_new_length(tmp_path):
    run = tmp_path / "run"
    assert _run(run, "sparsity.method=deepr", "train.epochs=8", "train.stop_after=1") == 0
    assert C.load(run / runfolder.CONFIG).sparsity.deepr.temperatures[1][0] == 1  # 12.5% of 8
    assert _run(run, "sparsity.method=deepr", "train.epochs=16", "train.stop_after=2", resume=True) == 0
    assert C.load(run / runfolder.CONFIG).sparsity.deepr.temperatures[1][0] == 2  # 12.5% of 16
    assert [r["epoch"] for r in runfolder.epochs(run)] == [0, 1]


def test_a_changed_key_is_refused_by_its_own_name_only(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(run, "train.epochs=8", "train.stop_after=1") == 0
    capsys.readouterr()
    assert _run(run, "train.epochs=16", "sparsity.sparsity=0.8", resume=True) == 2
    line = _one_error(capsys)
    assert "--resume" in line and "sparsity.sparsity (0.9 in the run, 0.8 now)" in line, line
    for derived in ("deepr", "period_schedule", "stop_epoch", "temperatures"):
        assert derived not in line, line  # never a key the user did not set
    # a schedule given now that the run had left null is a change, named
    assert _run(run, "train.epochs=8", "sparsity.stop_epoch=6", resume=True) == 2
    assert "sparsity.stop_epoch (8 in the run, 6 now)" in _one_error(capsys)
    assert ckpt.load(run)["epoch"] == 1


def test_schedules_compare_as_written():
    at = lambda *keys: C.load(DIGITS, [*NULL, *keys])  # noqa: E731
    # left null on both sides: they follow train.epochs, no change
    assert _changed_keys(at("train.epochs=8"), at("train.epochs=16")) == []
    # a DeepR run likewise, its temperatures included
    assert _changed_keys(at("sparsity.method=deepr", "train.epochs=8"),
                         at("sparsity.method=deepr", "train.epochs=16")) == []
    # the old schedule given explicitly keeps it: the same values, no change
    old = at("train.epochs=8")
    kept = at("train.epochs=16", f"sparsity.period_schedule={old.sparsity.period_schedule}",
              f"sparsity.stop_epoch={old.sparsity.stop_epoch}")
    assert _changed_keys(old, kept) == []
    # explicit on both sides (digits.yaml's own schedule) and unchanged
    assert _changed_keys(C.load(DIGITS), C.load(DIGITS, ["train.epochs=60"])) == []
    # another explicit schedule is a change, named
    changed = _changed_keys(at("train.epochs=8"), at("train.epochs=8", "sparsity.period_schedule=[[0, 50]]"))
    assert [c.split(" ")[0] for c in changed] == ["sparsity.period_schedule"]


@pytest.mark.parametrize("keys", [("train.epochs=30",), ("train.epochs=60", "train.stop_after=40")])
def test_follows_epochs_names_only_schedule_keys(keys):
    cfg = C.load(DIGITS, [*NULL, *keys])
    assert C.follows_epochs(cfg) == {"sparsity.period_schedule", "sparsity.stop_epoch", "sparsity.deepr.temperatures"}
    assert C.follows_epochs(C.load(DIGITS, list(keys))) == {"sparsity.deepr.temperatures"}  # digits.yaml sets both
