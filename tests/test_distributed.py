"""Many workers: rank consistency of every reallocation method under DDP (2 gloo
processes), the CLI on 2 Ray Train workers against one process, and a worker
killed mid-run that the run survives without losing an epoch.

The Ray tests start Ray (about 10 s) and train digits for a few epochs on 2 CPU
workers; on 2 cores the whole file takes 2-4 minutes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dsr_tune import config as C
from dsr_tune.distributed import storage
from dsr_tune.runfolder import read_records

from conftest import DIGITS, ROOT
EPOCHS = 5  # the 2-worker runs below: reallocation every 15 steps, 44 steps an epoch per rank
SHORT = [f"train.epochs={EPOCHS}", "optim.milestones=[]", "sparsity.period_schedule=[[0, 15]]",
         f"sparsity.stop_epoch={EPOCHS}"]  # digits.yaml's schedules, cut to EPOCHS


def epochs_of(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


# ------------------------------------------------------------------ fast checks, no Ray


def test_worker_settings_are_validated():
    with pytest.raises(C.ConfigError, match="data.batch_size"):
        C.load(DIGITS, ["train.workers=3"])  # 32 does not divide by 3
    with pytest.raises(C.ConfigError, match="train.use_gpu"):
        C.load(DIGITS, ["train.use_gpu=true"])  # GPUs only through Ray workers
    with pytest.raises(C.ConfigError, match="train.device"):
        C.load(DIGITS, ["train.workers=2", "train.device=cuda:1"])
    with pytest.raises(C.ConfigError, match="train.cpus_per_worker"):
        C.load(DIGITS, ["train.workers=2", "train.cpus_per_worker=0"])
    cfg = C.load(DIGITS, ["train.workers=2", "train.max_failures=3", "train.storage_path=s3://b/p"])
    assert (cfg.train.workers, cfg.train.max_failures, cfg.train.storage_path) == (2, 3, "s3://b/p")


def test_storage_takes_the_newest_complete_checkpoint(tmp_path):
    from dsr_tune import runfolder

    assert storage.CHECKPOINT == runfolder.CHECKPOINT  # the one name, from the torch-free run-folder module
    run = tmp_path / "run"
    run.mkdir()
    (run / "init.pt").write_bytes(b"i" * 1000)
    exp = tmp_path / "store" / "exp"
    for epoch in (1, 2, 3):
        (run / "checkpoint.pt").write_bytes(b"x" * (100 + epoch))
        (run / "metrics.jsonl").write_text('{"kind": "epoch", "epoch": %d}\n' % (epoch - 1))
        staged = storage.stage(run, epoch)
        assert runfolder.temp_writer(staged.name) == os.getpid()  # a temporary: gone at the next start if we die
        (exp / storage.checkpoint_dir_name(epoch)).mkdir(parents=True)
        for f in staged.iterdir():
            (exp / storage.checkpoint_dir_name(epoch) / f.name).write_bytes(f.read_bytes())
    assert storage.newest_complete(str(tmp_path / "store"), "exp") == (str(exp / "epoch_00003"), 3)
    assert not list(exp.glob("epoch_*/init.pt"))  # not re-uploaded with every checkpoint...
    assert storage.put_init(str(tmp_path / "store"), "exp", run) and (exp / "init.pt").read_bytes() == b"i" * 1000
    assert not storage.put_init(str(tmp_path / "store"), "exp", run)  # ...but once, beside them
    elsewhere = tmp_path / "other_node_run"
    assert storage.get_init(str(tmp_path / "store"), "exp", elsewhere) and (elsewhere / "init.pt").exists()
    # an upload cut short: epoch 3's checkpoint.pt is truncated, so epoch 2 is the newest complete one
    (exp / "epoch_00003" / "checkpoint.pt").write_bytes(b"x" * 10)
    assert storage.newest_complete(str(tmp_path / "store"), "exp") == (str(exp / "epoch_00002"), 2)
    assert storage.newest_complete(str(tmp_path / "store"), "nothing") is None
    assert storage.epoch_of("s3://b/p/epoch_00012/") == 12 and storage.epoch_of("x/checkpoint_1") is None


def test_run_record_comes_home_from_storage(tmp_path):
    """Multi-node without a shared run folder: the final record is copied from storage."""
    import ray.train

    folder = tmp_path / "store" / "epoch_00004"
    folder.mkdir(parents=True)
    for name, text in [("checkpoint.pt", "ckpt"), ("metrics.jsonl", '{"kind": "epoch", "epoch": 3}\n'),
                       ("config.yaml", "train: {}\n")]:
        (folder / name).write_text(text)
    (folder.parent / "init.pt").write_text("init")  # stored once beside the checkpoints
    checkpoint = ray.train.Checkpoint(str(folder))
    home = tmp_path / "home"
    assert storage.sync_run_record(checkpoint, home)
    assert (home / "metrics.jsonl").read_text() == (folder / "metrics.jsonl").read_text()
    assert (home / "checkpoint.pt").read_text() == "ckpt" and (home / "init.pt").read_text() == "init"
    assert not storage.sync_run_record(checkpoint, home)  # already there: nothing copied


def test_storage_copies_go_through_the_one_atomic_write(tmp_path, monkeypatch):
    """restore, download and init.pt's upload to a local storage write under the one temporary name
    (never the target's own name mid-copy), and a restarted group clears its storage's temporaries."""
    import shutil

    import ray.train

    from dsr_tune import runfolder

    folder = tmp_path / "store" / "exp" / "epoch_00001"
    folder.mkdir(parents=True)
    for name in ("checkpoint.pt", "metrics.jsonl", "config.yaml"):
        (folder / name).write_text(name)
    (folder.parent / "init.pt").write_text("init")
    seen: list[tuple[str, list[str]]] = []
    real = shutil.copyfileobj

    def watched(src, dst, *args):
        where = Path(dst.name)
        seen.append((where.name, sorted(p.name for p in where.parent.iterdir())))
        real(src, dst, *args)
    monkeypatch.setattr(shutil, "copyfileobj", watched)
    home = tmp_path / "home"
    assert storage.sync_run_record(ray.train.Checkpoint(str(folder)), home)  # restore + checkpoint + download
    run = tmp_path / "run"
    run.mkdir()
    (run / "init.pt").write_text("init, longer")
    assert storage.put_init(str(tmp_path / "store"), "exp", run)
    monkeypatch.undo()
    assert {name for name, _ in seen} >= {f".{n}.tmp-{os.getpid()}" for n in
                                         ("checkpoint.pt", "metrics.jsonl", "config.yaml", "init.pt")}
    for name, listing in seen:  # mid-copy: the target is absent or still the old file, the temporary beside it
        assert runfolder.temp_writer(name) == os.getpid() and name in listing
    assert (folder.parent / "init.pt").read_text() == "init, longer"
    assert not [p for p in (tmp_path / "store" / "exp").iterdir() if runfolder.temp_writer(p.name)]
    # a restarted worker group owns its storage folder: every temporary there goes, a live pid's too
    left = [folder.parent / ".init.pt.tmp-999999", folder.parent / f".init.pt.tmp-{os.getpid()}"]
    for p in left:
        p.write_bytes(b"cut")
    assert sorted(storage.clean_stale(str(tmp_path / "store"), "exp")) == sorted(map(str, left))
    assert not any(p.exists() for p in left) and (folder.parent / "init.pt").exists()
    assert storage.clean_stale("s3://bucket/prefix", "exp") == []  # object stores hold no temporaries


def test_cluster_runs_need_shared_storage_and_overwrite_deletes_only_checkpoints(tmp_path, monkeypatch):
    import dsr_tune.distributed.launcher as D

    def no_ray(*a, **k):
        raise AssertionError("Ray started")
    monkeypatch.setattr(D, "ray_session", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = C.load(DIGITS, ["train.workers=2"])
    # joining a cluster (even one with a single node up: an autoscaler adds the rest) needs shared storage
    assert D.joins_cluster("auto") and not D.joins_cluster(None)
    with pytest.raises(C.ConfigError, match="train.storage_path"):
        D.launch(cfg, tmp_path / "run", address="10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as in a Ray job
    assert D.joins_cluster(None)
    with pytest.raises(C.ConfigError, match="train.storage_path"):
        D.launch(cfg, tmp_path / "run")
    # a fresh run over an old one deletes <output>/ray only if it holds nothing but old runs' checkpoints
    ray_dir = tmp_path / "run" / "ray"
    (ray_dir / "run-20260101-000000" / "epoch_00001").mkdir(parents=True)
    D._remove_old_checkpoints(ray_dir, "run")
    assert not ray_dir.exists()
    (ray_dir / "run-20260101-000000").mkdir(parents=True)
    (ray_dir / "mine.txt").write_text("not a checkpoint")
    with pytest.raises(C.ConfigError, match="mine.txt"):
        D._remove_old_checkpoints(ray_dir, "run")
    assert (ray_dir / "mine.txt").exists()


@pytest.mark.parametrize("env, arg, expected", [
    ({}, None, "local"), ({"RAY_ADDRESS": "10.0.0.1:6379"}, None, "10.0.0.1:6379"),
    ({"RAY_ADDRESS": "10.0.0.1:6379"}, "auto", "auto")])
def test_ray_session_joins_or_starts_local(monkeypatch, tmp_path, env, arg, expected):
    import ray

    from dsr_tune.distributed import ray_session

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the token file and session records a local start writes
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address=None, **kw: calls.append((address, kw)))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with ray_session(arg, cpus=5) as started_here:
        assert started_here == (expected == "local")
    assert calls[0][0] == expected and calls[-1] == "shutdown"
    if expected == "local":  # a local Ray big enough for the run, even on 2 cores
        assert calls[0][1]["num_cpus"] >= 5


@pytest.mark.parametrize("name", ["s80_2x8gpu", "s90_2x8gpu", "s80_4x8gpu", "s90_4x8gpu"])
def test_multinode_imagenet_configs(tmp_path, name):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    cfg = C.load(ROOT / "configs" / f"imagenet_resnet50_{name}.yaml", [f"data.root={tmp_path}"])
    nodes = int(name.split("_")[1][0])
    t = cfg.train
    assert t.workers == 8 * nodes and t.use_gpu and t.precision == "bf16" and t.channels_last
    assert cfg.sparsity.sparsity == {"s80": 0.8, "s90": 0.9}[name[:3]]
    assert cfg.data.batch_size // t.workers == 64  # per GPU
    assert cfg.optim.base_batch_size == 256 and cfg.optim.lr == 0.1 and cfg.optim.lr_scaling == "linear"
    # the period schedule is in iterations: scaled so reallocations come every same number of samples
    assert cfg.sparsity.period_scale == 256 / cfg.data.batch_size
    assert t.cpus_per_worker >= cfg.data.loader_workers + 1


# ------------------------------------------------------------------ every method, 2 gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, methods: list[str], out: str) -> None:
    """One DDP rank: train every method 2 short epochs, gather the mask hash
    from both ranks after each epoch; rank 0 writes what it gathered."""
    import torch.distributed as dist

    from dsr_tune.train import train

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen = {}
    for method in methods:
        cfg = C.load(DIGITS, [f"sparsity.method={method}", "sparsity.period_schedule=[[0, 5]]",
                              "train.stop_after=2", "train.threads=1"])
        hashes = []

        def gather(record, path, hashes=hashes):
            box = [None, None]
            dist.all_gather_object(box, (record["mask_hash"], record["nonzero_params"]))
            hashes.append(box)

        run_dir = Path(out).parent / f"{method}_rank{rank}"
        train(cfg, run_dir, on_epoch_end=gather, progress=False)
        reallocs = sum(r["kind"] == "realloc" for r in read_records(run_dir / "metrics.jsonl"))
        seen[method] = {"per_epoch": hashes, "reallocs": reallocs}
    if rank == 0:
        Path(out).write_text(json.dumps(seen))
    # both ranks leave together: a rank tearing gloo down while its peer still talks to it
    # aborted once in CI ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_method_takes_the_same_decision_on_every_rank(tmp_path):
    from dsr_tune import methods as registry

    methods = ["static", *sorted(registry.names(kind="dynamic"))]
    out = tmp_path / "gathered.json"
    torch.multiprocessing.spawn(_rank_main, args=(_free_port(), methods, str(out)), nprocs=2)
    seen = json.loads(out.read_text())
    assert sorted(seen) == sorted(methods)
    for method, got in seen.items():
        assert len(got["per_epoch"]) == 2, method
        for (h0, n0), (h1, n1) in got["per_epoch"]:
            assert h0 == h1 and n0 == n1, f"{method}: ranks disagree ({h0} vs {h1})"
        if method != "static":  # 44 steps an epoch, period 5 (DeepR: every step): masks moved
            assert got["reallocs"] >= 1, (method, got["reallocs"])
        assert (got["per_epoch"][0][0] != got["per_epoch"][1][0]) == (method != "static"), method


# ------------------------------------------------------------------ Ray Train


def _cli(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    """The CLI in a session of its own; afterwards (a timeout included) its whole process
    group is killed, the local Ray it started with it, so nothing leaks into later tests."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    proc = subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """``dsr-tune train configs/digits.yaml train.workers=2`` for EPOCHS epochs."""
    base = tmp_path_factory.mktemp("cli")
    proc = _cli("train", str(DIGITS), "train.workers=2", *SHORT, "--output", "two",
                cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: test accuracy" in proc.stdout
    # readable: rank 0's epoch lines, not Ray's per-rank report dumps or the local preemption watcher's errors
    out = proc.stdout + proc.stderr
    assert out.count(f"epoch {EPOCHS}/{EPOCHS}") == 1, out[-3000:]
    assert "Reporting training result" not in out and "PreemptionWatcher" not in out, out[-3000:]
    return base / "two"


@pytest.mark.slow
def test_cli_two_workers_match_one_process(cli_run, tmp_path):
    from dsr_tune.train import train

    two = epochs_of(cli_run)
    assert [r["epoch"] for r in two] == list(range(EPOCHS))
    assert C.load(cli_run / "config.yaml").train.workers == 2
    assert {json.loads((cli_run / "ray_workers" / f"rank{r}.json").read_text())["rank"] for r in (0, 1)} == {0, 1}
    run = json.loads((cli_run / "ray_run.json").read_text())
    assert storage.newest_complete(run["storage_path"], run["name"])[1] == EPOCHS
    assert (cli_run / "checkpoint.pt").exists() and (cli_run / "init.pt").exists()
    stored = Path(run["storage_path"]) / run["name"]  # init.pt once beside the checkpoints, not in each
    assert (stored / "init.pt").read_bytes() == (cli_run / "init.pt").read_bytes()
    assert not list(stored.glob("epoch_*/init.pt"))

    one = train(C.load(DIGITS, SHORT), tmp_path / "one", progress=False)
    # the same global batch and budget: the same number of steps and of non-zero weights
    assert two[-1]["step"] == one["step"]
    assert two[-1]["nonzero_params"] == one["nonzero_params"]
    assert all(r["nonzero_params"] == one["nonzero_params"] for r in two)
    assert one["test_acc"] > 0.9 and abs(two[-1]["test_acc"] - one["test_acc"]) < 0.04
    # the run folder refuses a second fresh run
    again = _cli("train", str(DIGITS), "train.workers=2", "--output", str(cli_run), cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr


@dataclass
class RecordingSpec:
    """A logger spec: rank 0 appends (pid, epoch) lines to ``path`` from each start."""

    path: str

    def make(self):
        return _Recorder(self.path)


class _Recorder:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)
        self.f.write(json.dumps({"start": os.getpid()}) + "\n")

    def log_params(self, params: dict) -> None:
        pass

    def log_record(self, record: dict) -> None:
        if record["kind"] == "epoch":
            self.f.write(json.dumps({"pid": os.getpid(), "epoch": record["epoch"]}) + "\n")

    def close(self, status: str = "FINISHED") -> None:
        self.f.write(json.dumps({"close": status}) + "\n")
        self.f.close()


def _rank_hash_callback(path: str):
    """A Train callback (runs in the controller) that writes every rank's mask hash per report."""
    import ray.train

    class RankHashes(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps([m.get("mask_hash") for m in metrics]) + "\n")

    return RankHashes()


@pytest.fixture(scope="module")
def ray_local():
    import ray
    import ray.cloudpickle

    from dsr_tune.distributed import ray_session

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not importable in workers
    with ray_session(cpus=2):  # the tool's own local Ray (127.0.0.1 only, loopback rendezvous store)
        yield


def _kill_rank0_after(run_dir: Path, storage_path: str, name: str, epochs: int, out: dict) -> None:
    """Wait for a complete checkpoint of ``epochs`` epochs, then SIGKILL rank 0."""
    deadline = time.time() + 300
    while time.time() < deadline:
        found = storage.newest_complete(storage_path, name)
        if found and found[1] >= EPOCHS:
            return  # finished before we looked: the test reports it
        if found and found[1] >= epochs:
            out["done_at_kill"] = found[1]
            out["pid"] = json.loads((run_dir / "ray_workers" / "rank0.json").read_text())["pid"]
            os.kill(out["pid"], signal.SIGKILL)
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_worker_is_replaced_and_no_epoch_is_lost(cli_run, ray_local, tmp_path):
    from dsr_tune.distributed import fit

    run_dir, store = tmp_path / "run", str(tmp_path / "store")
    log, hashes = tmp_path / "recorder.jsonl", tmp_path / "hashes.jsonl"
    cfg = C.load(DIGITS, ["train.workers=2", *SHORT])
    killed: dict = {}
    killer = threading.Thread(target=_kill_rank0_after, args=(run_dir, store, "killed", 2, killed), daemon=True)
    killer.start()
    summary = fit(cfg, run_dir=run_dir, name="killed", storage_path=store, max_failures=1,
                  logger_specs=[RecordingSpec(str(log))], train_callbacks=[_rank_hash_callback(str(hashes))])
    killer.join(timeout=5)
    assert killed.get("pid"), "the run ended before a worker could be killed"

    # the worker group was replaced: rank 0 started twice, in two processes
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    starts = [i for i, x in enumerate(lines) if "start" in x]
    assert len(starts) == 2 and lines[starts[0]]["start"] == killed["pid"] != lines[starts[1]]["start"]
    resumed = [x["epoch"] for x in lines[starts[1]:] if "epoch" in x]
    # no finished epoch lost: the new group began at or after the last checkpoint seen before the kill
    assert resumed[0] >= killed["done_at_kill"] and resumed[-1] == EPOCHS - 1
    # the run record holds every epoch exactly once, and the budget is exact
    assert [r["epoch"] for r in epochs_of(run_dir)] == list(range(EPOCHS))
    assert summary.metrics["epoch"] == EPOCHS - 1 and summary.metrics["epochs_done"] == EPOCHS
    assert summary.checkpoint is not None
    # resumed exactly: the same end as the uninterrupted CLI run of the same config
    ref = epochs_of(cli_run)[-1]
    assert summary.metrics["nonzero_params"] == ref["nonzero_params"]
    assert summary.metrics["mask_hash"] == ref["mask_hash"]
    assert summary.metrics["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-9)
    # every rank reported the same masks, threshold and generator state after every epoch
    reports = [json.loads(x) for x in hashes.read_text().splitlines()]
    assert len(reports) >= EPOCHS - killed["done_at_kill"]
    assert all(len(r) == 2 and r[0] == r[1] and r[0] for r in reports)
