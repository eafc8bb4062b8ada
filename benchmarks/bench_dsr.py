"""DSR's cost, measured side by side in one run.

1. Training-step time of DSR vs the same dense model: steps of the two
   alternate (dense, DSR, dense, ...) so machine noise hits both alike; the
   DSR side includes mask application after every step and its reallocations
   at the paper's period, amortised.
2. One DSR reallocation vs a sort-based per-layer top-k reallocation (SET
   style: sort each tensor's magnitudes, drop the smallest k, regrow k) over
   the same weights, alternating too.

    .venv/bin/python benchmarks/bench_dsr.py                 # WRN-28-2 and ResNet-50 on this machine
    .venv/bin/python benchmarks/bench_dsr.py --device cuda --batch-r50 256 --precision bf16 --channels-last

Prints ratios; targets: step overhead under 3%, reallocation at least 5x cheaper.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from dsr_tune.models import build_model, sparse_names
from dsr_tune.sparse import Masking, dsr, sample_positions


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def train_step(model, opt, x, y, masking=None, precision: str = "bf16") -> None:
    """One step as the trainer takes it: autocast (bf16, or none for fp32), backward, SGD,
    then the masks."""
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with amp:
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if masking is not None:
        masking.step()


def sort_based_reallocation(masking: Masking, fraction: float) -> int:
    """Per tensor: sort |w| of the active weights, drop the smallest
    ``fraction``, regrow as many at random elsewhere in the tensor."""
    moved = 0
    with torch.no_grad():
        for name, p in masking.params.items():
            mask = masking.masks[name]
            active = int(mask.count_nonzero())
            k = int(fraction * active)
            scores = p.abs().masked_fill(~mask, float("inf")).view(-1)
            order = torch.sort(scores).indices
            drop = order[:k]
            # as DSR does: growth avoids every position active before, the dropped included
            idx = sample_positions(mask, k, mask.numel() - active, masking.generator)
            mask.view(-1)[drop] = False
            mask.view(-1)[idx] = True
            masking.zero_at(name, drop)  # as DSR in training: grown positions are inactive, so zero already
            moved += k
    return moved  # per-tensor counts unchanged: the masking's cached counts stay true


def bench_model(name: str, model_kw: dict, input_shape, classes: int, batch: int, steps: int,
                period: int, target_pruned: int, device, precision: str, channels_last: bool) -> dict:
    torch.manual_seed(0)
    dense = build_model(name, num_classes=classes, **model_kw).to(device)
    sparse = copy.deepcopy(dense)
    if channels_last:
        dense.to(memory_format=torch.channels_last)
        sparse.to(memory_format=torch.channels_last)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    # H chosen so a reallocation prunes about Np weights from the start
    masking = Masking(sparse, opt_s, sparsity=0.9, names=sparse_names(name, sparse),
                      method=dsr(periods=[(0, period)], stop_epoch=None, target_pruned=target_pruned))
    x = torch.randn(batch, *input_shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)

    def step(model, opt, masking=None):
        train_step(model, opt, x, y, masking, precision)

    for _ in range(2):  # warm-up
        step(dense, opt_d)
        step(sparse, opt_s, masking)
    t_dense, t_sparse, t_apply = [], [], []
    for _ in range(steps):
        t_dense.append(timed(lambda: step(dense, opt_d), device))
        t_sparse.append(timed(lambda: step(sparse, opt_s, masking), device))
        t_apply.append(timed(masking.apply, device))
    step_dense, step_sparse, apply = (statistics.median(t) for t in (t_dense, t_sparse, t_apply))

    # reallocation: the paper's H tuned so ~Np are pruned; alternate the two kinds
    t_dsr, t_sort = [], []
    fraction = target_pruned / masking.budget
    for _ in range(5):
        # as Masking.step() calls it: the masks were just applied (and both kinds leave inactive weights zero)
        t_dsr.append(timed(lambda: masking.reallocate(inactive_zero=True), device))
        t_sort.append(timed(lambda: sort_based_reallocation(masking, fraction), device))
    realloc_dsr, realloc_sort = statistics.median(t_dsr), statistics.median(t_sort)
    return {
        "model": name, "sparse weights": masking.sparse_numel, "budget": masking.budget,
        "dense step ms": 1e3 * step_dense, "DSR step ms": 1e3 * step_sparse,
        "step overhead %": 100 * (step_sparse / step_dense - 1),
        "mask apply ms": 1e3 * apply, "apply share of dense step %": 100 * apply / step_dense,
        "DSR realloc ms": 1e3 * realloc_dsr, "sort realloc ms": 1e3 * realloc_sort,
        "sort / DSR": realloc_sort / realloc_dsr,
        "realloc amortised per step %": 100 * realloc_dsr / period / step_dense,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="wrn,resnet50")
    p.add_argument("--batch-wrn", type=int, default=100)
    p.add_argument("--batch-r50", type=int, default=8)
    p.add_argument("--image-r50", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    from dsr_tune.train.setup import pick_device  # here: the helpers gpu_check.py imports need torch and the sparse core only

    device = pick_device(args.device)
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {desc}; torch {torch.__version__}; {args.precision}{', channels_last' if args.channels_last else ''}")
    runs = {
        "wrn": lambda: bench_model("wrn", {"depth": 28, "width": 2.0}, (3, 32, 32), 10, args.batch_wrn,
                                   args.steps, 100, 20_000, device, args.precision, args.channels_last),
        "resnet50": lambda: bench_model("resnet50", {"width": 1.0}, (3, args.image_r50, args.image_r50), 1000,
                                        args.batch_r50, args.steps, 1000, 400_000, device, args.precision,
                                        args.channels_last),
    }
    for name in args.models.split(","):
        r = runs[name]()
        print(f"\n{name} (batch {args.batch_wrn if name == 'wrn' else args.batch_r50}):")
        for k, v in r.items():
            print(f"  {k:32s} {v:,.2f}" if isinstance(v, float) else f"  {k:32s} {v:,}" if isinstance(v, int) else f"  {k:32s} {v}")


if __name__ == "__main__":
    main()
