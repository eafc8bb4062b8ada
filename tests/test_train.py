"""The trainer end to end on digits: records, checkpoints, exact resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dsr_tune import cli, config as C
from dsr_tune import checkpoint as ckpt
from dsr_tune.records import TIMED
from dsr_tune.train import train
from dsr_tune.runfolder import read_records

from conftest import DIGITS, ROOT
FAST = ["train.epochs=4", "optim.milestones=[2]", "sparsity.period_schedule=[[0, 7], [2, 11]]",
        "sparsity.stop_epoch=3", "sparsity.dsr.target_pruned=100"]


def test_records_and_budget(tmp_path):
    cfg = C.load(DIGITS, FAST)
    last = train(cfg, tmp_path)
    records = read_records(tmp_path / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    reallocs = [r for r in records if r["kind"] == "realloc"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    for r in epochs:
        assert {"train_loss", "test_acc", "test_acc5", "nonzero_params", "lr", "samples_per_s"} <= set(r)
    assert epochs[0]["lr"] == 0.05 and epochs[2]["lr"] == pytest.approx(0.01)
    # 40 steps/epoch (1,294 training digits, batch 32): every 7 steps in epochs 0-1 (11), every 11
    # in epoch 2 (steps 88, 99, 110), none from epoch 3 (stop)
    assert len(reallocs) == 80 // 7 + 3 and max(r["epoch"] for r in reallocs) == 2
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    budget = state["masking"]["budget"]
    for r in reallocs:
        assert {"step", "epoch", "threshold", "layers"} <= set(r)
        assert sum(layer["nonzero"] for layer in r["layers"].values()) == budget
        assert all({"pruned", "grown", "nonzero"} <= set(layer) for layer in r["layers"].values())
    # the budget is the same at the end, in the masks and in the weights themselves
    masks = state["masking"]["masks"]
    assert sum(int(m.sum()) for m in masks.values()) == budget
    for name, mask in masks.items():
        assert torch.all(state["model"][name][~mask] == 0)
    assert last["nonzero_params"] == epochs[0]["nonzero_params"]
    assert last["test_acc"] > 0.8  # it learns
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "init.pt").exists()


def _final(run):
    s = torch.load(run / "checkpoint.pt", weights_only=True)
    return s["model"], s["masking"], s["optimizer"]


def test_resume_is_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(C.load(DIGITS, FAST), straight)
    train(C.load(DIGITS, FAST + ["train.stop_after=2"]), split)
    train(C.load(DIGITS, FAST), split, resume=True)
    (ma, ka, _), (mb, kb, _) = _final(straight), _final(split)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(ka["masks"][k], kb["masks"][k]) for k in ka["masks"])
    assert ka["method"] == kb["method"] and ka["global_step"] == kb["global_step"]
    assert torch.equal(ka["generator"], kb["generator"])
    ra = [r for r in read_records(straight / "metrics.jsonl")]
    rb = [r for r in read_records(split / "metrics.jsonl")]
    timed = TIMED  # wall-clock measurements
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timed} for r in rs]
    assert strip(ra) == strip(rb)
    assert ra[-1]["train_flops"] == rb[-1]["train_flops"] > 0  # counted across the resume, not restarted


def test_resume_is_exact_with_loader_processes_and_augmentation(tmp_path):
    """Image files, random crops and flips, two loader processes: their random
    state must not carry over between epochs, or a resumed run would differ."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(3):
            (tmp_path / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / f"c{c}" / f"{i}.png")
    keys = ["data.name=imagenet", f"data.root={tmp_path / 'data'}", "data.image_size=8", "data.batch_size=6",
            "data.loader_workers=2", "sparsity.period_schedule=[[0, 2]]", "sparsity.dsr.target_pruned=50",
            "optim.milestones=[]", "sparsity.stop_epoch=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(C.load(DIGITS, keys + ["train.epochs=3"]), straight)
    train(C.load(DIGITS, keys + ["train.epochs=3", "train.stop_after=1"]), split)
    train(C.load(DIGITS, keys + ["train.epochs=3"]), split, resume=True)
    (ma, ka, _), (mb, kb, _) = _final(straight), _final(split)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(ka["masks"][k], kb["masks"][k]) for k in ka["masks"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save({"epoch": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.save({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_cli_refuses_to_clobber_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", DIGITS, *FAST, "train.stop_after=1", "--output", str(out)]) == 0
    assert cli.main(["train", DIGITS, *FAST, "train.stop_after=1", "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", DIGITS, *FAST, "train.stop_after=2", "sparsity.sparsity=0.5", "--output", str(out), "--resume"]) == 2
    assert "sparsity.sparsity" in capsys.readouterr().err
    assert cli.main(["train", DIGITS, *FAST, "train.stop_after=2", "--output", str(out), "--resume"]) == 0
    assert [r["epoch"] for r in read_records(out / "metrics.jsonl") if r["kind"] == "epoch"] == [0, 1]


@pytest.mark.slow
def test_killed_mid_run_then_resumed_loses_no_finished_epoch(tmp_path):
    """SIGKILL the real CLI during training, resume, and match an uninterrupted run."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "dsr_tune.cli", "train", DIGITS, *FAST, "train.epochs=6", "optim.milestones=[4]"]
    proc = subprocess.Popen(args + ["--output", str(out)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait for two finished epochs, then kill mid-epoch three
        if "epoch 2/6" in line:
            break
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = ckpt.load(out)["epoch"]
    assert 2 <= done < 6
    subprocess.run(args + ["--output", str(out), "--resume"], check=True, capture_output=True)
    ref = tmp_path / "ref"
    subprocess.run(args + ["--output", str(ref)], check=True, capture_output=True)
    (ma, ka, _), (mb, kb, _) = _final(out), _final(ref)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(ka["masks"][k], kb["masks"][k]) for k in ka["masks"])
    epochs = [r["epoch"] for r in read_records(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == list(range(6))


def test_library_snippet_from_readme():
    """The README's snippet, run as written: the sparse core in a plain loop."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {}
    exec(compile(code, "README snippet", "exec"), scope)  # noqa: S102 (our own README)
    masking = scope["masking"]
    assert sum(int(m.sum()) for m in masking.masks.values()) == masking.budget
    assert masking.global_step == 48 and len(masking.events) == 2  # steps 20 and 40


@pytest.mark.slow
def test_readme_main_command_runs(tmp_path):
    """README's first command, minus the install that CI has just done: the demo
    sweep, run from a scratch folder so its embedded MLflow store
    (./mlruns) lands there, not in the repository."""
    readme = (ROOT / "README.md").read_text()
    line = next(l.strip() for l in readme.splitlines() if "dsr-tune" in l and "pip install" in l)
    main_cmd = line.split("&& ", 2)[2]
    assert main_cmd.startswith(".venv/bin/dsr-tune sweep search_spaces/")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = main_cmd.replace(".venv/bin/", "", 1).replace("search_spaces/", f"{ROOT}/search_spaces/")
    proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    # the report table: every method at each sparsity, then the UI's address
    assert "sparsity 0.8" in out and "sparsity 0.9" in out
    for method in ("dsr", "static_1x", "static_2x", "thin_dense_1x", "thin_dense_2x", "dense"):
        assert f"\n  {method} " in out, out
    last = out.rstrip().splitlines()[-1]  # the UI's address: the experiment's runs table, as a deep link
    assert "http://127.0.0.1:5000/#/experiments/" in last and last.endswith("/runs?workflowType=machine_learning)")
    sweep = tmp_path / "runs" / "digits_demo"
    assert (sweep / "report.png").exists() and (tmp_path / "mlruns" / "mlflow.db").exists()
    dsr_runs = sorted((sweep / "runs" / "search" / "dsr").iterdir())
    records = read_records(dsr_runs[0] / "metrics.jsonl")
    assert records[-1]["kind"] == "epoch" and records[-1]["test_acc"] > 0.9


def test_compiled_training_keeps_masks_plain_names_and_exact_resume(tmp_path):
    """train.compile=true (aot_eager: traces, needs no compiler): masks still applied after
    every step, the checkpoint keyed by the plain module's names, resume exact."""
    keys = FAST + ["train.compile=true", "train.compile_backend=aot_eager", "train.threads=1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(C.load(DIGITS, keys), straight)
    train(C.load(DIGITS, keys + ["train.stop_after=2"]), split)
    train(C.load(DIGITS, keys), split, resume=True)
    (ma, ka, _), (mb, kb, _) = _final(straight), _final(split)
    assert not any("_orig_mod" in k for k in ma)  # the uncompiled names
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(ka["masks"][k], kb["masks"][k]) for k in ka["masks"])
    for name, mask in ka["masks"].items():  # masked weights stay exactly zero under the compiled forward
        assert not ma[name][~mask].any()
    assert sum(int(m.sum()) for m in ka["masks"].values()) == ka["budget"]
    eager = train(C.load(DIGITS, FAST + ["train.threads=1"]), tmp_path / "eager")
    last = [r for r in read_records(straight / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert abs(last["train_loss"] - eager["train_loss"]) < 0.05  # the same training, compiled or not


def test_train_address_help_says_when_ray_is_used(capsys):
    from dsr_tune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "with train.workers >= 2 (Ray Train; 0 or 1 worker trains in this process" in text
    assert "workers >= 1" not in text
