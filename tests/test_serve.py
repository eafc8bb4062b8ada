"""``dsr-tune ui`` and ``dsr-tune dashboard``: the URL once the server answers,
HTTP that works, and SIGTERM / SIGINT stopping the server's whole process tree
(MLflow's uvicorn worker included). Bad input exits 2 with
one line, before any server starts.

The slow tests start MLflow twice (about 20 s each on 2 cores) and
optuna-dashboard once; every process they start is killed at the end, also
on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

import pytest

from dsr_tune import cli
from dsr_tune.cli import serve
from dsr_tune.distributed import reaper
from dsr_tune.tracking import store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(procs: list[reaper.Proc]) -> list[reaper.Proc]:
    return [p for p in procs if reaper.start_time(p.pid) == p.start]


class Served:
    """``dsr-tune ARGS`` in a session of its own, its stdout read line by line."""

    def __init__(self, args: list[str], cwd: Path):
        self.err = cwd / f"serve-{time.monotonic_ns()}.err"
        with self.err.open("w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", *args], cwd=cwd, text=True,
                                         stdout=subprocess.PIPE, stderr=f, start_new_session=True)
        self.seen: list[reaper.Proc] = []

    def url(self, timeout: float = 180) -> str:
        """The first stdout line (the URL line); every process of the tree is noted."""
        deadline = time.time() + timeout
        line = self.proc.stdout.readline()  # our stdout holds the URL line alone
        assert line and time.time() < deadline, self.err.read_text()[-3000:]
        self.seen = reaper.family(self.proc.pid)
        return "http://" + line.split("http://", 1)[1].split()[0]

    def stop(self, sig: int) -> float:
        """Send ``sig`` to the command alone (as a terminal's Ctrl-C or a kill would); seconds until it exits."""
        seen = {p.pid for p in self.seen}
        self.seen += [p for p in reaper.family(self.proc.pid) if p.pid not in seen]  # workers forked since
        t0 = time.time()
        os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=60)
        return time.time() - t0

    def cleanup(self) -> None:
        for p in _alive(self.seen + reaper.family(self.proc.pid)):
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


# ------------------------------------------------------------------ fast: the shared helper, bad input


def test_serve_prints_nothing_for_a_server_that_never_answers(capsys):
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    t0 = time.time()
    assert serve.serve(hang, title="hang", url="http://x", health=f"http://127.0.0.1:{free_port()}/",
                       ready_s=1.0) == 1
    out, err = capsys.readouterr()
    assert "http://x" not in out and err.strip().count("\n") == 0 and "did not answer" in err
    assert time.time() - t0 < 20  # the process was stopped (SIGTERM), not waited for
    died = [sys.executable, "-c", "import sys; sys.exit(3)"]
    assert serve.serve(died, title="died", url="http://x", health=f"http://127.0.0.1:{free_port()}/") == 3
    assert "exited with status 3 before it answered" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "sweep").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        store.client(store.embedded(tmp_path)).search_experiments()  # creates mlruns/mlflow.db
        for argv, what in ((["dashboard", "sweep"], "holds no optuna.db"),
                           (["dashboard", "missing"], "holds no optuna.db"),
                           (["ui", "--port", "0"], "--port 0"),
                           (["ui", "--port", str(busy.getsockname()[1])], "in use"),
                           (["ui", "--host", "203.0.113.7"], "--host 203.0.113.7"),
                           (["ui", "--timeout", "0"], "--timeout")):
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("dsr-tune: error:") and what in err[0], (argv, err)
    args = Namespace(host="127.0.0.1", port=free_port(), timeout=1.0)
    assert serve._host_checks(args) is None and "warning" not in capsys.readouterr().err
    args.host = "0.0.0.0"  # allowed, with a warning: the server answers anyone
    assert serve._host_checks(args) is None
    assert "warning: --host 0.0.0.0" in capsys.readouterr().err


# ------------------------------------------------------------------ slow: real servers


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ui_answers_then_stops_its_whole_tree(tmp_path, sig):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    client = store.client(store.resolve(f"sqlite:///{db}"))
    exp = store.experiment_id(client, "served", store.resolve(f"sqlite:///{db}"))
    port = free_port()
    s = Served(["ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)], tmp_path)
    try:
        link = s.url()  # the runs table of the store's only experiment (a fresh browser lands there)
        url = f"http://127.0.0.1:{port}"
        assert link == f"{url}/#/experiments/{exp}/runs?workflowType=machine_learning"
        assert _get(f"{url}/health") == (200, b"OK")  # printed only once it answers
        status, body = _get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served")
        assert status == 200 and json.loads(body)["experiment"]["experiment_id"] == exp
        took = s.stop(sig)
        assert any("uvicorn" in p.name for p in s.seen), s.seen  # dsr-tune, mlflow, uvicorn
        assert len(s.seen) <= 3, s.seen  # one worker, no GenAI job runners (MLflow's defaults: 15 processes)
        assert s.proc.returncode == 0 and took < 30
        assert not _alive(s.seen), _alive(s.seen)
        with pytest.raises(OSError):
            _get(f"{url}/health")
    finally:
        s.cleanup()


@pytest.mark.slow
def test_dashboard_serves_the_sweep_study_then_stops(tmp_path):
    import optuna

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(study_name="demo-20260101-000000", storage=f"sqlite:///{sweep / 'optuna.db'}",
                                direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0.01, 0.1), n_trials=2)
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "demo-20260101-000000"}))
    port = free_port()
    s = Served(["dashboard", str(sweep), "--port", str(port)], tmp_path)
    try:
        url = s.url(timeout=60)
        assert url == f"http://127.0.0.1:{port}/dashboard"
        status, body = _get(f"http://127.0.0.1:{port}/api/studies")
        names = [x["study_name"] for x in json.loads(body)["study_summaries"]]
        assert status == 200 and names == ["demo-20260101-000000"]
        assert "study demo-20260101-000000: 2 of 2 trials complete" in s.err.read_text()  # listed first
        assert _get(url)[0] == 200
        s.stop(signal.SIGTERM)
        assert s.proc.returncode == 0 and not _alive(s.seen), _alive(s.seen)
    finally:
        s.cleanup()


def test_dashboard_lists_the_studies_it_serves(tmp_path):
    """Each study's name, its trials and its objectives by name, as the sweep's searcher
    names them (an unnamed objective is Optuna's "objective <i>")."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "optuna.db"
    assert serve.studies(db) == [f"{db} holds no study yet"]
    named = optuna.create_study(study_name="s-1-dsr-s0.9", storage=f"sqlite:///{db}", directions=["maximize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        named.set_metric_names(["val_acc", "nonzero_params"])
    named.optimize(lambda t: (t.suggest_float("lr", 0.01, 0.1), 5.0), n_trials=2)
    named.ask()  # one still running
    optuna.create_study(study_name="s-1-dsr-s0.8", storage=f"sqlite:///{db}").optimize(lambda t: 1.0, n_trials=1)
    assert serve.studies(db) == ["study s-1-dsr-s0.8: 1 of 1 trials complete; objective 0 (minimize)",
                                 "study s-1-dsr-s0.9: 2 of 3 trials complete; val_acc (maximize), "
                                 "nonzero_params (minimize)"]
