"""Hard edges of a run folder: no record lost after any kill, stale temporary
files removed, a folder without a complete checkpoint starting afresh, and
no code run from a crafted file (checkpoint, init.pt, export, mask_from)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsr_tune import checkpoint as ckpt
from dsr_tune import cli, config as C, runfolder
from dsr_tune.records import TIMED
from dsr_tune.train import train

from conftest import DIGITS, ROOT, CraftedPickle
FAST = ["train.epochs=3", "optim.milestones=[2]", "sparsity.period_schedule=[[0, 7]]", "sparsity.stop_epoch=3",
        "sparsity.dsr.target_pruned=100", "train.threads=1"]
TIMING = set(TIMED)  # the only fields two runs of the same config may differ in


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runfolder.read_records(run_dir)]


class _Killed(BaseException):
    """A kill at a chosen instant (BaseException: nothing in the trainer catches it)."""


def test_a_kill_between_the_checkpoint_and_the_log_loses_no_record(tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(C.load(DIGITS, FAST), straight, progress=False)

    from dsr_tune.train import metrics

    real = metrics.JsonlLogger.log_record

    def dies_on_epoch_1(self, record):
        if record.get("kind") == "epoch" and record["epoch"] == 1:
            raise _Killed  # epoch 1's checkpoint is on disk, its record not yet in metrics.jsonl
        real(self, record)

    monkeypatch.setattr(metrics.JsonlLogger, "log_record", dies_on_epoch_1)
    with pytest.raises(_Killed):
        train(C.load(DIGITS, FAST), killed, progress=False)
    monkeypatch.undo()
    assert ckpt.load(killed)["epoch"] == 2 and [r["epoch"] for r in runfolder.epochs(killed)] == [0]
    train(C.load(DIGITS, FAST), killed, resume=True, progress=False)
    got, want = _records(killed), _records(straight)
    assert [r["epoch"] for r in got if r["kind"] == "epoch"] == [0, 1, 2]  # exactly one record per epoch
    assert got == want  # and per reallocation: the same log as the run that was never killed


def test_stale_temporary_files_are_removed_at_the_next_start(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".checkpoint.pt.tmp-999999"  # a pid that is not running
    stale.write_bytes(b"half a checkpoint")
    mine = tmp_path / f".notes.txt.tmp-{os.getpid()}"  # a live writer's: kept
    mine.write_text("in use")
    train(C.load(DIGITS, [*FAST, "train.stop_after=1"]), tmp_path, progress=False)
    assert not stale.exists() and mine.exists()


def _killed_writer(path: Path) -> Path:
    """A process SIGKILLed in the middle of ``runfolder.atomic_write(path)``; returns the temporary it left."""
    code = ("import os, signal, sys\nfrom dsr_tune import runfolder\n"
            "def half(f):\n    f.write(b'half a file'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "runfolder.atomic_write(sys.argv[1], half)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL
    left = [p for p in path.parent.iterdir() if runfolder.temp_writer(p.name) is not None]
    assert len(left) == 1 and left[0].name.startswith(f".{path.name}.tmp-") and not path.exists()
    return left[0]


def _live_writers(folder: Path) -> Path:
    mine = folder / f".notes.txt.tmp-{os.getpid()}"  # a temporary whose writer runs (this process)
    mine.write_text("in use")
    return mine


def test_a_killed_writers_temporaries_go_at_the_next_start_of_every_folder(tmp_path):
    from dsr_tune.distributed import reaper, worker
    from dsr_tune.sweep import folder, spec as space

    run, sweep, workers, state = (tmp_path / n for n in ("run", "sweep", f"run/{runfolder.WORKERS}", "state"))
    for d in (run, sweep, workers, state):
        d.mkdir(parents=True, exist_ok=True)
    # a run folder: the next training start
    stale, live = _killed_writer(run / runfolder.CHECKPOINT), _live_writers(run)
    staged = runfolder.temp_path(run / "ray_stage_epoch_00001")  # Ray Train's staging folder of a killed rank 0
    staged.with_name(staged.name.replace(str(os.getpid()), "999999")).mkdir()
    train(C.load(DIGITS, [*FAST, "train.stop_after=1"]), run, progress=False)
    assert not stale.exists() and live.exists() and not list(run.glob(".ray_stage_*"))
    # a run's worker files: the next worker start
    stale = _killed_writer(workers / runfolder.worker_file(0))
    worker._write_worker_file(run, 0)
    assert not stale.exists() and (workers / runfolder.worker_file(0)).exists()
    # a sweep folder killed while writing its first sweep.json: the next start takes it, no --overwrite
    stale, live = _killed_writer(sweep / runfolder.SWEEP), _live_writers(sweep)
    with pytest.raises(C.ConfigError, match="--overwrite"):  # a live writer's temporary stays, and is not ours to delete
        folder.prepare(space.load(ROOT / "search_spaces" / "digits_demo.yaml"), sweep, resume=False, overwrite=False)
    assert not stale.exists() and live.exists()
    live.unlink()
    assert folder.prepare(space.load(ROOT / "search_spaces" / "digits_demo.yaml"), sweep, resume=False,
                          overwrite=False)["status"] == "RUNNING"
    # the local Ray sessions' state folder: the next session's record
    stale = _killed_writer(state / "1-abc.json")
    reaper.record(reaper.Session("1:2:abc"), state)
    assert not stale.exists() and [s.marker for _, s in reaper.recorded(state)] == ["1:2:abc"]


def test_a_folder_without_a_complete_checkpoint_starts_afresh_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(C.dump(C.load(DIGITS, FAST)))  # killed during its very first save
    (out / ".checkpoint.pt.tmp-999999").write_bytes(b"cut")
    args = ["train", DIGITS, *FAST, "train.stop_after=1", "--output", str(out)]
    assert cli.main(args + ["--resume"]) == 0  # nothing to resume: it starts from scratch
    assert ckpt.load(out)["epoch"] == 1 and not (out / ".checkpoint.pt.tmp-999999").exists()
    assert cli.main(args) == 2 and "--resume" in capsys.readouterr().err  # now it holds a run


def _crafted(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        torch.save({"model": CraftedPickle(marker), "masking": {"masks": CraftedPickle(marker)}}, f)
    return path


@pytest.mark.parametrize("where", ["resume", "mask_from", "export", "init_from"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, capsys, where):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    if where == "resume":
        train(C.load(DIGITS, [*FAST, "train.stop_after=1"]), run, progress=False)
        _crafted(run / "checkpoint.pt", marker)
        argv = ["train", DIGITS, *FAST, "--output", str(run), "--resume"]
    elif where == "export":
        run.mkdir()
        _crafted(run / "checkpoint.pt", marker)
        argv = ["export", str(run)]
    else:
        src = tmp_path / "src"
        src.mkdir()
        _crafted(src / ("checkpoint.pt" if where == "mask_from" else "init.pt"), marker)
        argv = ["train", DIGITS, *FAST, "sparsity.method=static", f"sparsity.{where}={src}", "--output", str(run)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a checkpoint this tool wrote" in err, err
    assert not marker.exists()  # nothing in the file ran
    if where in ("mask_from", "init_from"):
        assert not run.exists()  # refused before the run folder was made


def test_the_tools_own_files_load_with_the_restricted_unpickler(tmp_path):
    train(C.load(DIGITS, [*FAST, "train.stop_after=1"]), tmp_path, progress=False)
    for name in ("checkpoint.pt", "init.pt"):
        state = torch.load(tmp_path / name, weights_only=True)  # no error: only tensors and plain data
        assert "model" in state


def test_an_image_that_fails_only_during_training_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    from datafiles import write_tree

    from dsr_tune.train import metrics

    root = write_tree(tmp_path / "data", classes=2, per_class=6, size=(12, 12), channels=1)
    victim = sorted((root / "train" / "class1").iterdir())[0]
    good = victim.read_bytes()
    real = metrics.JsonlLogger.log_record

    def cut_after_epoch_1(self, record):  # the file breaks on disk after two finished epochs
        real(self, record)
        if record.get("kind") == "epoch" and record["epoch"] == 1:
            victim.write_bytes(good[:-40])  # a cut-off file: its header still reads

    monkeypatch.setattr(metrics.JsonlLogger, "log_record", cut_after_epoch_1)
    run = tmp_path / "run"
    # the loaders' path: a resident set is decoded once, before the first epoch, and would not see the cut
    argv = ["train", DIGITS, "data.name=folder", f"data.root={root}", "data.image_size=8", "data.channels=1",
            "data.resident=false",
            "data.val_fraction=0", "data.batch_size=4", "model.width=0.25", "train.epochs=3", "optim.milestones=[]",
            "sparsity.period_schedule=[[0, 5]]", "sparsity.stop_epoch=3", "--output", str(run)]
    code = cli.main(argv)
    text = capsys.readouterr().err
    errors = [ln for ln in text.splitlines() if ln.startswith("dsr-tune: error")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in text, text
    assert victim.name in errors[0] and "skip_bad_images" in errors[0], errors
    # the last checkpoint is intact: epoch 2's, with its records, and training continues from it
    state = ckpt.load(run)
    assert state["epoch"] == 2 and [r["epoch"] for r in state["records"] if r["kind"] == "epoch"] == [0, 1]
    assert [r["epoch"] for r in runfolder.epochs(run)] == [0, 1]
    monkeypatch.undo()
    victim.write_bytes(good)
    assert cli.main(argv + ["--resume"]) == 0
    assert ckpt.load(run)["epoch"] == 3 and [r["epoch"] for r in runfolder.epochs(run)] == [0, 1, 2]


def test_an_epoch_index_beyond_the_run_is_refused_whatever_the_method():
    from dsr_tune import methods
    from dsr_tune.sweep import rows as plan

    for name in methods.trainable():
        for key, value in (("sparsity.stop_epoch", "31"), ("sparsity.period_schedule", "[[0, 5], [30, 9]]")):
            with pytest.raises(C.ConfigError) as exc:  # digits.yaml: 30 epochs
                C.load(DIGITS, [f"sparsity.method={name}", f"{key}={value}"])
            assert exc.value.key == key, (name, str(exc.value))
    # a row the planner derives at another length gets schedules of its own length (gmp: 50 epochs of 200)
    cfg = C.load(None, ["model.name=wrn", "data.name=cifar10", "data.root=/nowhere"])
    gmp = plan.row_config(cfg, "gmp", parent="/dense")
    assert gmp.train.epochs < cfg.sparsity.stop_epoch and gmp.sparsity.stop_epoch <= gmp.train.epochs


def test_a_shortened_config_names_every_key_in_the_way_once(tmp_path):
    """train.epochs=3 on digits.yaml: milestones, period starts and the stop epoch all lie beyond; one
    error names them all, says which follow train.epochs when null, and its suggested overrides run."""
    with pytest.raises(C.ConfigError) as exc:
        C.load(DIGITS, ["train.epochs=3"])
    text = str(exc.value)
    assert exc.value.key == "train.epochs" and len(text.splitlines()) == 1
    for key in ("optim.milestones", "sparsity.period_schedule", "sparsity.stop_epoch"):
        assert key in text, (key, text)
    assert "null follows train.epochs" in text and "no null" in text  # milestones take none
    fix = text.split("In one step add: ", 1)[1].split(" (or ", 1)[0].split()
    assert fix == ["optim.milestones=[]", "sparsity.period_schedule=null", "sparsity.stop_epoch=null"]
    cfg = C.load(DIGITS, ["train.epochs=3", *fix])
    assert cfg.sparsity.stop_epoch <= 3 and all(start < 3 for start, _ in cfg.sparsity.period_schedule)
    out = tmp_path / "short"
    assert cli.main(["train", DIGITS, "train.epochs=3", *fix, "--no-mlflow", "--output", str(out)]) == 0
    assert [r["epoch"] for r in runfolder.epochs(out)] == [0, 1, 2]
    # one key alone: its own message, with the same advice
    with pytest.raises(C.ConfigError) as one:
        C.load(DIGITS, ["sparsity.stop_epoch=40"])
    assert one.value.key == "sparsity.stop_epoch" and "sparsity.stop_epoch=null to follow train.epochs" in str(one.value)
