"""benchmarks/gpu_check.py, the one command for the first GPU: its guard and budget on fake
sections, its config keys against the real config, and the whole --device cpu --quick run
(slow), so CI proves the command works before a GPU ever sees it."""

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dsr_tune import config as C

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gc = _load()


def _run(tmp_path, table, budget_s):
    ctx = gc.Ctx(device=torch.device("cpu"), sizes=gc.QUICK, out=tmp_path, work=tmp_path, quick=True)
    report = gc.Report(tmp_path, gc.metadata(argparse.Namespace(quick=True, budget_s=budget_s), ctx.device))
    gc.run_sections(list(table), table, ctx, report, budget_s)
    return json.loads((tmp_path / "gpu_check.json").read_text())["sections"], (tmp_path / "gpu_check.md").read_text()


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path):
    def boom(ctx, res):
        raise ValueError("no such kernel")

    def oom(ctx, res):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def fine(ctx, res):
        res.metric("answer", 42, "a number")
        res.check("holds", True, "a check")

    def wrong(ctx, res):
        res.check("budget_exact", False, "a broken invariant")

    sections, md = _run(tmp_path, {"boom": (boom, 1), "oom": (oom, 1), "fine": (fine, 1), "wrong": (wrong, 1)}, 60)
    assert sections["boom"]["status"] == "error" and sections["boom"]["error"] == "ValueError: no such kernel"
    assert "no such kernel" in sections["boom"]["details"]["traceback"]
    assert sections["oom"]["status"] == "oom" and "2.00 GiB" in sections["oom"]["error"]
    assert sections["fine"]["status"] == "ok" and sections["fine"]["metrics"] == {"answer": 42}
    assert sections["wrong"]["status"] == "failed" and sections["wrong"]["checks"] == {"budget_exact": False}
    assert "| boom | error |" in md and "**FAIL**" in md and "## fine: ok" in md


def test_a_section_past_its_limit_is_stopped_and_the_next_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_SECTION_S", 0.2)

    def hang(ctx, res):
        time.sleep(60)

    def fine(ctx, res):
        res.metric("left_s", ctx.left(), "seconds left when it started")

    t = time.monotonic()
    sections, _ = _run(tmp_path, {"hang": (hang, 1), "fine": (fine, 1)}, 2.0)
    assert time.monotonic() - t < 10
    assert sections["hang"]["status"] == "timeout" and "limit" in sections["hang"]["error"]
    assert sections["fine"]["status"] == "ok" and sections["fine"]["metrics"]["left_s"] > 0


def test_sections_share_the_budget_and_skip_with_a_note_when_it_runs_out(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_SECTION_S", 0.5)
    limits = {}

    def quick(ctx, res):
        limits[res.name] = ctx.left()

    def slow(ctx, res):
        limits[res.name] = ctx.left()
        time.sleep(max(0.0, ctx.left() - 0.05))  # uses all it was given, no more

    sections, _ = _run(tmp_path, {"a": (quick, 1), "b": (slow, 1), "c": (quick, 2)}, 8.0)
    # a gets its share (2 s), b its share plus what a left unused (less the writing of the
    # report between sections, up to ~0.6 s on a loaded 2-core machine), c's 4 s stay
    # reserved while b runs
    assert limits["a"] == pytest.approx(2.0, abs=0.2) and 3.0 < limits["b"] <= 4.0
    assert sections["c"]["status"] == "ok" and 3.0 < limits["c"] <= 4.0
    sections, _ = _run(tmp_path, {"b": (slow, 3), "c": (quick, 1)}, 1.0)  # b overruns its share: c is left too little
    assert sections["c"]["status"] == "skipped" and "out of time" in sections["c"]["notes"][0]


def test_the_train_keys_are_config_keys(tmp_path):
    """The one dictionary of keys the script gives `dsr-tune train` validates against the config
    (a renamed key fails here, in CI, not on the GPU)."""
    ctx = gc.Ctx(device=torch.device("cpu"), sizes=gc.FULL, out=tmp_path, work=tmp_path, quick=False)
    root = gc.make_jpeg_tree(tmp_path / "jpeg", classes=2, train=1, val=1, size=(40, 30))
    assert len(list(root.rglob("*.jpg"))) == 4
    cfg = C.load(ROOT / gc.TRAIN_CONFIG, gc.e2e_overrides(ctx, root, 1234))
    flat = cfg.flat()
    assert flat["sparsity.sparsity"] == gc.SPARSITY and flat["train.precision"] == "bf16"
    assert flat["train.epochs"] == gc.FULL.e2e["epochs"] and flat["data.root"] == str(root)
    assert set(gc.TRAIN_KEYS) <= set(flat)


@pytest.mark.slow
def test_quick_cpu_run_fills_every_section(tmp_path):
    out = tmp_path / "out"
    t = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert list(data["sections"]) == list(gc.SECTIONS)
    for name, s in data["sections"].items():
        if name == "compile" and s["status"] == "unavailable":  # no working compiler: recorded, not a crash
            assert s["error"]
            continue
        assert s["status"] == "ok", (name, s["error"], s["notes"])
        assert s["metrics"], name
        for key, v in s["metrics"].items():
            assert math.isfinite(v) and v > 0, (name, key, v)
        assert s["checks"] and all(s["checks"].values()), (name, s["checks"])
        assert f"## {name}: ok" in md
    meta = data["meta"]
    assert meta["device"] == "cpu" and "--quick" in meta["command"] and meta["wall_s"] <= time.monotonic() - t
    tests = data["sections"]["tests"]["details"]["counts"]
    assert tests["failures"] == tests["errors"] == 0 and data["sections"]["tests"]["metrics"]["tests_passed"] >= 5
    train = data["sections"]["train"]["checks"]
    assert {"ckpt_budget_exact", "ckpt_masked_weights_zero", "ckpt_inactive_momentum_zero", "inproc_budget_exact"} <= set(train)
    assert (out / "train_cli.log").exists() and (out / "tests_junit.xml").exists()


def test_gpu_wheels_pin_pydantic_and_everything_it_requires(tmp_path):
    """benchmarks/gpu_wheels.py fetches what the GPU image lacks: pydantic at the lock's
    versions with every dependency pydantic declares (a pydantic upgrade that adds one
    fails here, not on the GPU)."""
    import importlib.metadata as md
    import re

    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "benchmarks" / "gpu_wheels.py")
    gw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gw)
    pins = dict(p.split("==") for p in gw.pins())
    assert {gw._norm(n): v for n, v in pins.items()} == {
        gw._norm(n): md.version(n) for n in gw.NAMES}  # the lock's versions are the installed ones
    needed = {"pydantic"} | {re.split(r"[<>=!~ ;\[]", r)[0] for r in md.requires("pydantic")
                             if "extra ==" not in r}
    needed |= {re.split(r"[<>=!~ ;\[]", r)[0] for r in md.requires("pydantic_core") or [] if "extra ==" not in r}
    assert {gw._norm(n) for n in needed} <= {gw._norm(n) for n in gw.NAMES}
    cmd = gw.command(Path("/tmp/x"))
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--no-deps" in cmd
    (tmp_path / "no.lock").write_text("torch==2.0\n")
    with pytest.raises(SystemExit, match="pins no pydantic"):
        gw.pins(tmp_path / "no.lock")
