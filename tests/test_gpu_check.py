"""benchmarks/gpu_check.py, the one command for the first GPU: its runner (each section in its
own process, within the budget, a crash or a hang costing one section) on fake sections, its
config keys and step counts against the real config and loader, the imports the GPU image can
satisfy, and the whole --device cpu --quick run (slow), so CI proves the command works before
a GPU ever sees it."""

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dsr_tune import config as C

from conftest import ROOT, load_script
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


gc = load_script(SCRIPT)
import gpu_check_lib as lib  # noqa: E402
import gpu_check_train as gtrain  # noqa: E402

FAKE = '''
import ctypes, os, signal, time

def boom(ctx, res):
    res.metric("before", 1, "written before the exception")
    raise ValueError("no such kernel")

class OutOfMemoryError(RuntimeError):  # torch.cuda's, by name
    pass

def oom(ctx, res):
    raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

def fine(ctx, res):
    res.metric("left_s", ctx.left(), "seconds left when it started")
    res.check("holds", True, "a check")

def wrong(ctx, res):
    res.check("budget_exact", False, "a broken invariant")

def segv(ctx, res):
    res.metric("before", 7, "written before the crash")
    ctypes.string_at(0)  # SIGSEGV, as a faulty CUDA library would

def hang(ctx, res):
    res.metric("before", 3, "written before the hang")
    res.metric("pid", os.getpid(), "this process")
    time.sleep(60)

def deaf(ctx, res):  # stuck where no Python handler runs: only SIGKILL stops it
    res.metric("before", 5, "written before it stopped listening")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
    time.sleep(60)

def slow(ctx, res):
    res.metric("left_s", ctx.left(), "seconds left when it started")
    time.sleep(max(0.0, ctx.left() - 0.05))  # uses all it was given, no more
'''


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "fake_sections.py").write_text(textwrap.dedent(FAKE))
    return tmp_path


def _run(tmp_path, spec, budget_s, meta=None):
    """run_sections on fake sections {name: (function in FAKE, share)}, each in its own process."""
    table = {name: (f"fake_sections:{fn}", share) for name, (fn, share) in spec.items()}
    out = tmp_path / "out"
    report = gc.Report(out, {"pydantic": "2", **(meta or {})}, start=time.monotonic())
    gc.run_sections(list(table), table, report, budget_s, device="cpu", quick=True, work=tmp_path, path=(tmp_path,))
    return json.loads((out / "gpu_check.json").read_text())["sections"], (out / "gpu_check.md").read_text()


def test_a_failing_or_crashing_section_is_recorded_and_the_rest_still_run(fake):
    sections, md = _run(fake, {"boom": ("boom", 1), "oom": ("oom", 1), "segv": ("segv", 1), "fine": ("fine", 1),
                               "wrong": ("wrong", 1)}, 200)
    assert sections["boom"]["status"] == "error" and sections["boom"]["error"] == "ValueError: no such kernel"
    assert "no such kernel" in sections["boom"]["details"]["traceback"] and sections["boom"]["metrics"] == {"before": 1}
    assert sections["oom"]["status"] == "oom" and "2.00 GiB" in sections["oom"]["error"]
    # a segfault kills only its own process: recorded with what it wrote before, and the next one runs
    assert sections["segv"]["status"] == "crashed" and "SIGSEGV" in sections["segv"]["error"]
    assert sections["segv"]["metrics"] == {"before": 7}
    assert sections["fine"]["status"] == "ok" and sections["fine"]["checks"] == {"holds": True}
    assert sections["wrong"]["status"] == "failed" and sections["wrong"]["checks"] == {"budget_exact": False}
    assert "| boom | error |" in md and "| segv | crashed |" in md and "**FAIL**" in md and "## fine: ok" in md


def test_a_section_past_its_limit_is_stopped_and_the_next_runs(fake, monkeypatch):
    monkeypatch.setattr(gc, "MIN_SECTION_S", 0.5)
    monkeypatch.setattr(gc, "RESERVE_S", 0.5)
    monkeypatch.setattr(gc, "KILL_GRACE_S", 1.0)
    t = time.monotonic()
    sections, _ = _run(fake, {"hang": ("hang", 1), "deaf": ("deaf", 1), "fine": ("fine", 1)}, 18.0)
    assert time.monotonic() - t < 18.0 + 2  # the budget holds, kills included
    hang, deaf = sections["hang"], sections["deaf"]
    assert hang["status"] == "timeout" and "limit" in hang["error"] and hang["metrics"]["before"] == 3
    assert hang["wall_s"] <= hang["limit_s"] + 0.5  # its own alarm stopped it in time
    # one that ignores the alarm and SIGTERM is killed at its limit, its figures kept
    assert deaf["status"] == "timeout" and "SIGKILL" in deaf["error"] and deaf["metrics"] == {"before": 5}
    assert deaf["wall_s"] <= deaf["limit_s"] + 1.0 + 0.5
    assert sections["fine"]["status"] == "ok" and sections["fine"]["metrics"]["left_s"] > 0


def test_sigterm_from_the_outer_timeout_stops_the_section_and_writes_the_report(fake):
    """`timeout -s TERM` signals the runner only (each section has its own process group): the
    runner stops the running section's group, marks it interrupted and writes the report."""
    out = fake / "out"
    driver = textwrap.dedent(f"""
        import signal, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(BENCH)!r})
        import gpu_check as gc
        signal.signal(signal.SIGTERM, gc._term)  # as main() does
        report = gc.Report(Path({str(out)!r}), {{"pydantic": "2"}}, start=time.monotonic())
        try:
            gc.run_sections(["hang", "fine"], {{"hang": ("fake_sections:hang", 1), "fine": ("fake_sections:fine", 1)}},
                            report, 100.0, device="cpu", quick=True, work=Path({str(fake)!r}), path=({str(fake)!r},))
        except KeyboardInterrupt:
            report.write()
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT)
    result = fake / "section_hang.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "pid" not in (result.read_text() if result.exists() else ""):
        time.sleep(0.2)
    proc.terminate()
    assert proc.wait(timeout=30) == 130
    sections = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert list(sections) == ["hang"] and sections["hang"]["status"] == "interrupted"
    pid = int(sections["hang"]["metrics"]["pid"])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the section's process is gone with the runner


def test_sections_share_the_budget_and_skip_with_a_note_when_it_runs_out(fake, monkeypatch):
    monkeypatch.setattr(gc, "MIN_SECTION_S", 0.5)
    monkeypatch.setattr(gc, "RESERVE_S", 0.0)
    sections, _ = _run(fake, {"a": ("fine", 1), "b": ("slow", 1), "c": ("fine", 2)}, 12.0)
    a, b, c = sections["a"], sections["b"], sections["c"]
    # a gets its share (3 s); b its share plus what a left unused; c's 6 s stay reserved while b runs
    assert a["limit_s"] == pytest.approx(3.0, abs=0.15)
    assert b["limit_s"] == pytest.approx(6.0 - a["wall_s"], abs=0.3) and b["limit_s"] > 3.0
    assert c["status"] == "ok" and c["limit_s"] == pytest.approx(12.0 - a["wall_s"] - b["wall_s"], abs=0.3)
    assert c["limit_s"] >= 6.0 - 0.3 and 0 < c["metrics"]["left_s"] < c["limit_s"]
    sections, _ = _run(fake, {"b": ("slow", 3), "c": ("fine", 1)}, 1.0)  # b takes it all: c is left too little
    assert sections["c"]["status"] == "skipped" and "out of time" in sections["c"]["notes"][0]


def test_without_pydantic_its_sections_fail_at_once_and_the_others_run(fake, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydantic", None)  # import pydantic raises ImportError
    args = argparse.Namespace(device="cpu", quick=True)
    meta = gc.base_meta(args, ["train"], 100.0)
    assert meta["pydantic"] == "missing"
    t = time.monotonic()
    sections, md = _run(fake, {"train": ("hang", 1), "fine": ("fine", 1)}, 100.0, meta=meta)
    assert time.monotonic() - t < 30  # train was not started (it would hang for 60 s)
    assert sections["train"]["status"] == "error" and "pydantic" in sections["train"]["error"]
    assert sections["fine"]["status"] == "ok" and "pydantic missing" in md


def test_the_section_modules_import_without_pydantic_ray_mlflow_optuna(tmp_path):
    """The GPU image has none of them (pydantic comes as wheels): the model sections import
    dsr_tune.models and dsr_tune.sparse only, and nothing imports Ray, MLflow or Optuna."""
    env = _blocking_env(tmp_path, "pydantic,ray,mlflow,optuna")
    code = "import gpu_check, gpu_check_lib, gpu_check_models, gpu_check_report; print('fine')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "fine" in proc.stdout, proc.stderr[-2000:]
    code = "import gpu_check_models, dsr_tune.config"  # the blocker works: this one needs pydantic
    proc = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "blocked: pydantic" in proc.stderr


def _blocking_env(tmp_path, names: str) -> dict:
    """An environment whose Pythons cannot import ``names`` (as on the GPU image)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent('''
        import os, sys
        BLOCK = set(os.environ["GPU_CHECK_TEST_BLOCK"].split(","))
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCK:
                    raise ImportError(f"blocked: {name} (not on the GPU image)")
        sys.meta_path.insert(0, Blocker())
    '''))
    env = dict(os.environ, GPU_CHECK_TEST_BLOCK=names)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_the_train_keys_are_config_keys_and_the_step_counts_are_the_loaders(tmp_path):
    """Both CLI runs' keys validate against the config (a renamed key fails here, in CI, not on
    the GPU), and the step counts the docs give are what the package's loader yields."""
    for sizes, steps, compile_steps in ((lib.FULL, 252, 42), (lib.QUICK, 28, 14)):
        assert gtrain.expected_steps(sizes.e2e, sizes.jpeg)[0] == steps
        assert gtrain.expected_steps(sizes.e2e_compile, sizes.jpeg)[0] == compile_steps
    jpeg = dict(lib.FULL.jpeg, size=(40, 30))  # the full run's file counts, tiny images
    root = lib.make_jpeg_tree(tmp_path / "jpeg", **jpeg)
    assert len(list(root.rglob("*.jpg"))) == 8 * (96 + 16)
    for e, compiled in ((lib.FULL.e2e, False), (lib.FULL.e2e_compile, True)):
        cfg = C.load(ROOT / gtrain.TRAIN_CONFIG, gtrain.e2e_overrides(e, "cpu", root, 1234, compiled))
        flat = cfg.flat()
        assert flat["sparsity.sparsity"] == lib.SPARSITY and flat["train.precision"] == "bf16"
        assert flat["train.epochs"] == e["epochs"] and flat["data.root"] == str(root)
        assert flat["model.name"] == e["model"] and flat["data.val_fraction"] == e["val_fraction"]
        assert flat["train.compile"] is compiled and flat["data.decode"] == ("gpu" if compiled else "cpu")
        assert set(gtrain.TRAIN_KEYS) <= set(flat)
        from dsr_tune.data import build_data

        steps, how = gtrain.expected_steps(e, jpeg)
        assert len(build_data(cfg.data).train) * e["epochs"] == steps, how


def test_the_resident_keys_are_config_keys_and_the_epoch_is_390_steps(tmp_path, monkeypatch):
    """wrn_resident's runs validate against the config, keep the data on the device, and an
    epoch of its generated CIFAR-shaped set is the step count its docs give."""
    import gpu_check_sweep as gsweep
    from torchvision.datasets import cifar

    from dsr_tune.data import build_data

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    for sizes in (lib.FULL, lib.QUICK):
        r = sizes.resident
        for method in ("dense", "dsr"):
            cfg = C.load(ROOT / gsweep.RESIDENT_CONFIG, gsweep.resident_overrides(r, "cpu", tmp_path, method, 1234))
            flat = cfg.flat()
            assert flat["data.resident"] is True and flat["data.val_fraction"] == 0 and flat["data.name"] == "cifar10"
            assert flat["sparsity.method"] == method and flat["train.precision"] == "bf16"
            assert (flat["model.depth"], flat["model.width"], flat["data.batch_size"]) == (r["depth"], r["width"],
                                                                                            r["batch"])
            assert set(gsweep.RESIDENT_KEYS) <= set(flat)
    assert lib.FULL.resident["images"] // lib.FULL.resident["batch"] == 390
    r = dict(lib.QUICK.resident)
    root = gsweep.write_cifar(tmp_path / "cifar", r["images"], r["test_images"])
    cfg = C.load(ROOT / gsweep.RESIDENT_CONFIG, gsweep.resident_overrides(r, "cpu", root, "dsr", 1234))
    bundle = build_data(cfg.data, device="cpu")
    assert bundle.resolved["resident"] and len(bundle.train) == r["images"] // r["batch"]
    assert len(bundle.test.y) == r["test_images"] and bundle.val is None


def test_report_headline_and_compiled_over_eager(tmp_path):
    report = gc.Report(tmp_path, {}, start=time.monotonic())
    eager, comp = gc.Result("resnet50"), gc.Result("resnet50_compile")
    eager.metrics = {"resnet50_dense_img_s": 2000.0, "resnet50_dsr_img_s": 1800.0, "resnet50_dsr_over_dense": 0.9}
    comp.metrics = {"compiled_resnet50_dense_img_s": 3000.0, "compiled_resnet50_dsr_img_s": 2400.0,
                    "compiled_resnet50_dsr_over_dense": 0.8}
    report.sections.update(resnet50=eager, resnet50_compile=comp)
    gc.cross_metrics(report)
    assert comp.metrics["compiled_resnet50_dense_over_eager"] == pytest.approx(1.5)
    report.write()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| resnet50 | eager | 2,000 | 1,800 | 0.9 |" in md and "| resnet50 | torch.compile | 3,000 | 2,400 | 0.8 |" in md


def test_one_gpu_command_in_the_docs_and_its_limits_nest():
    """docs/gpu.md holds THE command; the README quotes it exactly. A failed wheel install
    does not cancel the try; the budget ends inside the outer timeout, which ends inside the
    tool's timeout_s, each with a margin."""
    import re

    def commands(text):
        return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m pip install")]

    docs = (ROOT / "docs" / "gpu.md").read_text()
    readme = (ROOT / "README.md").read_text()
    (cmd,) = commands(docs)
    assert commands(readme) == [cmd]
    assert "|| exit" not in cmd and "|| echo" in cmd and "--out $OUT" in cmd and "tee $OUT/stdout.log" in cmd
    assert "set -o pipefail" in cmd and "PYTHONUNBUFFERED=1" in cmd and "--budget-s" not in cmd  # the default
    outer = int(re.search(r"timeout -s TERM (\d+) python3 benchmarks/gpu_check.py", cmd).group(1))
    tool = {int(t) for t in re.findall(r"timeout_s=(\d+)", docs + readme) if int(t) > 300}
    assert gc.BUDGET_S + 20 <= outer and tool == {540} and outer + 20 <= 540
    shares = {name: share for name, (_, share) in gc.SECTIONS.items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert list(gc.SECTIONS)[:2] == ["resnet50", "resnet50_compile"]  # the headline figures first
    for name, share in shares.items():  # the table's seconds are the code's shares of 480 s
        assert re.search(rf"\| `{name}` \| {round(share * gc.BUDGET_S)} s", docs), name


@pytest.mark.slow
def test_quick_cpu_run_fills_every_section(tmp_path):
    """The whole CPU form, as CI runs it, where Ray, MLflow and Optuna cannot be imported (the
    GPU image has none). --quick's budget (1200 s) is about 10x what the sections need on 2
    quiet cores, so a timeout here is a hang, and fails like any other section not ok."""
    out = tmp_path / "out"
    t = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=gc.QUICK_BUDGET_S + 300, cwd=ROOT,
                          env=_blocking_env(tmp_path, "ray,mlflow,optuna"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert list(data["sections"]) == list(gc.SECTIONS)
    for name, s in data["sections"].items():
        if name.endswith("_compile") and s["status"] == "unavailable":  # no working compiler: recorded, not a crash
            assert s["error"] and s["details"]["traceback"]
            continue
        assert s["status"] == "ok", (name, s["error"], s["notes"])
        assert s["metrics"], name
        for key, v in s["metrics"].items():
            assert math.isfinite(v) and v > 0, (name, key, v)
        assert s["checks"] and all(s["checks"].values()), (name, s["checks"])
        assert f"## {name}: ok" in md and s["wall_s"] <= s["limit_s"] + gc.KILL_GRACE_S
    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["device_name"].startswith("CPU") and meta["torch"] == torch.__version__
    elapsed = min(time.monotonic() - t, gc.QUICK_BUDGET_S)
    assert "--quick" in meta["command"] and meta["wall_s"] <= elapsed + 0.05  # written to 0.1 s
    tests = data["sections"]["tests"]["details"]["counts"]
    assert tests["failures"] == tests["errors"] == 0 and data["sections"]["tests"]["metrics"]["tests_passed"] >= 5
    train = data["sections"]["train"]
    assert {"e2e_steps_exact", "ckpt_budget_exact", "ckpt_masked_weights_zero", "ckpt_inactive_momentum_zero",
            "inproc_budget_exact", "e2e_compile_steps_exact", "compile_ckpt_budget_exact",
            "compile_ckpt_plain_names", "compile_ckpt_compile_and_decode_gpu"} <= set(train["checks"])
    assert train["metrics"]["e2e_steps"] == 28 and train["metrics"]["e2e_compile_steps"] == 14
    assert data["sections"]["data"]["metrics"]["package_decode_gpu_img_s"] > 0
    assert "| resnet50 | eager |" in md
    for log in ("train_cli.log", "train_compile_cli.log", "tests.log", "tests_junit.xml"):
        assert (out / log).exists(), log


def test_gpu_wheels_pin_pydantic_and_everything_it_requires(tmp_path):
    """benchmarks/gpu_wheels.py fetches what the GPU image lacks: pydantic at the lock's
    versions with every dependency pydantic declares (a pydantic upgrade that adds one
    fails here, not on the GPU)."""
    import importlib.metadata as md
    import re

    gw = load_script(ROOT / "benchmarks" / "gpu_wheels.py")
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
