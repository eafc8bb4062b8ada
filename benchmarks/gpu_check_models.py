"""gpu_check's model sections: training img/s dense vs DSR (eager and under torch.compile),
and the cost of one mask application / reallocation against a masked compare pass."""

from __future__ import annotations

import copy
import statistics
import time
import traceback

import torch

from bench_dsr import sort_based_reallocation, train_step
from dsr_tune.models import sparse_names
from dsr_tune.sparse import Masking, deepr, dsr
from gpu_check_lib import (SPARSITY, ModelSpec, StepTimer, check_invariants, first_line, free_memory, make_batch,
                           make_model, masking_violations, scaled_np, sgd, sync)

# seconds torch.compile may take for one model pair (dense, then DSR hitting the cache), cold
COMPILE_ESTIMATE_S = {"resnet50": 150, "wrn": 60}


def train_pair(ctx, spec: ModelSpec, batch: int, compiled: bool) -> dict:
    """Dense and DSR copies of one model, their steps alternating so noise hits both alike.

    The DSR side runs Masking.step() after every optimizer step; its period puts exactly one
    reallocation inside the timed window (global steps count from 1: the warm-up ones first).
    Reallocations are also timed apart (as step() runs them), to amortise at the paper's period.
    """
    s, device = ctx.sizes, ctx.device
    torch.manual_seed(0)
    dense = make_model(device, spec)
    sparse = copy.deepcopy(dense)
    opt_d, opt_s = sgd(dense), sgd(sparse)
    names = sparse_names(spec.name, sparse)
    window_period = s.warmup + s.steps // 2 + 1
    numel = sum(p.numel() for n, p in sparse.named_parameters() if n in set(names))
    target = scaled_np(spec, numel)
    masking = Masking(sparse, opt_s, sparsity=SPARSITY, names=names,
                      method=dsr(periods=[(0, window_period)], stop_epoch=None, target_pruned=target))
    backend = s.compile_backend
    run_d, run_s = ((torch.compile(dense, backend=backend), torch.compile(sparse, backend=backend)) if compiled
                    else (dense, sparse))
    x, y = make_batch(device, spec, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    out = {"batch": batch, "budget": masking.budget, "sparse_weights": masking.sparse_numel, "Np": target}
    for key, model, opt, msk in (("dense", run_d, opt_d, None), ("dsr", run_s, opt_s, masking)):
        sync(device)
        t = time.perf_counter()
        train_step(model, opt, x, y, msk)  # the first step compiles (torch.compile) or autotunes (cuDNN)
        sync(device)
        out[f"first_step_{key}_s"] = time.perf_counter() - t
    for _ in range(s.warmup - 1):
        train_step(run_d, opt_d, x, y)
        train_step(run_s, opt_s, x, y, masking)
    sync(device)
    td, ts = StepTimer(device), StepTimer(device)
    realloc_at, t0 = [], time.perf_counter()
    for i in range(s.steps):
        if i >= 3 and ctx.left() < 10:  # leave room for the rest of the section
            out["cut_short_at"] = i
            break
        td(lambda: train_step(run_d, opt_d, x, y))
        ts(lambda: train_step(run_s, opt_s, x, y, masking))
        if masking.global_step % window_period == 0:
            realloc_at.append(i)
    sync(device)
    out["window_s"] = time.perf_counter() - t0
    d_ms, s_ms = td.ms(), ts.ms()
    events = masking.pop_events()
    tr = StepTimer(device)
    for _ in range(s.reps):  # as Masking.step() runs one: the masks were just applied
        tr(lambda: masking.reallocate(inactive_zero=True))
    r_ms = tr.ms()
    plain = [t for i, t in enumerate(s_ms) if i not in realloc_at]
    period = max(1, round(spec.paper_period * spec.paper_batch / batch))  # the same samples between reallocations
    out.update(
        dense_ms=statistics.median(d_ms), dsr_ms=statistics.median(plain), realloc_ms=statistics.median(r_ms),
        dsr_window_mean_ms=statistics.fmean(s_ms), dense_window_mean_ms=statistics.fmean(d_ms),
        realloc_step_ms=[s_ms[i] for i in realloc_at], reallocs_in_window=len(events),
        pruned_in_window=[e["pruned"] for e in events], paper_period=period, steps_timed=len(d_ms),
        invariants=masking_violations(masking))
    out["dsr_paper_ms"] = out["dsr_ms"] + out["realloc_ms"] / period
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def pair_with_oom_retry(ctx, res, spec: ModelSpec, compiled: bool) -> dict:
    """train_pair at the spec's batch; on CUDA out-of-memory, note it and halve the batch (twice
    at most). The retry happens outside the except block, once the failed attempt is freed."""
    batch = spec.batch
    while True:
        oom = None
        try:
            return train_pair(ctx, spec, batch, compiled)
        except torch.cuda.OutOfMemoryError as exc:
            oom = first_line(exc)
        free_memory()
        if batch <= max(1, spec.batch // 4):
            raise torch.cuda.OutOfMemoryError(f"{spec.name}: out of memory down to batch {batch}: {oom}")
        res.note(f"{spec.name}: CUDA out of memory at batch {batch} ({oom}); retrying at batch {batch // 2}")
        res.details.setdefault("oom_at_batch", []).append(batch)
        batch //= 2


def report_pair(ctx, res, spec: ModelSpec, r: dict, tag: str) -> None:
    b, device = r["batch"], ctx.device
    setting = (f"{spec.name} {spec.kw}, batch {b}, {spec.image} px, bf16 autocast, channels_last, SGD Nesterov, "
               f"{device.type}")
    timing = (f"median of {r['steps_timed']} {'CUDA-event' if device.type == 'cuda' else 'perf_counter'}-timed "
              "steps, dense and DSR alternating")
    dense, dsr_paper = 1e3 * b / r["dense_ms"], 1e3 * b / r["dsr_paper_ms"]
    p = f"{tag}{spec.name}_"
    res.metric(p + "dense_img_s", dense, f"{setting}; {timing}")
    res.metric(p + "dsr_img_s", dsr_paper,
               f"DSR at sparsity {SPARSITY}: masks after every step + one reallocation per {r['paper_period']:,} steps "
               f"(the paper's period at this batch), amortised from {r['realloc_ms']:.3g} ms timed apart")
    res.metric(p + "dsr_over_dense", dsr_paper / dense, "img/s ratio DSR / dense, same run")
    res.metric(p + "dsr_window_img_s", 1e3 * b / r["dsr_window_mean_ms"],
               f"DSR mean over the timed window, which holds {r['reallocs_in_window']} reallocation(s) "
               f"in {r['steps_timed']} steps (that step: {', '.join(f'{t:.0f}' for t in r['realloc_step_ms'])} ms)")
    res.metric(p + "realloc_ms", r["realloc_ms"], f"one DSR reallocation as Masking.step() runs it, median of {ctx.sizes.reps}")
    if r["reallocs_in_window"] == 0 and "cut_short_at" in r:  # time ran out before the reallocation step
        res.note(f"{spec.name}: the timed window was cut short at step {r['cut_short_at']} (time left), "
                 "before its reallocation; the reallocation is timed apart only")
    else:
        res.check(p + "realloc_in_window", r["reallocs_in_window"] >= 1,
                  f"{r['reallocs_in_window']} reallocation(s) during the timed steps, pruned {r['pruned_in_window']}")
    check_invariants(res, p, r["invariants"], r["budget"], "after the timed window, on the device")
    res.details[p.rstrip("_")] = {k: v for k, v in r.items() if k != "invariants"}


def throughput(name: str, ctx, res) -> None:
    """Eager img/s of one model pair (the ``resnet50`` and ``wrn`` sections)."""
    spec = getattr(ctx.sizes, name)
    report_pair(ctx, res, spec, pair_with_oom_retry(ctx, res, spec, compiled=False), "")


def compiled(name: str, ctx, res) -> None:
    """One model pair under torch.compile (inductor, default mode; aot_eager in --quick: the
    ``resnet50_compile`` and ``wrn_compile`` sections); the first step of each model is its compile time, reported apart,
    never in img/s. A compile that fails is recorded as ``unavailable`` (no compiler, an inductor
    bug), not as a broken package. Compiled / eager is added by the runner from both sections."""
    spec = getattr(ctx.sizes, name)
    need = COMPILE_ESTIMATE_S[name] * (0.5 if ctx.quick else 1.0)
    if ctx.left() < need:
        res.note(f"{name}: {ctx.left():.0f} s left in the section, a cold compile may need {need:.0f} s: tried anyway")
    try:
        r = pair_with_oom_retry(ctx, res, spec, compiled=True)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # no compiler, an inductor bug: recorded as unavailable, with the traceback
        res.details["traceback"] = traceback.format_exc()[-4000:]
        res.status, res.error = "unavailable", f"torch.compile failed for {name}: {first_line(exc)}"
        return
    finally:
        res.details["torch_compile"] = {"backend": ctx.sizes.compile_backend, "mode": "default", "torch": torch.__version__}
    report_pair(ctx, res, spec, r, "compiled_")
    res.metric(f"compiled_{name}_compile_dense_s", r["first_step_dense_s"],
               f"wall time of the dense model's first step (compiles forward and backward, backend "
               f"{ctx.sizes.compile_backend}), not in img/s")
    res.metric(f"compiled_{name}_compile_dsr_s", r["first_step_dsr_s"],
               "wall time of the DSR copy's first step (same graphs: mostly cache hits)")


def section_resnet50(ctx, res) -> None:
    throughput("resnet50", ctx, res)


def section_wrn(ctx, res) -> None:
    throughput("wrn", ctx, res)


def section_resnet50_compile(ctx, res) -> None:
    compiled("resnet50", ctx, res)


def section_wrn_compile(ctx, res) -> None:
    compiled("wrn", ctx, res)


# ---------------------------------------------------------------- masks: apply and reallocate vs compare


def section_masks(ctx, res) -> None:
    device = ctx.device
    for spec in (ctx.sizes.resnet50, ctx.sizes.wrn):
        torch.manual_seed(0)
        model = make_model(device, spec)
        opt = sgd(model)
        names = sparse_names(spec.name, model)
        numel = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
        target = scaled_np(spec, numel)
        masking = Masking(model, opt, sparsity=SPARSITY, names=names,
                          method=dsr(periods=[(0, 10**9)], stop_epoch=None, target_pruned=target))
        x, y = make_batch(device, spec, min(spec.batch, 32))
        train_step(model, opt, x, y, masking)  # momentum buffers exist: apply() zeroes weights and momentum
        del x, y
        pruner = masking.method.pruner

        def compare():  # the floor of a threshold prune: one masked comparison per weight, one transfer
            h = pruner.threshold
            return torch.stack([torch.lt(p.detach().abs(), h).logical_and_(masking.masks[n]).count_nonzero()
                                for n, p in masking.params.items()]).tolist()

        fraction = target / masking.budget
        timers = {k: StepTimer(device) for k in ("apply", "realloc", "compare", "sort")}
        for _ in range(2 + ctx.sizes.reps):  # interleaved, so noise hits all four alike; 2 warm-ups
            timers["realloc"](lambda: masking.reallocate(inactive_zero=True))
            timers["sort"](lambda: sort_based_reallocation(masking, fraction))
            masking.masks_changed()  # the sort-based one edits the masks directly
            masking.apply()  # untimed: rebuilds the cached multipliers, as the first step after a reallocation does
            timers["apply"](masking.apply)
            timers["compare"](compare)
        ms = {k: statistics.median(t.ms()[2:]) for k, t in timers.items()}
        p = f"{spec.name}_"
        where = (f"{spec.name} {spec.kw}, {len(masking.masks)} sparse tensors, {masking.sparse_numel:,} weights, "
                 f"budget {masking.budget:,}, {device.type}, channels_last; median of {ctx.sizes.reps}")
        res.metric(p + "compare_ms", ms["compare"], f"(|w| < H) & mask over every sparse tensor, counts summed to the host; {where}")
        res.metric(p + "apply_ms", ms["apply"], "Masking.apply(): weights and momentum multiplied by the masks")
        res.metric(p + "realloc_ms", ms["realloc"], f"one DSR reallocation (Np {target:,}) as Masking.step() runs it")
        res.metric(p + "apply_over_compare", ms["apply"] / ms["compare"], "ratio to the compare pass")
        res.metric(p + "realloc_over_compare", ms["realloc"] / ms["compare"], "ratio to the compare pass")
        res.metric(p + "sort_over_dsr", ms["sort"] / ms["realloc"],
                   "bench_dsr.py's sort-based per-tensor top-k reallocation, same number moved, / DSR's")
        res.details[spec.name] = ms
        check_invariants(res, p, masking_violations(masking), masking.budget, "after the timed reallocations")
        deepr_step(ctx, res, spec)
        del model, opt, masking
        free_memory()


def deepr_step(ctx, res, spec: ModelSpec) -> None:
    """DeepR's noise is drawn on the device (a device generator seeded from the CPU one): one
    Masking.step() = apply + L1 + noise + sign-flip rewiring."""
    device = ctx.device
    torch.manual_seed(0)
    model = make_model(device, spec)
    opt = sgd(model)
    masking = Masking(model, opt, sparsity=SPARSITY, names=sparse_names(spec.name, model), method=deepr())
    x, y = make_batch(device, spec, min(spec.batch, 32))
    train_step(model, opt, x, y, masking)
    t = StepTimer(device)
    for _ in range(ctx.sizes.reps):
        t(masking.step)
    res.metric(f"{spec.name}_deepr_step_ms", statistics.median(t.ms()),
               "one Masking.step() with DeepR: apply, L1, Gaussian noise on the device, sign-flip rewiring")
    check_invariants(res, f"{spec.name}_deepr_", masking_violations(masking), masking.budget, "after DeepR steps")
