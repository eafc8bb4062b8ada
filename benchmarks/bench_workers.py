"""Throughput of the Ray Train path, measured in one run (not a timed test).

CPU (default): samples/s of the same small job on 1 and 2 Ray Train workers
(gloo), each worker with 1 core, plus 1 worker with all cores and the plain
in-process trainer for reference; ratios 2 workers / 1 worker. Small CNN on
synthetic 32x32 RGB images, global batch 128, DSR at 0.9.

    .venv/bin/python benchmarks/bench_workers.py               # workers 1 and 2, this machine
    .venv/bin/python benchmarks/bench_workers.py --workers 1 2 4

CUDA: DSR vs dense ResNet-50 on one GPU worker, bf16 + channels_last, batch
256, synthetic 224x224 images already in memory (so the model step and the
masks are measured, not JPEG decoding), the paper's reallocation period:

    .venv/bin/python benchmarks/bench_workers.py --device cuda

samples/s is the trainer's own per-epoch figure (all workers' samples over the
epoch's training time); the first epoch (warm-up) is left out, the median of
the others is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from dsr_tune import config as C
from dsr_tune.runfolder import read_records


def cpu_config(workers: int, cores: int, epochs: int) -> C.Config:
    """``workers`` Ray workers (0: in-process) with ``cores`` torch threads each."""
    return C.from_dict({
        "model": {"name": "small_cnn", "width": 1.0},
        "data": {"name": "synthetic", "image_size": 32, "synthetic_size": 4096, "batch_size": 128},
        "sparsity": {"method": "dsr", "sparsity": 0.9, "period_schedule": [[0, 20]], "dsr": {"target_pruned": 2000}},
        "train": {"epochs": epochs, "workers": workers, "threads": cores, "cpus_per_worker": cores, "device": "cpu"},
    })


def cuda_config(method: str, epochs: int, steps: int) -> C.Config:
    batch = 256
    return C.from_dict({
        "model": {"name": "resnet50", "width": 1.0},
        "data": {"name": "synthetic", "image_size": 224, "synthetic_size": batch * steps,
                 "batch_size": batch, "eval_batch_size": 256, "loader_workers": 8},
        "optim": {"lr": 0.1, "weight_decay": 1e-4},
        "sparsity": {"method": method, "sparsity": 0.9, "dsr": {"target_pruned": 400000},
                     "period_schedule": [[0, 1000]], "stop_epoch": 95},
        "train": {"epochs": epochs, "workers": 1, "use_gpu": True, "cpus_per_worker": 9,
                  "precision": "bf16", "channels_last": True},
    })


def samples_per_s(run_dir: Path) -> float:
    epochs = [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    return statistics.median(r["samples_per_s"] for r in epochs[1:] or epochs)


def run(cfg: C.Config, root: Path, label: str) -> float:
    from dsr_tune.distributed import fit
    from dsr_tune.train import train

    run_dir = root / label
    t0 = time.perf_counter()
    if cfg.train.workers:
        fit(cfg, run_dir=run_dir, name=label, storage_path=str(root / "store"))
    else:
        train(cfg, run_dir, progress=False)
    rate = samples_per_s(run_dir)
    print(f"  {label:<28} {rate:10.0f} samples/s   (wall {time.perf_counter() - t0:5.1f} s incl. start-up)", flush=True)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="CPU mode: worker counts to compare")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is left out)")
    p.add_argument("--steps", type=int, default=20, help="CUDA mode: steps per epoch (20: ~4 GB of images in memory)")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray for this run)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from dsr_tune.distributed import ray_session

    cores = os.cpu_count() or 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; device {args.device}")
    with tempfile.TemporaryDirectory() as tmp, ray_session(args.address, cpus=max(max(args.workers), cores)):
        root = Path(tmp)
        if args.device == "cpu":
            print(f"small_cnn, synthetic 3x32x32, global batch 128, DSR 0.9, {args.epochs} epochs per run:")
            run(cpu_config(0, cores, args.epochs), root, f"in-process, {cores} threads")
            whole = run(cpu_config(1, cores, args.epochs), root, f"ray 1 worker x {cores} cores")
            rates = {w: run(cpu_config(w, 1, args.epochs), root, f"ray {w} worker(s) x 1 core") for w in args.workers}
            base = rates[args.workers[0]]
            for w in args.workers[1:]:
                print(f"ratio {w} workers / {args.workers[0]} worker (1 core each): {rates[w] / base:.2f}x; "
                      f"{w} workers x 1 core / 1 worker x {cores} cores: {rates[w] / whole:.2f}x")
        else:
            import torch

            print(f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible here'}")
            print(f"ResNet-50, bf16, channels_last, batch 256, synthetic 224x224, {args.steps} steps/epoch:")
            dense = run(cuda_config("dense", args.epochs, args.steps), root, "dense")
            sparse = run(cuda_config("dsr", args.epochs, args.steps), root, "dsr (sparsity 0.9)")
            print(f"ratio DSR / dense: {sparse / dense:.3f}")


if __name__ == "__main__":
    main()
