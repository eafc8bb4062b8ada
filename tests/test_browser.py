"""What a new user sees: a fresh headless Chromium (Debian's ``chromium``) at
the URL ``dsr-tune ui`` prints lands on the experiment's runs table, with the
run ``dsr-tune train`` logged, not on MLflow 3's GenAI overview (which the same
experiment's plain URL opens in a fresh browser); a sweep parent's description
keeps its ``s<sparsity>/<row>/*``.

Needs the ``chromium`` binary (.ci/run installs it and sets
DSR_TUNE_REQUIRE_BROWSER=1, so CI fails rather than skips without it).
DSR_TUNE_SCREENSHOT=FILE also saves the runs table's screenshot there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsr_tune.distributed import reaper

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
SHORT = ["train.epochs=2", "optim.milestones=[]", "sparsity.period_schedule=null", "sparsity.stop_epoch=null",
         "train.threads=1"]
RUNS_TABLE = "Run Name"                           # the runs table's column header
GENAI = ("Detect Issues", "workflowType=genai")   # the GenAI overview's pop-up and links

pytestmark = pytest.mark.slow


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("DSR_TUNE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium; CI installs it)")
    return found


def _browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM a fresh browser profile renders at ``url`` (after MLflow's scripts ran)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--virtual-time-budget=25000", "--window-size=1600,1000"]
    if screenshot is not None:
        subprocess.run(cmd + [f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    return subprocess.run(cmd + ["--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout


def test_a_fresh_browser_opens_the_printed_url_on_the_runs_table(tmp_path, monkeypatch):
    _chromium()
    from dsr_tune import cli
    from dsr_tune.tracking import SweepTracker, store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlruns" / "mlflow.db"
    # a sweep's parent run, for its description (made as a sweep makes it, without the sweep)
    sweep = SweepTracker(store.resolve(f"sqlite:///{db}"), "sweep_demo", "sweep_demo-1")
    assert sweep.connect() is None
    assert cli.main(["train", DIGITS, *SHORT, "--output", "runs/dsr_s09"]) == 0  # the newest run: ui opens it

    err = (tmp_path / "ui.err").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", "ui", "--tracking-uri", str(db),
                             "--port", str(_free_port())], stdout=subprocess.PIPE,
                            stderr=err, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert "http://" in line, (tmp_path / "ui.err").read_text()[-3000:]
        url = "http://" + line.split("http://", 1)[1].split()[0]
        base = url.split("/#/", 1)[0]
        shot = tmp_path / "runs_table.png"
        dom = _browse(url, tmp_path / "profile1", shot)
        digits = store.client(store.resolve(str(db))).get_experiment_by_name("digits").experiment_id
        assert url == f"{base}/#/experiments/{digits}/runs?workflowType=machine_learning"  # the newest run's
        assert RUNS_TABLE in dom and ">dsr_s09<" in dom, dom[-2000:]  # the train run, by its folder's name
        assert not any(g in dom for g in GENAI)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("DSR_TUNE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["DSR_TUNE_SCREENSHOT"])
        # what the markers tell apart: the experiment's plain URL opens a fresh browser on GenAI
        exp_id = url.split("/experiments/", 1)[1].split("/", 1)[0]
        plain = _browse(f"{base}/#/experiments/{exp_id}", tmp_path / "profile2")
        assert any(g in plain for g in GENAI) and RUNS_TABLE not in plain
        # the sweep parent's description, rendered: s<sparsity>/<row>/* kept (angle brackets as text)
        page = _browse(f"{base}/#/experiments/{sweep.experiment_id}/runs/{sweep.parent_id}"
                       "?workflowType=machine_learning", tmp_path / "profile3")
        assert "s&lt;sparsity&gt;/&lt;row&gt;/*" in page, page[-3000:]
    finally:
        family = reaper.family(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        time.sleep(0.5)
        left = [p for p in family if reaper.start_time(p.pid) == p.start]
        for p in left:
            os.kill(p.pid, signal.SIGKILL)
        err.close()
    assert not left  # SIGTERM stopped the server's whole tree


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
