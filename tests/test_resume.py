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

from conftest import DIGITS, CraftedPickle

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


# ------------------------------------------------------------------ slow: real sweeps on a local Ray

# 3 DSR trials at sparsity 0.9, 2 at a time (the third is asked once one has ended: after a kill during
# the first two, by the resumed sweep), then DSR and static at 1x on the fresh seeds 1 and 2: 21 epochs
SWEEP = ["train.epochs=3", "optim.milestones=[2]", "sparsity.stop_epoch=3", "sparsity.period_schedule=[[0, 15]]",
         "train.threads=1", "search.samples=3", "seeds=[1, 2]", "baselines=[static_1x]", "dense=false",
         "space.sparsity.sparsity=0.9"]
PLANNED = {*(f"search/dsr/s0.9-t{n}" for n in range(3)),
           *(f"paired/{row}/s0.9/seed{k}" for row in ("dsr", "static_1x") for k in (1, 2))}


def _plant(sweep: Path, marker: Path) -> int:
    """Crafted pickles where Tune keeps its state (tuner.pkl, a searcher's state, each trial's
    params.pkl) in every tune/<phase> folder; returns how many."""
    import pickle

    n = 0
    for phase in (sweep / "tune").glob("*"):
        for path in [phase / "tuner.pkl", phase / "searcher-state-crafted.pkl"] + \
                    [d / "params.pkl" for d in phase.iterdir() if d.is_dir()]:
            path.write_bytes(pickle.dumps(CraftedPickle(marker)))
            n += 1
    return n


def _driver(cwd: Path, sweep: Path, *extra: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    from conftest import DEMO

    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}, **(env or {})}
    out = open(cwd / "driver.log", "a")
    return subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", "sweep", DEMO, *SWEEP, *extra, "--output",
                             str(sweep)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill(proc) -> None:
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _epochs(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count('"kind": "epoch"') if path.exists() else 0


def _wait(proc, until, timeout: float = 600) -> bool:
    """Poll ``until()`` every 0.1 s while ``proc`` runs; whether it came true."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if until():
            return True
        time.sleep(0.1)
    return False


def _finish(cwd: Path, sweep: Path, *extra: str, timeout: float = 600) -> str:
    proc = _driver(cwd, sweep, *extra, "--resume")
    try:
        proc.wait(timeout=timeout)
    finally:
        _kill(proc)
    log = (cwd / "driver.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    return log


def _answer(sweep: Path) -> dict:
    """What a sweep decided and reported: the selections, the report's numbers and text
    (the sweep id aside), each search trial's values and final scores."""
    import yaml

    meta = json.loads((sweep / "sweep.json").read_text())
    trials = {}
    for run in sorted((sweep / "runs" / "search" / "dsr").iterdir()):
        last = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in ln][-1]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        trials[run.name] = (cfg["optim"]["lr"], cfg["sparsity"]["dsr"]["delta"], last["val_loss"], last["test_acc"])
    return {"selected": {j["key"]: j["selected_from"] for j in json.loads((sweep / "paired.json").read_text())},
            "csv": _untimed_csv(sweep / "report.csv"), "trials": trials,
            "md": _untimed_md((sweep / "report.md").read_text().replace(meta["sweep_id"], "SWEEP"))}


def _untimed_csv(path: Path) -> list[dict]:
    """The report's rows without their wall-clock columns (seconds differ between two runs of
    the same sweep; every other value must not)."""
    import csv

    from dsr_tune.records import TIMED

    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(f)]


def _untimed_md(text: str) -> str:
    """The report's Markdown with the cells of each table's "time (s)" column blanked."""
    out, col = [], None
    for line in text.splitlines():
        cells = line.split("|")
        if not line.startswith("|"):
            col = None
        elif "time (s)" in [c.strip() for c in cells]:
            col = [c.strip() for c in cells].index("time (s)")
        elif col is not None and not set(line) <= set("|-"):
            cells[col] = " - "
            line = "|".join(cells)
        out.append(line)
    return "\n".join(out)


def _runs_once(client, sweep: Path, epochs: int = 3) -> None:
    """Every planned run exactly once in MLflow, FINISHED, each epoch record once as metrics."""
    from dsr_tune.runfolder import read_records

    sweep_id = json.loads((sweep / "sweep.json").read_text())["sweep_id"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.sweep = '{sweep_id}'", max_results=1000)
    keys = [r.data.tags["dsr_tune.run"].split("/", 1)[1] for r in runs]
    assert sorted(keys) == sorted(PLANNED | {"parent"}), keys
    for r, key in zip(runs, keys):
        if key == "parent":
            continue
        assert r.info.status == "FINISHED", (key, r.info.status)
        records = [x for x in read_records(sweep / "runs" / key / "metrics.jsonl") if x["kind"] == "epoch"]
        assert [x["epoch"] for x in records] == list(range(epochs)), key
        for name in ("test_acc", "val_loss"):
            hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, f"epoch/{name}"))
            assert hist == [(x["epoch"] + 1, pytest.approx(x[name])) for x in records], (key, name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The sweep run straight through (the answer every interrupted one must give)."""
    cwd = tmp_path_factory.mktemp("straight")
    proc = _driver(cwd, cwd / "sweep")
    try:
        proc.wait(timeout=900)
    finally:
        _kill(proc)
    assert proc.returncode == 0, (cwd / "driver.log").read_text()[-4000:]
    return {"cwd": cwd, "answer": _answer(cwd / "sweep")}


@pytest.mark.slow
def test_a_sweep_killed_anywhere_and_resumed_gives_the_straight_answer(straight, tmp_path):
    """The driver SIGKILLed (with the Ray it started) during a search trial, between the
    search and the paired runs, and during a paired run; resumed with --resume after each,
    with crafted pickles planted where Tune keeps its state. The selections, the report and
    every search trial's values equal the straight run's (with at most 10 trials per cell
    the proposals are seeded per trial: they do not depend on what ran before or beside);
    every planned run is once in MLflow, each epoch once; no planted pickle was loaded."""
    from mlflow import MlflowClient

    sweep, marker = tmp_path / "sweep", tmp_path / "PWNED"
    search, paired = sweep / "runs" / "search" / "dsr", sweep / "runs" / "paired"
    points = {  # where to kill, and what must not have happened yet
        "during a search trial": (lambda: any(_epochs(r) >= 1 for r in search.glob("*")),
                                  lambda: not (search / "s0.9-t2").exists()),  # asked after the resume
        "between the phases": (lambda: (sweep / "paired.json").exists(),
                               lambda: not any(_epochs(r) for r in paired.glob("*/*/*"))),
        "during a paired run": (lambda: any(_epochs(r) >= 1 for r in paired.glob("*/*/*")),
                                lambda: sum(_epochs(r) == 3 for r in paired.glob("*/*/*")) < 4),
    }
    for i, (where, (due, before)) in enumerate(points.items()):
        proc = _driver(tmp_path, sweep, *(["--resume"] if i else []))
        try:
            assert _wait(proc, due), f"never got {where}: " + (tmp_path / "driver.log").read_text()[-3000:]
            assert before(), f"too late for {where}"
        finally:
            _kill(proc)
        assert _plant(sweep, marker) >= 2
    log = _finish(tmp_path, sweep)
    assert log.count("resuming from the study") >= 1  # the search continued from optuna.db
    assert not marker.exists()  # nothing Tune pickled was read
    assert _answer(sweep) == straight["answer"]
    _runs_once(MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"), sweep)


@pytest.mark.slow
def test_a_full_disk_in_a_search_trial_stops_the_sweep_and_resume_finishes_it(tmp_path):
    """On Ray: the first search trial's checkpoints cannot be written (ENOSPC, injected into
    the driver and every Ray worker by tests/faults/sitecustomize.py). Its run is FAILED with
    the reason, the sweep stops with one line (the other trial is stopped too, neither told to
    the study), and --resume, with room again, finishes the sweep."""
    import os

    from mlflow import MlflowClient
    from optuna import load_study

    from dsr_tune.tracking.mlflow_runs import read_run_file

    sweep, faults = tmp_path / "sweep", Path(__file__).parent / "faults"
    small = ["search.samples=2", "seeds=[1]", "baselines=[]", "train.epochs=2", "optim.milestones=[1]",
             "sparsity.stop_epoch=2"]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(faults), os.environ.get("PYTHONPATH")])),
           "DSR_TUNE_TEST_NO_SPACE": str(sweep / "runs" / "search" / "dsr" / "s0.9-t0")}
    proc = _driver(tmp_path, sweep, *small, env=env)
    try:
        proc.wait(timeout=600)
    finally:
        _kill(proc)
    log = (tmp_path / "driver.log").read_text()
    errors = [ln for ln in log.splitlines() if ln.startswith("dsr-tune: error:")]
    assert proc.returncode == 1 and len(errors) == 1, log[-4000:]
    assert "search/dsr/s0.9-t0: cannot write " in errors[0] and "No space left on device" in errors[0]
    assert "--resume" in errors[0]
    info = read_run_file(sweep / "runs" / "search" / "dsr" / "s0.9-t0")
    assert info["status"] == "FAILED" and "No space left on device" in info["failure"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(info["run_id"])
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["failure"]
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["status"] == "KILLED" and not (sweep / "paired.json").exists()
    study = load_study(study_name=f"{meta['sweep_id']}-dsr-s0.9", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials if t.number == 0] == ["RUNNING"]  # not told: resume runs it again

    _finish(tmp_path, sweep, *small)
    info = read_run_file(sweep / "runs" / "search" / "dsr" / "s0.9-t0")
    assert info["status"] == "FINISHED" and info.get("failure") is None
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and "failure" not in run.data.tags
    study = load_study(study_name=f"{meta['sweep_id']}-dsr-s0.9", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


# ------------------------------------------------------------------ the soak: a real tracking server, seeded faults

SOAK_SEED = int(__import__("os").environ.get("DSR_TUNE_SOAK_SEED", "3"))  # another seed: other fault points
DOWN_S = 30.0


class Server:
    """`mlflow server` on 127.0.0.1 (sqlite in ``root``), in a session of its own; starting
    and stopping it does not wait, so faults elsewhere keep their points meanwhile."""

    def __init__(self, root: Path):
        import socket

        self.root, self.sessions, self.proc = root, [], None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "2"]
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.append(self.proc.pid)

    def up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1):
                return True
        except OSError:
            return False

    def wait_up(self, timeout: float = 180) -> None:
        import time

        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None and not self.up():
            time.sleep(0.5)
        assert self.up(), "mlflow server did not answer: " + (self.root / "server.log").read_text()[-2000:]

    def stop(self, sig: int | None = None) -> None:
        """SIGTERM to the server's group (``sig``: another signal); the process is reaped
        at the next stop or start."""
        import os
        import signal

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig or signal.SIGTERM)
        except ProcessLookupError:
            pass

    def gone(self, timeout: float = 30) -> None:
        """Wait for the stopped server (SIGKILL after ``timeout``)."""
        import signal
        import subprocess

        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def _session(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _trial_processes(sid: int) -> list[int]:
    """The Tune trials' processes of the sweep whose driver leads session ``sid``."""
    found = []
    for pid in _session(sid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                found.append(pid)
        except OSError:
            pass
    return sorted(found)


@pytest.mark.slow
def test_soak_with_a_tracking_server_and_seeded_faults(straight, tmp_path):
    """The straight sweep again, logged live to a real `mlflow server`, with faults at points
    drawn from SOAK_SEED (epochs recorded so far, of 21): the server stopped for 30 s early on
    (the sweep may even start without it: the trials train on, their records in their run
    folders) and started again; a trial's process SIGKILLed (Tune restarts the trial, which
    continues from its checkpoint); the driver SIGKILLed with its Ray and resumed, once the
    server is back (the resumed sweep logs what MLflow missed, at its start and its end). It
    ends with the straight run's report, every planned run once in MLflow with every epoch
    record, and no process of the test left."""
    import os
    import random
    import signal
    import time

    from mlflow import MlflowClient

    rng = random.Random(SOAK_SEED)
    at = {"server": rng.randint(0, 2), "trial": rng.randint(1, 6), "driver": rng.randint(3, 8)}  # of 21 epochs
    server, sweep = Server(tmp_path), tmp_path / "sweep"
    server.start()
    server.wait_up()
    uri = [f"tracking.uri={server.uri}"]
    proc, done, down_since = _driver(tmp_path, sweep, *uri), {}, None
    drivers = [proc.pid]
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            n = sum(_epochs(m.parent) for m in (sweep / "runs").glob("**/metrics.jsonl"))
            trials = _trial_processes(proc.pid) if proc is not None else []
            if "trial" not in done and n >= at["trial"] and trials:
                os.kill(rng.choice(trials), signal.SIGKILL)
                done["trial"] = n
            if "server" not in done and n >= at["server"]:
                down_since, done["server"] = time.time(), n
                server.stop()
            if down_since is not None and time.time() - down_since >= DOWN_S:
                server.gone()
                server.start()
                down_since = None
            if "driver" not in done and n >= at["driver"] and proc is not None:
                _kill(proc)
                proc, done["driver"] = None, n
            if proc is None and down_since is None and server.up():
                proc = _driver(tmp_path, sweep, *uri, "--resume")
                drivers.append(proc.pid)
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        log = (tmp_path / "driver.log").read_text()
        assert proc is not None and proc.poll() == 0, log[-4000:]
        assert set(done) == {"trial", "server", "driver"} and down_since is None, (done, at, log[-3000:])
        assert _answer(sweep) == straight["answer"]
        _runs_once(MlflowClient(server.uri), sweep)
    finally:
        if proc is not None:
            _kill(proc)
        if server.proc is not None:
            server.stop()
            server.gone()
    deadline = time.time() + 60  # a killed driver's Ray is stopped by the watchdog within seconds
    while time.time() < deadline and any(_session(s) for s in drivers + server.sessions):
        time.sleep(1)
    left = {s: _session(s) for s in drivers + server.sessions if _session(s)}
    assert not left, {s: [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in pids] for s, pids in left.items()}
