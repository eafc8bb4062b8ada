"""gpu_check's ``train`` and ``tests`` sections: the real `dsr-tune train` CLI end to end on
the generated JPEGs (twice: the main run, then a short one with train.compile=true and
data.decode=gpu), its checkpoints checked on the device; and pytest -m cuda."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import torch

from bench_dsr import train_step
from dsr_tune.models import build_model, sparse_names
from dsr_tune.sparse import Masking, dsr
from gpu_check_lib import (SPARSITY, budget_of, check_invariants, jpeg_tree, make_batch, make_model,
                           masking_violations, scaled_np, sgd, violations)

ROOT = Path(__file__).resolve().parents[1]

# Every config key the `train` section passes to `dsr-tune train`, in ONE place. If config.py
# renames one (e.g. sparsity.target_pruned -> sparsity.dsr.target_pruned), rename it here
# (tests/test_gpu_check.py loads both runs' keys through the real config). "{...}" is filled
# in per run by e2e_overrides() from Sizes.e2e / Sizes.e2e_compile.
TRAIN_CONFIG = "configs/imagenet_resnet50.yaml"  # the CONFIG argument; these keys override it
TRAIN_KEYS = {
    "model.name": "{model}",
    "model.width": "{width}",
    "model.depth": "{depth}",  # WRN only (6n+4); ResNet-50 ignores it
    "data.name": "folder",
    "data.root": "{root}",
    "data.image_size": "{image}",
    "data.batch_size": "{batch}",
    "data.eval_batch_size": "{batch}",
    "data.loader_workers": "{workers}",
    "data.val_fraction": "{val_fraction}",  # set here: the step count below depends on it
    "data.decode": "{decode}",
    "data.resident": "false",  # the loader processes and data.decode are what this section checks
    "optim.lr": 0.1,
    "optim.milestones": "[]",
    "optim.decay_norm_and_bias": "true",  # one parameter group: the momentum check maps state by index
    "sparsity.method": "dsr",
    "sparsity.sparsity": SPARSITY,
    "sparsity.dsr.target_pruned": "{np}",
    "sparsity.period_schedule": "[[0, {period}]]",
    "sparsity.stop_epoch": "{epochs}",
    "train.epochs": "{epochs}",
    "train.device": "{device}",
    "train.precision": "bf16",
    "train.channels_last": "true",
    "train.compile": "{compile}",
    "train.compile_backend": "{backend}",
    "train.seed": 0,
}


def subprocess_env() -> dict:
    """The checkout first on the path: the GPU machine runs this tree without installing it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def cli_command() -> list[str]:
    exe = Path(sys.executable).parent / "dsr-tune"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dsr_tune.cli"]


def e2e_overrides(e: dict, device: str, root: Path, np_: int, compiled: bool = False) -> list[str]:
    """`key=value` arguments of one CLI run; ``e`` is Sizes.e2e or Sizes.e2e_compile."""
    values = dict(model=e["model"], width=e["kw"]["width"], depth=e["kw"].get("depth", 28), root=root,
                  image=e["image"], batch=e["batch"], workers=e["workers"], val_fraction=e["val_fraction"],
                  decode="gpu" if compiled else "cpu", np=np_, period=e["period"], epochs=e["epochs"], device=device,
                  compile=str(compiled).lower(), backend=e.get("backend", "inductor"))
    return [f"{k}={str(v).format(**values)}" for k, v in TRAIN_KEYS.items()]


def expected_steps(e: dict, jpeg: dict) -> tuple[int, str]:
    """Training steps of a run on the generated tree, as the package splits and batches it: the
    validation share held out (data.files.split_indices), the last partial batch dropped."""
    from dsr_tune.data.files import split_indices

    files = jpeg["classes"] * jpeg["train"]
    n_train = len(split_indices(files, e["val_fraction"])[0])
    per_epoch = n_train // e["batch"]
    return per_epoch * e["epochs"], (f"{files} training JPEGs, {files - n_train} held out for validation "
                                     f"(data.val_fraction={e['val_fraction']}), {per_epoch} batches of {e['batch']} "
                                     f"per epoch ({n_train % e['batch']} dropped) x {e['epochs']} epochs")


def section_train(ctx, res) -> None:
    in_process_check(ctx, res)
    root = jpeg_tree(ctx.work, ctx.sizes.jpeg)
    # kept for the compile run after the main one: CLI start, inductor compiling WRN-10 for training and
    # evaluation, 42 steps (on the CPU the quick form traces with aot_eager, but on 2 slow cores)
    reserve = 45.0 if ctx.device.type == "cuda" else 60.0
    runs = (("e2e_", ctx.sizes.e2e, "train_cli.log", False, reserve),
            ("e2e_compile_", ctx.sizes.e2e_compile, "train_compile_cli.log", True, 0.0))
    failed = []
    for p, e, log, compiled, keep in runs:  # a failed or slow first run still leaves the second its try
        if ctx.left() < 15:
            res.note(f"the {p.rstrip('_')} run was not started: {ctx.left():.0f} s left")
            if res.status == "ok":
                res.status, res.error = "timeout", f"the {p.rstrip('_')} run was not started: out of time"
            break
        try:
            cli_run(ctx, res, p, e, root, log, compiled=compiled, reserve=keep)
        except Exception as exc:  # recorded; raised once both runs had their turn
            res.note(f"{p.rstrip('_')} run: {type(exc).__name__}: {str(exc)[:300]}")
            res.details[p + "traceback"] = traceback.format_exc()[-3000:]
            failed.append(exc)
    if failed:
        raise failed[0]


def cli_run(ctx, res, p: str, e: dict, root: Path, log_name: str, compiled: bool, reserve: float) -> None:
    """One `dsr-tune train` subprocess, then its records and checkpoint checked."""
    classes, device = ctx.sizes.jpeg["classes"], ctx.device
    numel, budget_expected, total = budget_of(e["model"], e["kw"], classes)
    base = ctx.sizes.resnet50 if e["model"] == "resnet50" else ctx.sizes.wrn
    np_ = scaled_np(replace(base, kw=e["kw"], classes=classes), numel)
    steps_expected, how_steps = expected_steps(e, ctx.sizes.jpeg)
    run_dir = ctx.work / f"{p}run"
    cmd = [*cli_command(), "train", str(ROOT / TRAIN_CONFIG), *e2e_overrides(e, device.type, root, np_, compiled),
           "--output", str(run_dir)]
    res.details[p + "command"] = shlex.join(cmd)
    print(f"  $ {shlex.join(cmd)}\n  ({how_steps} = {steps_expected} steps)", flush=True)
    log = ctx.out / log_name
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT,
                              timeout=max(10.0, ctx.left() - reserve))
    wall = time.perf_counter() - t
    tail = log.read_text()[-3000:]
    res.details[p + "log_tail"] = tail
    res.check(p + "cli_exit_ok", proc.returncode == 0, f"`dsr-tune train` exit status {proc.returncode} (log: {log.name})")
    if proc.returncode != 0:
        raise RuntimeError(f"dsr-tune train ({p.rstrip('_')}) failed with status {proc.returncode}: {tail[-500:]}")
    from dsr_tune.runfolder import read_records

    records = read_records(run_dir / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    reallocs = [r for r in records if r["kind"] == "realloc"]
    steps = epochs[-1]["step"] if epochs else 0
    what = (f"{e['model']} {e['kw']} at {e['image']} px, batch {e['batch']}, {e['workers']} loader processes, bf16, "
            f"channels_last" + (f", train.compile=true ({e['backend']}), data.decode=gpu" if compiled else ""))
    res.metric(p + "wall_s", wall, "the CLI subprocess, start to exit (imports, data, training, evaluation, checkpoints)")
    res.metric(p + "steps", steps, f"training steps the run recorded: {len(epochs)} epochs of {what}")
    res.check(p + "steps_exact", steps == steps_expected, f"{steps} steps == {steps_expected}: {how_steps}")
    res.metric(p + "samples_per_s_last_epoch", epochs[-1]["samples_per_s"], "the trainer's own record (metrics.jsonl)")
    res.metric(p + "reallocations", len(reallocs), f"reallocation records (period {e['period']} steps, Np {np_:,})")
    res.check(p + "epochs_complete", len(epochs) == e["epochs"], f"{len(epochs)} epoch records of {e['epochs']}")
    res.check(p + "records_budget", bool(reallocs) and all(
        sum(l["nonzero"] for l in r["layers"].values()) == budget_expected for r in reallocs),
        f"every reallocation record's per-tensor non-zero counts sum to {budget_expected:,}")
    res.check(p + "nonzero_params", all(r["nonzero_params"] == total - numel + budget_expected for r in epochs),
              f"every epoch's nonzero_params == dense {total - numel:,} + budget {budget_expected:,}")
    checkpoint_check(ctx, res, "compile_ckpt_" if compiled else "ckpt_", run_dir / "checkpoint.pt", e, classes,
                     budget_expected, compiled)


def checkpoint_check(ctx, res, p: str, path: Path, e: dict, classes: int, budget: int, compiled: bool) -> None:
    """The CLI's checkpoint loaded onto the device: budget, masked weights, inactive momentum;
    for the compiled run also the plain (uncompiled) parameter names and the settings used."""
    from dsr_tune import checkpoint as ckpt

    state = ckpt.load(path, map_location=ctx.device)
    with torch.device("meta"):
        model = build_model(e["model"], num_classes=classes, **e["kw"])
    names = [n for n, _ in model.named_parameters()]
    groups = state["optimizer"]["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or len(ids) != len(names):
        raise RuntimeError(f"cannot map optimizer state to names: {len(groups)} groups, {len(ids)} ids, {len(names)} params")
    index = dict(zip(names, ids))
    masks = {n: m.to(ctx.device) for n, m in state["masking"]["masks"].items()}
    weights = {n: state["model"][n] for n in masks}
    momenta = {n: state["optimizer"]["state"][index[n]]["momentum_buffer"] for n in masks
               if "momentum_buffer" in state["optimizer"]["state"].get(index[n], {})}
    res.check(p + "budget_recorded", state["masking"]["budget"] == budget,
              f"checkpoint's budget {state['masking']['budget']:,} == {budget:,}, the uniform spread at sparsity {SPARSITY}")
    check_invariants(res, p, violations(masks, weights, momenta), state["masking"]["budget"],
                     "the CLI's checkpoint.pt, loaded onto the device")
    if compiled:
        plain = set(model.state_dict())
        res.check(p + "plain_names", set(state["model"]) == plain,
                  f"the checkpoint's {len(state['model'])} model keys are the uncompiled model's "
                  f"(no _orig_mod. prefix): {sorted(set(state['model']) ^ plain)[:3] or 'none differ'}")
        cfg = state.get("config", {})
        used = (cfg.get("train", {}).get("compile"), cfg.get("data", {}).get("decode"))
        res.check(p + "compile_and_decode_gpu", used == (True, "gpu"),
                  f"the run's recorded config: train.compile={used[0]}, data.decode={used[1]}")


def in_process_check(ctx, res) -> None:
    """A few steps of the small ResNet-50 on the device with DSR every 3 steps, then the
    invariants checked there."""
    e = ctx.sizes.e2e
    spec = replace(ctx.sizes.resnet50, kw=e["kw"], image=e["image"], classes=10)
    torch.manual_seed(0)
    model = make_model(ctx.device, spec)
    opt = sgd(model)
    names = sparse_names(spec.name, model)
    numel = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    masking = Masking(model, opt, sparsity=SPARSITY, names=names,
                      method=dsr(periods=[(0, 3)], stop_epoch=None, target_pruned=scaled_np(spec, numel)))
    x, y = make_batch(ctx.device, spec, e["batch"])
    for _ in range(7):
        train_step(model, opt, x, y, masking)
    events = masking.pop_events()
    res.check("inproc_reallocated", len(events) == 2, f"{len(events)} reallocations in 7 steps at period 3 (expected 2)")
    check_invariants(res, "inproc_", masking_violations(masking), masking.budget,
                     f"in-process, right after 7 bf16 channels_last steps on the {ctx.device.type}")


# ---------------------------------------------------------------- tests: pytest -m cuda


def section_tests(ctx, res) -> None:
    xml = ctx.out / "tests_junit.xml"
    log = ctx.out / "tests.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    print(f"  $ {shlex.join(cmd)}", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT,
                              timeout=max(10.0, ctx.left() - 5))
    wall = time.perf_counter() - t
    res.details["log_tail"] = log.read_text()[-3000:]
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}): {res.details['log_tail'][-500:]}")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    outcomes = {}
    for case in suite.iter("testcase"):
        kid = next(iter(case), None)
        outcome = "passed" if kid is None or kid.tag in ("system-out", "system-err", "properties") else kid.tag
        outcomes[case.get("name")] = outcome if outcome == "passed" else f"{outcome}: {(kid.get('message') or '')[:200]}"
    res.details.update(counts=counts, outcomes=outcomes, exit=proc.returncode)
    res.metric("tests_run", counts["tests"], f"pytest -m cuda tests/test_cuda.py on this machine ({wall:.0f} s)")
    res.metric("tests_passed", passed, "passed")
    reasons = [o.split(": ", 1)[-1] for o in outcomes.values() if o.startswith("skipped")]
    for reason in dict.fromkeys(reasons):
        res.note(f"{reasons.count(reason)} skipped: {reason}")
    for name, outcome in outcomes.items():
        if outcome.startswith(("failure", "error")):
            res.note(f"{name} {outcome}")
    res.check("tests_none_failed", counts["failures"] == 0 and counts["errors"] == 0 and proc.returncode == 0,
              f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped (log: {log.name})")
