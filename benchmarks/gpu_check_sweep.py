"""gpu_check's sweep sections: what a sweep's trials get from one GPU.

- ``wrn_resident``: WRN-28-2 trained by the package's own trainer on CIFAR-shaped data kept
  on the GPU (``data.resident=true``: 50,000 generated 32x32 images written in CIFAR-10's
  python layout, decoded once, crops and flips on the device), batch 128, bf16,
  channels_last; the epoch time of dense and of DSR at 0.9, runs alternating. Goal: at most
  3 s an epoch on an H100, DSR at least 0.97x dense.
- ``wrn_packed``: trials packed on one GPU (``search.trials_per_gpu``): 4 processes, each
  with its memory capped at 1/4 (``torch.cuda.set_per_process_memory_fraction``), training
  WRN-28-2 at batch 128 on batches already on the device, against 1 of them alone; total
  images/s. Goal: at least 2.5x.
"""

from __future__ import annotations

import json
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gpu_check_lib import SPARSITY, ModelSpec, first_line, scaled_np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RESIDENT_CONFIG = "configs/cifar10_wrn28_2.yaml"
# Every config key the wrn_resident runs pass, in ONE place (tests/test_gpu_check.py loads them
# through the real config); "{...}" is filled in from Sizes.resident.
RESIDENT_KEYS = {
    "model.depth": "{depth}",
    "model.width": "{width}",
    "data.root": "{root}",
    "data.resident": "true",
    "data.val_fraction": 0,        # every generated image trains: 50,000 / 128 = 390 steps an epoch
    "data.batch_size": "{batch}",
    "data.eval_batch_size": 1000,
    "optim.milestones": "[]",
    "sparsity.method": "{method}",
    "sparsity.sparsity": SPARSITY,
    "sparsity.dsr.target_pruned": "{np}",
    "sparsity.period_schedule": "[[0, {period}]]",  # the paper's 100 steps at batch 100, at this batch
    "sparsity.stop_epoch": "{epochs}",
    "train.epochs": "{epochs}",
    "train.device": "{device}",
    "train.precision": "bf16",
    "train.channels_last": "true",
}


def resident_overrides(r: dict, device: str, root: Path, method: str, np_: int) -> list[str]:
    period = max(1, round(100 * 100 / r["batch"]))
    values = dict(r, root=root, method=method, np=np_, period=period, device=device)
    return [f"{k}={str(v).format(**values)}" for k, v in RESIDENT_KEYS.items()]


def write_cifar(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """torchvision's CIFAR-10 python layout with random uint8 images (the timing does not
    care what they show): data_batch_1..5, test_batch, batches.meta."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
    for i in range(5):
        with open(d / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(batch(train // 5 + (i < train % 5)), f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch(test), f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def _epochs(run: Path) -> list[dict]:
    from dsr_tune.runfolder import read_records

    return [r for r in read_records(run) if r.get("kind") == "epoch"]


def section_wrn_resident(ctx, res) -> None:
    import logging

    from dsr_tune import config as C
    from dsr_tune.train import train

    logging.getLogger("dsr_tune").setLevel(logging.WARNING)  # no epoch lines: this section reports its own
    from torchvision.datasets import cifar

    # generated files: torchvision's md5 check is for the real ones (as tests/test_data.py does)
    cifar.CIFAR10._check_integrity = lambda self: True
    cifar.check_integrity = lambda *a, **k: True
    r, device = ctx.sizes.resident, ctx.device
    root = write_cifar(ctx.work / "cifar", r["images"], r["test_images"])
    spec = ModelSpec("wrn", {"depth": r["depth"], "width": r["width"]}, r["batch"], 32, 10, {"depth": 28, "width": 2.0},
                     20_000, 100, 100)
    from gpu_check_lib import budget_of

    np_ = scaled_np(spec, budget_of("wrn", spec.kw, 10)[0])
    steps = r["images"] // r["batch"]
    times: dict[str, list[float]] = {"dense": [], "dsr": []}
    with_eval: dict[str, list[float]] = {"dense": [], "dsr": []}
    for rnd in range(r["rounds"]):
        for method in ("dense", "dsr"):
            if rnd and ctx.left() < r["run_estimate_s"]:
                res.note(f"stopped after {rnd} round(s): {ctx.left():.0f} s left")
                break
            run = ctx.work / f"resident_{method}_{rnd}"
            cfg = C.load(ROOT / RESIDENT_CONFIG, resident_overrides(r, str(device), root, method, np_))
            train(cfg, run, progress=False)
            epochs = _epochs(run)
            if rnd == 0:
                text = (run / "config.yaml").read_text()
                res.check(f"{method}_resident", "#     resident: true" in text,
                          "the run's config.yaml records data.resident: true (the set was kept on the device)")
                counted = [e["step"] for e in epochs] == [steps * (k + 1) for k in range(len(epochs))]
                res.check(f"{method}_steps", counted, f"{steps} steps an epoch ({r['images']:,} images, batch "
                                                      f"{r['batch']}, the last partial batch dropped)")
            # the process's first epoch holds cuDNN's autotuning and the allocator's warm-up; later
            # runs find both done (the same shapes)
            for e in epochs[1:] if rnd == 0 and method == "dense" else epochs:
                times[method].append(steps * r["batch"] / e["samples_per_s"])
                with_eval[method].append(e["epoch_time"])
    setting = (f"WRN-{r['depth']}-{r['width']:g}, batch {r['batch']}, bf16 autocast, channels_last, "
               f"{r['images']:,} generated 32x32 images resident on {device.type} (crop 4 + flip on the device), "
               "the package's trainer")
    for method in ("dense", "dsr"):
        what = "dense" if method == "dense" else (f"DSR at sparsity {SPARSITY} (masks after every step, a "
                                                  f"reallocation every {max(1, round(10_000 / r['batch']))} steps)")
        res.metric(f"wrn_resident_{method}_epoch_s", statistics.median(times[method]),
                   f"{what}: the training steps of one epoch, median of {len(times[method])} (the process's first "
                   f"epoch not counted); {setting}")
        res.metric(f"wrn_resident_{method}_epoch_with_eval_s", statistics.median(with_eval[method]),
                   f"the same epochs with the test pass ({r['test_images']:,} images) and the epoch's bookkeeping")
        res.metric(f"wrn_resident_{method}_img_s", steps * r["batch"] / statistics.median(times[method]),
                   "training images/s of those epochs")
    res.metric("wrn_resident_dsr_over_dense", statistics.median(times["dense"]) / statistics.median(times["dsr"]),
               "epoch throughput DSR / dense, same run (goal on an H100: >= 0.97; epoch <= 3 s)")


# ---------------------------------------------------------------- packed trials


def packed_worker(argv: str) -> None:
    """One trial's process: its memory capped at ``fraction``, warm-up, then a timed window
    when told (``solo``: only worker 0; ``all``: every worker). Results go to a JSON file."""
    a = json.loads(argv)
    sys.path[:0] = [str(ROOT), str(HERE)]
    from bench_dsr import train_step
    from gpu_check_lib import make_batch, make_model, setup_device, sgd, sync

    device = setup_device(a["device"])
    if device.type == "cuda" and a["fraction"] < 1:
        torch.cuda.set_per_process_memory_fraction(a["fraction"], device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    spec = ModelSpec(**a["spec"])
    torch.manual_seed(a["i"])
    model = make_model(device, spec)
    opt = sgd(model)
    x, y = make_batch(device, spec, spec.batch)  # on the device already: a resident set's batch
    for _ in range(a["warmup"]):
        train_step(model, opt, x, y)
    sync(device)
    folder = Path(a["folder"])
    (folder / f"ready{a['i']}").write_text("")
    out = {}
    for phase in ("solo", "all"):
        deadline = time.monotonic() + a["wait_s"]
        while not (folder / phase).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        if phase == "solo" and a["i"] != 0:
            continue
        start, t0, steps = time.time(), time.perf_counter(), 0
        while time.perf_counter() - t0 < a["window_s"]:
            train_step(model, opt, x, y)
            steps += 1
        sync(device)
        out[phase] = {"steps": steps, "elapsed": time.perf_counter() - t0, "start": start, "end": time.time()}
        (folder / f"{phase}{a['i']}.json").write_text(json.dumps(out[phase]))
    peak = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    (folder / f"done{a['i']}.json").write_text(json.dumps({**out, "peak_reserved": peak, "total": total}))


def _launch(ctx, p: dict, spec: ModelSpec, folder: Path) -> list[subprocess.Popen]:
    from dataclasses import asdict

    procs = []
    for i in range(p["trials"]):
        a = {"i": i, "device": str(ctx.device), "fraction": 1.0 / p["trials"], "spec": asdict(spec),
             "warmup": p["warmup"], "window_s": p["window_s"], "folder": str(folder), "wait_s": ctx.left()}
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import gpu_check_sweep as g; "
                "g.packed_worker(sys.argv[1])")
        procs.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(a)], cwd=ROOT))
    return procs


def _wait_for(folder: Path, names: list[str], procs, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not all((folder / n).exists() for n in names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds:.0f} s for {', '.join(n for n in names if not (folder / n).exists())}")
        dead = [i for i, pr in enumerate(procs) if pr.poll() not in (None, 0)]
        if dead:
            raise RuntimeError(f"packed trial process(es) {dead} died with exit status {procs[dead[0]].returncode}")
        time.sleep(0.02)


def section_wrn_packed(ctx, res) -> None:
    p, base = ctx.sizes.packed, ctx.sizes.wrn
    spec = ModelSpec(base.name, p["kw"], p["batch"], base.image, base.classes, base.paper_kw, base.paper_np,
                     base.paper_period, base.paper_batch)
    folder = ctx.work / "packed"
    folder.mkdir(parents=True, exist_ok=True)
    k = p["trials"]
    procs = _launch(ctx, p, spec, folder)
    try:
        _wait_for(folder, [f"ready{i}" for i in range(k)], procs, ctx.left() - 2 * p["window_s"])
        (folder / "solo").write_text("")
        _wait_for(folder, ["solo0.json"], procs, p["window_s"] * 3 + 10)
        (folder / "all").write_text("")
        _wait_for(folder, [f"done{i}.json" for i in range(k)], procs, p["window_s"] * 3 + 10)
    except Exception as exc:
        res.details["error_while_waiting"] = first_line(exc)
        raise
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
    done = [json.loads((folder / f"done{i}.json").read_text()) for i in range(k)]
    solo = done[0]["solo"]
    rate = lambda w: w["steps"] * spec.batch / w["elapsed"]  # noqa: E731
    single, total = rate(solo), sum(rate(d["all"]) for d in done)
    setting = (f"WRN-{spec.kw['depth']}-{spec.kw['width']:g}, batch {spec.batch}, bf16 autocast, channels_last, "
               f"batches on the device, {ctx.device.type}; each process capped at 1/{k} of the GPU's memory")
    res.metric("packed_single_img_s", single,
               f"1 trial alone, {solo['steps']} steps in {solo['elapsed']:.1f} s; {setting}")
    res.metric("packed_total_img_s", total,
               f"{k} trials at once, summed over their processes ({p['window_s']:g} s windows)")
    res.metric("packed_over_single", total / single, f"{k} packed trials / 1 alone, images/s (goal on an H100: >= 2.5)")
    windows = [d["all"] for d in done]
    overlap = min(w["end"] for w in windows) - max(w["start"] for w in windows)
    longest = max(w["end"] - w["start"] for w in windows)
    res.check("packed_windows_overlap", overlap >= 0.8 * longest,
              f"the {k} timed windows overlapped for {overlap:.1f} s of the longest {longest:.1f} s")
    res.check("packed_every_trial_trained", all(w["steps"] > 0 for w in windows),
              f"steps per trial: {[w['steps'] for w in windows]}")
    if ctx.device.type == "cuda":
        peak = max(d["peak_reserved"] for d in done)
        share = done[0]["total"] / k
        res.check("packed_memory_within_share", peak <= share,
                  f"largest reserved by one trial {peak / 2**30:.2f} GiB <= its share {share / 2**30:.1f} GiB")
    res.details["trials"] = done
