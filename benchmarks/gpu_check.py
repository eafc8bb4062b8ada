"""Everything the first GPU must measure and check, in one command, with no download.

    python3 benchmarks/gpu_check.py --out OUT                              # one GPU, <= 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out OUT   # here, about 2 minutes

Sections (run in this order; ``--sections a,b`` picks some):

    resnet50  training img/s, ResNet-50 at batch 256, 224 px, bf16 autocast, channels_last, SGD
              Nesterov: dense vs DSR at sparsity 0.9 (masks after every step, one reallocation
              inside the timed window, the paper's period amortised from a separate timing)
    wrn       the same for WRN-28-2 at batch 128, 32 px
    masks     one Masking.apply() and one DSR reallocation against one masked compare pass over
              the same weights (the floor of a threshold prune), plus the sort-based reallocation
              of bench_dsr.py and one DeepR step (noise on the device)
    data      decode + random-resized crop 224 + flip of generated ImageNet-sized JPEGs: the
              package's PIL loader with N processes vs torchvision.io decoding on the device;
              images/s per CPU core and loader cores per GPU for 3,000 images/s
    train     the real `dsr-tune train` CLI on those JPEGs (bf16, channels_last, DSR), then its
              checkpoint checked on the device (budget exact, masked weights and their momentum
              exactly zero); the same checks in-process right after a few steps
    tests     pytest -m cuda tests/test_cuda.py as a subprocess: passed / failed / skipped
    compile   the resnet50 and wrn measurements under torch.compile (compile time apart)

Every section runs under a guard: an exception, a CUDA out-of-memory error or its time limit
is recorded with its message and the next section runs. ``--budget-s`` (default 480) is shared
among the selected sections; a section that would start with too little left is skipped with
a note. OUT receives gpu_check.json, gpu_check.md and the logs of the subprocesses, rewritten
after every section, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a plain checkout too (the GPU machine has no install of it)
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_dsr's helpers

from bench_dsr import sort_based_reallocation, train_step  # noqa: E402
from dsr_tune.models import build_model, sparse_names  # noqa: E402
from dsr_tune.sparse import Masking, build_method, dsr, layer_counts  # noqa: E402

# Every config key the `train` section passes to `dsr-tune train`, in ONE place. config.py is
# being refactored (method keys move under their own sections, e.g. sparsity.target_pruned ->
# sparsity.dsr.target_pruned): rename them here. "{...}" is filled in per run (e2e_overrides()).
TRAIN_CONFIG = "configs/imagenet_resnet50.yaml"  # the CONFIG argument; these keys override it
TRAIN_KEYS = {
    "model.name": "resnet50",
    "model.width": "{width}",
    "data.name": "folder",
    "data.root": "{root}",
    "data.image_size": "{image}",
    "data.batch_size": "{batch}",
    "data.eval_batch_size": "{batch}",
    "data.loader_workers": "{workers}",
    "optim.lr": 0.1,
    "optim.milestones": "[]",
    "optim.decay_norm_and_bias": "true",  # one parameter group: the momentum check maps state by index
    "sparsity.method": "dsr",
    "sparsity.sparsity": 0.9,
    "sparsity.dsr.target_pruned": "{np}",
    "sparsity.period_schedule": "[[0, {period}]]",
    "sparsity.stop_epoch": "{epochs}",
    "train.epochs": "{epochs}",
    "train.device": "{device}",
    "train.precision": "bf16",
    "train.channels_last": "true",
    "train.seed": 0,
}
SPARSITY = 0.9
FEED_TARGET = 3000  # images/s one GPU eats in the ImageNet ResNet-50 recipe


@dataclass(frozen=True)
class ModelSpec:
    """A model as timed here, and the paper's run of it (for Np and the reallocation period)."""
    name: str
    kw: dict
    batch: int
    image: int
    classes: int
    paper_kw: dict
    paper_np: int
    paper_period: int
    paper_batch: int


R50 = dict(name="resnet50", classes=1000, paper_kw={"width": 1.0}, paper_np=400_000, paper_period=1000, paper_batch=256)
WRN = dict(name="wrn", classes=10, paper_kw={"depth": 28, "width": 2.0}, paper_np=20_000, paper_period=100, paper_batch=100)


@dataclass(frozen=True)
class Sizes:
    resnet50: ModelSpec
    wrn: ModelSpec
    warmup: int                 # untimed steps first (cuDNN autotuning, allocator, compile)
    steps: int                  # timed steps per model
    reps: int                   # timed repeats of a mask application / reallocation
    compile_models: tuple       # models timed under torch.compile
    jpeg: dict                  # the generated tree: classes, images per class, (width, height)
    loader_workers: tuple       # CPU loader processes tried (capped at the core count)
    loader_batch: int
    decode_batch: int           # images per torchvision.io.decode_jpeg call on the device
    e2e: dict                   # the `dsr-tune train` run


FULL = Sizes(
    resnet50=ModelSpec(**R50, kw={"width": 1.0}, batch=256, image=224),
    wrn=ModelSpec(**WRN, kw={"depth": 28, "width": 2.0}, batch=128, image=32),
    warmup=5, steps=20, reps=10, compile_models=("wrn", "resnet50"),  # the cheaper one first
    jpeg=dict(classes=8, train=96, val=16, size=(500, 375)),
    loader_workers=(1, 2, 4, 8, 16), loader_batch=32, decode_batch=64,
    e2e=dict(width=0.25, image=64, batch=32, epochs=12, workers=8, period=25),  # 24 steps/epoch: 288 steps
)
QUICK = Sizes(
    resnet50=ModelSpec(**R50, kw={"width": 0.25}, batch=8, image=64),
    wrn=ModelSpec(**WRN, kw={"depth": 16, "width": 2.0}, batch=32, image=32),
    warmup=3, steps=6, reps=5, compile_models=("wrn",),
    jpeg=dict(classes=4, train=16, val=4, size=(160, 120)),
    loader_workers=(1, 2), loader_batch=8, decode_batch=16,
    e2e=dict(width=0.25, image=32, batch=8, epochs=4, workers=1, period=6),  # 8 steps/epoch: 32 steps
)
# seconds torch.compile may take for one model pair (dense, then DSR hitting the cache), cold
COMPILE_ESTIMATE_S = {"resnet50": 150, "wrn": 60}


# ---------------------------------------------------------------- results


class Result:
    """What one section found: positive numbers (metrics), pass/fail checks, notes."""

    def __init__(self, name: str):
        self.name, self.status, self.error = name, "ok", None
        self.metrics: dict[str, float] = {}
        self.how: dict[str, str] = {}
        self.checks: dict[str, bool] = {}
        self.notes: list[str] = []
        self.details: dict = {}
        self.wall_s = 0.0
        self.limit_s = 0.0

    def metric(self, key: str, value: float, how: str) -> None:
        self.metrics[key] = float(value)
        self.how[key] = how
        print(f"  {key:42s} {_fmt(value):>12s}   {how}", flush=True)

    def check(self, key: str, ok: bool, how: str) -> None:
        self.checks[key] = bool(ok)
        self.how[key] = how
        if not ok and self.status == "ok":
            self.status = "failed"
        print(f"  {key:42s} {'PASS' if ok else 'FAIL':>12s}   {how}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def as_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "wall_s": round(self.wall_s, 2),
                "limit_s": round(self.limit_s, 1), "metrics": self.metrics, "checks": self.checks,
                "how": self.how, "notes": self.notes, "details": self.details}


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"


class Report:
    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.sections = out, meta, {}
        out.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        self.meta["wall_s"] = round(time.monotonic() - self.meta["_t0"], 1)
        data = {"meta": {k: v for k, v in self.meta.items() if not k.startswith("_")},
                "sections": {n: r.as_dict() for n, r in self.sections.items()}}
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(data))


def markdown(data: dict) -> str:
    m = data["meta"]
    lines = [f"# gpu_check on {m['device_name']}", "",
             f"- command: `{m['command']}`",
             f"- torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, torchvision {m['torchvision']}, "
             f"Python {m['python']}; {m['cpu_cores']} CPU cores; git {m['git']}",
             f"- mode: {m['mode']}; budget {m['budget_s']} s; total wall {m['wall_s']} s; started {m['started']}",
             f"- how: {m['how']}", "",
             "| section | status | wall s | limit s | error / notes |", "|---|---|---|---|---|"]
    for name, s in data["sections"].items():
        extra = s["error"] or "; ".join(s["notes"])
        lines.append(f"| {name} | {s['status']} | {s['wall_s']} | {s['limit_s']} | {extra.replace('|', '/')[:300]} |")
    for name, s in data["sections"].items():
        lines += ["", f"## {name}: {s['status']} ({s['wall_s']} s)", ""]
        if s["error"]:
            lines += [f"error: `{s['error']}`", ""]
        if s["metrics"] or s["checks"]:
            lines += ["| measure | value | how |", "|---|---|---|"]
            lines += [f"| {k} | {_fmt(v)} | {s['how'].get(k, '')} |" for k, v in s["metrics"].items()]
            lines += [f"| {k} | {'PASS' if v else '**FAIL**'} | {s['how'].get(k, '')} |" for k, v in s["checks"].items()]
        lines += [f"- {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- context, timing


@dataclass
class Ctx:
    device: torch.device
    sizes: Sizes
    out: Path
    work: Path                  # scratch: the JPEG tree, the CLI's run folder (deleted at the end)
    quick: bool
    section_deadline: float = 0.0
    eager: dict = field(default_factory=dict)   # model -> eager img/s, for the compiled/eager ratio
    _tree: Path | None = None

    def left(self) -> float:
        return self.section_deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def jpeg_tree(self) -> Path:
        """The generated JPEG tree, made once (by `data`, or by `train` when run alone)."""
        if self._tree is None:
            self._tree = make_jpeg_tree(self.work / "jpeg", **self.sizes.jpeg)
        return self._tree


class StepTimer:
    """Times of calls on the device's own clock: CUDA events around each call, without a
    synchronisation inside the loop (the host queues work ahead as in training); perf_counter
    on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda, self.marks = device.type == "cuda", []

    def __call__(self, fn):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            self.marks.append((a, b))
        else:
            t = time.perf_counter()
            out = fn()
            self.marks.append(time.perf_counter() - t)
        return out

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.marks]
        return [1e3 * t for t in self.marks]


class SectionTimeout(BaseException):
    """Not an Exception: no ``except Exception`` on the way up swallows it."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (a subprocess being waited
    for is killed by subprocess.run as the exception passes)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def fire(*_):
        raise SectionTimeout(f"stopped at the section's limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def subprocess_env() -> dict:
    """The checkout first on the path: the GPU machine runs this tree without installing it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# ---------------------------------------------------------------- models, masks


def scaled_np(spec: ModelSpec, sparse_numel: int) -> int:
    """The paper's Np in proportion to this model's sparse weights (the paper-sized model is
    built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        paper = build_model(spec.name, num_classes=spec.classes, **spec.paper_kw)
    names = set(sparse_names(spec.name, paper))
    paper_numel = sum(p.numel() for n, p in paper.named_parameters() if n in names)
    return max(1, round(spec.paper_np * sparse_numel / paper_numel))


def budget_of(name: str, kw: dict, classes: int) -> tuple[int, int, int]:
    """(sparse weights, their budget at SPARSITY with the uniform spread, all parameters) of a
    model, counted on the meta device."""
    with torch.device("meta"):
        m = build_model(name, num_classes=classes, **kw)
    names = set(sparse_names(name, m))
    shapes = {n: p.shape for n, p in m.named_parameters() if n in names}
    budget = sum(layer_counts(shapes, 1.0 - SPARSITY).values())
    total = sum(p.numel() for p in m.parameters())
    return sum(s.numel() for s in shapes.values()), budget, total


def sgd(model) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)


def make_model(ctx: Ctx, spec: ModelSpec):
    return build_model(spec.name, num_classes=spec.classes, **spec.kw).to(ctx.device, memory_format=torch.channels_last)


def make_batch(ctx: Ctx, spec: ModelSpec, batch: int):
    x = torch.randn(batch, 3, spec.image, spec.image, device=ctx.device).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, spec.classes, (batch,), device=ctx.device)


@torch.no_grad()
def violations(masks: dict, weights: dict, momenta: dict) -> dict:
    """On the tensors' own device: active weights, masked weights that are not zero, momentum
    entries of inactive weights that are not zero (logical indexing: any memory format)."""
    active = sum(int(m.count_nonzero()) for m in masks.values())
    bad_w = sum(int(weights[n][~m].count_nonzero()) for n, m in masks.items())
    bad_m = sum(int(momenta[n][~m].count_nonzero()) for n, m in masks.items() if n in momenta)
    devices = sorted({str(t.device) for t in [*masks.values(), *weights.values(), *momenta.values()]})
    return {"active": active, "masked_nonzero_weights": bad_w, "inactive_nonzero_momentum": bad_m,
            "momentum_tensors": sum(n in momenta for n in masks), "devices": devices}


def masking_violations(masking: Masking) -> dict:
    opt = masking.optimizer
    momenta = {n: opt.state[p]["momentum_buffer"] for n, p in masking.params.items()
               if opt is not None and "momentum_buffer" in opt.state.get(p, {})}
    return violations(masking.masks, {n: p.detach() for n, p in masking.params.items()}, momenta)


def check_invariants(res: Result, prefix: str, v: dict, budget: int, where: str) -> None:
    res.details[f"{prefix}invariants"] = v
    res.check(f"{prefix}budget_exact", v["active"] == budget, f"active weights {v['active']:,} == budget {budget:,} ({where})")
    res.check(f"{prefix}masked_weights_zero", v["masked_nonzero_weights"] == 0,
              f"{v['masked_nonzero_weights']} masked weights non-zero, on {', '.join(v['devices'])} ({where})")
    res.check(f"{prefix}inactive_momentum_zero", v["inactive_nonzero_momentum"] == 0 and v["momentum_tensors"] > 0,
              f"{v['inactive_nonzero_momentum']} momentum entries of inactive weights non-zero, "
              f"{v['momentum_tensors']} buffers checked ({where})")


# ---------------------------------------------------------------- resnet50, wrn, compile: img/s


def train_pair(ctx: Ctx, spec: ModelSpec, batch: int, compiled: bool) -> dict:
    """Dense and DSR copies of one model, their steps alternating so noise hits both alike.

    The DSR side runs Masking.step() after every optimizer step; its period puts exactly one
    reallocation inside the timed window (global steps count from 1: the warm-up ones first).
    Reallocations are also timed apart (as step() runs them), to amortise at the paper's period.
    """
    s = ctx.sizes
    torch.manual_seed(0)
    dense = make_model(ctx, spec)
    sparse = copy.deepcopy(dense)
    opt_d, opt_s = sgd(dense), sgd(sparse)
    names = sparse_names(spec.name, sparse)
    window_period = s.warmup + s.steps // 2 + 1
    numel = sum(p.numel() for n, p in sparse.named_parameters() if n in set(names))
    target = scaled_np(spec, numel)
    masking = Masking(sparse, opt_s, sparsity=SPARSITY, names=names,
                      method=dsr(periods=[(0, window_period)], stop_epoch=None, target_pruned=target))
    run_d, run_s = (torch.compile(dense), torch.compile(sparse)) if compiled else (dense, sparse)
    x, y = make_batch(ctx, spec, batch)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)

    out = {"batch": batch, "budget": masking.budget, "sparse_weights": masking.sparse_numel, "Np": target}
    for key, model, opt, msk in (("dense", run_d, opt_d, None), ("dsr", run_s, opt_s, masking)):
        ctx.sync()
        t = time.perf_counter()
        train_step(model, opt, x, y, msk)  # the first step compiles (torch.compile) or autotunes (cuDNN)
        ctx.sync()
        out[f"first_step_{key}_s"] = time.perf_counter() - t
    for _ in range(s.warmup - 1):
        train_step(run_d, opt_d, x, y)
        train_step(run_s, opt_s, x, y, masking)
    ctx.sync()
    td, ts = StepTimer(ctx.device), StepTimer(ctx.device)
    realloc_at, t0 = [], time.perf_counter()
    for i in range(s.steps):
        if i >= 3 and ctx.left() < 20:  # leave room for the rest of the section
            out["cut_short_at"] = i
            break
        td(lambda: train_step(run_d, opt_d, x, y))
        ts(lambda: train_step(run_s, opt_s, x, y, masking))
        if masking.global_step % window_period == 0:
            realloc_at.append(i)
    ctx.sync()
    out["window_s"] = time.perf_counter() - t0
    d_ms, s_ms = td.ms(), ts.ms()
    events = masking.pop_events()
    tr = StepTimer(ctx.device)
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
    if ctx.cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    return out


def pair_with_oom_retry(ctx: Ctx, res: Result, spec: ModelSpec, compiled: bool) -> dict:
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


def report_pair(ctx: Ctx, res: Result, spec: ModelSpec, r: dict, tag: str) -> None:
    b = r["batch"]
    setting = (f"{spec.name} {spec.kw}, batch {b}, {spec.image} px, bf16 autocast, channels_last, SGD Nesterov, "
               f"{ctx.device.type}")
    timing = f"median of {r['steps_timed']} {'CUDA-event' if ctx.cuda else 'perf_counter'}-timed steps, dense and DSR alternating"
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


def section_throughput(name: str):
    def run(ctx: Ctx, res: Result) -> None:
        spec = getattr(ctx.sizes, name)
        r = pair_with_oom_retry(ctx, res, spec, compiled=False)
        ctx.eager[name] = 1e3 * r["batch"] / r["dense_ms"]
        report_pair(ctx, res, spec, r, "")
    return run


def section_compile(ctx: Ctx, res: Result) -> None:
    """Each model pair under torch.compile (inductor, default mode); the first step of each
    model is its compile time, reported apart, never in img/s."""
    done, failed = 0, []
    for name in ctx.sizes.compile_models:
        need = COMPILE_ESTIMATE_S[name] * (0.5 if ctx.quick else 1.0)
        if ctx.left() < need:
            res.note(f"{name}: skipped, {ctx.left():.0f} s left in the section, compile may need {need:.0f} s")
            continue
        spec = getattr(ctx.sizes, name)
        try:
            r = pair_with_oom_retry(ctx, res, spec, compiled=True)
        except SectionTimeout:
            raise
        except Exception as exc:  # no compiler, an inductor bug: recorded, the next model still tried
            failed.append(f"{name}: {first_line(exc)}")
            res.details[f"{name}_traceback"] = traceback.format_exc()[-3000:]
            res.note(f"torch.compile failed for {name}: {first_line(exc)}")
            torch._dynamo.reset()
            free_memory()
            continue
        report_pair(ctx, res, spec, r, "compiled_")
        res.metric(f"compiled_{name}_compile_dense_s", r["first_step_dense_s"],
                   "wall time of the dense model's first step (compiles forward and backward), not in img/s")
        res.metric(f"compiled_{name}_compile_dsr_s", r["first_step_dsr_s"],
                   "wall time of the DSR copy's first step (same graphs: mostly cache hits)")
        if name in ctx.eager:
            res.metric(f"compiled_{name}_dense_over_eager", 1e3 * r["batch"] / r["dense_ms"] / ctx.eager[name],
                       "dense img/s compiled / eager, both from this run")
        done += 1
        torch._dynamo.reset()
        free_memory()
    res.details["torch_compile"] = {"backend": "inductor", "mode": "default", "compiled": done, "failed": failed}
    if not done and failed:
        res.status, res.error = "unavailable", "; ".join(failed)


# ---------------------------------------------------------------- masks: apply and reallocate vs compare


def section_masks(ctx: Ctx, res: Result) -> None:
    for spec in (ctx.sizes.resnet50, ctx.sizes.wrn):
        torch.manual_seed(0)
        model = make_model(ctx, spec)
        opt = sgd(model)
        names = sparse_names(spec.name, model)
        numel = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
        target = scaled_np(spec, numel)
        masking = Masking(model, opt, sparsity=SPARSITY, names=names,
                          method=dsr(periods=[(0, 10**9)], stop_epoch=None, target_pruned=target))
        x, y = make_batch(ctx, spec, min(spec.batch, 32))
        train_step(model, opt, x, y, masking)  # momentum buffers exist: apply() zeroes weights and momentum
        del x, y
        pruner = masking.method.pruner

        def compare():  # the floor of a threshold prune: one masked comparison per weight, one transfer
            h = pruner.threshold
            return torch.stack([torch.lt(p.detach().abs(), h).logical_and_(masking.masks[n]).count_nonzero()
                                for n, p in masking.params.items()]).tolist()

        fraction = target / masking.budget
        timers = {k: StepTimer(ctx.device) for k in ("apply", "realloc", "compare", "sort")}
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
                 f"budget {masking.budget:,}, {ctx.device.type}, channels_last; median of {ctx.sizes.reps}")
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


def deepr_step(ctx: Ctx, res: Result, spec: ModelSpec) -> None:
    """DeepR's noise is drawn on the device (a device generator seeded from the CPU one): one
    Masking.step() = apply + L1 + noise + sign-flip rewiring."""
    torch.manual_seed(0)
    model = make_model(ctx, spec)
    opt = sgd(model)
    masking = Masking(model, opt, sparsity=SPARSITY, names=sparse_names(spec.name, model), method=build_method("deepr"))
    x, y = make_batch(ctx, spec, min(spec.batch, 32))
    train_step(model, opt, x, y, masking)
    t = StepTimer(ctx.device)
    for _ in range(ctx.sizes.reps):
        t(masking.step)
    res.metric(f"{spec.name}_deepr_step_ms", statistics.median(t.ms()),
               "one Masking.step() with DeepR: apply, L1, Gaussian noise on the device, sign-flip rewiring")
    check_invariants(res, f"{spec.name}_deepr_", masking_violations(masking), masking.budget, "after DeepR steps")


# ---------------------------------------------------------------- data: CPU loader vs device decode


def make_jpeg_tree(root: Path, classes: int, train: int, val: int, size: tuple[int, int], quality: int = 90) -> Path:
    """root/{train,val}/classNNN/*.jpg, one class folder per task, in parallel processes."""
    from concurrent.futures import ProcessPoolExecutor

    tasks = [(root / split / f"class{c:03d}", n, size, quality, seed)
             for seed, (split, n, c) in enumerate((s, n, c) for s, n in (("train", train), ("val", val)) for c in range(classes))]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 2:  # a pool costs more than it saves here
        for t in tasks:
            _write_jpegs(*t)
    else:
        with ProcessPoolExecutor(min(cores, len(tasks))) as pool:
            list(pool.map(_write_jpegs, *zip(*tasks)))
    return root


def _write_jpegs(folder: Path, n: int, size: tuple[int, int], quality: int, seed: int) -> None:
    """Photo-like JPEGs: a smooth random field plus grain, tuned so that at 500x375 and quality
    90 a file is about 110 KiB, like ImageNet's (decode time follows the entropy-coded size);
    sizes jittered by +-20%."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(v * rng.uniform(0.8, 1.2)) for v in size)
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 18, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=quality)


def package_data(root: Path, decode: str = "cpu"):
    """The package's own ImageNet pipeline on the generated tree (``data.decode`` cpu or gpu):
    its DataBundle, whose training set, collate function and ``to_device`` the timings use."""
    from dsr_tune import config as C
    from dsr_tune.data import build_data

    cfg = C.DataConfig(name="imagenet", root=str(root), image_size=224, val_fraction=0.0, decode=decode,
                       loader_workers=0, batch_size=8)
    return build_data(cfg)


def loader_rate(bundle, workers: int, batch: int, images: int, pin: bool, deadline: float,
                device: torch.device | None = None) -> dict:
    """Images/s of a DataLoader with ``workers`` processes over the package's training set,
    counted after the first batch of every worker (process start-up is not decoding). With
    ``device``, every batch also goes through ``bundle.to_device`` (decode=gpu: the decoding
    and augmentation on the device happen there)."""
    from torch.utils.data import DataLoader, RandomSampler

    train_set = bundle.train.dataset
    sampler = RandomSampler(train_set, replacement=True, num_samples=images, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(train_set, batch, sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=True,
                        collate_fn=bundle.train.collate_fn)

    def batch_x(b):
        return bundle.to_device(b, device)[0] if device is not None else bundle.to_device(b, "cpu")[0]

    it = iter(loader)
    shape = tuple(batch_x(next(it)).shape)
    for _ in range(max(1, workers) - 1):
        next(it)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for b in it:
        n += len(batch_x(b))
        if time.monotonic() > deadline:
            break
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    main_cpu = time.process_time() - c0
    del it
    return {"workers": workers, "images": n, "seconds": dt, "img_s": n / dt, "main_process_cores": main_cpu / dt,
            "batch_shape": shape}


def pil_cpu_rate(train_set, images: int, deadline: float) -> dict:
    """Images per CPU-second of the package's PIL transforms in this process on one thread, as
    a loader worker runs them: CPU time, so other processes on the cores barely change it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        order = torch.randint(len(train_set), (images + 8,), generator=torch.Generator().manual_seed(0)).tolist()
        for i in order[:8]:  # warm-up
            train_set[i]
        c0, n = time.process_time(), 0
        for i in order[8:]:
            train_set[i]
            n += 1
            if time.monotonic() > deadline:
                break
        cpu = time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
    return {"images": n, "cpu_s": cpu, "img_per_cpu_s": n / cpu}


def decode_on_device(datas: list[torch.Tensor], device: torch.device, size: int = 224) -> torch.Tensor:
    """Encoded JPEG bytes -> a normalized, randomly cropped and flipped float batch on ``device``.

    The physical rate: torchvision.io's batched decode_jpeg on the device (nvJPEG on CUDA),
    then the random-resized crop, flip and normalisation on the device too, with nothing of the
    package around it. The package's own path (``data.decode=gpu``) is timed beside it in
    :func:`section_data` through :func:`loader_rate` with ``device``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2.functional import resized_crop

    from dsr_tune.data.images import IMAGENET_MEAN, IMAGENET_STD

    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    crops = [resized_crop(img, *RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)), [size, size],
                          antialias=True) for img in images]
    x = torch.stack(crops).float().div_(255)
    flip = torch.rand(len(x), device=device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def device_decode_rate(ctx: Ctx, files: list[Path], batch: int, deadline: float) -> dict:
    from torchvision.io import read_file

    def one(chunk):
        return decode_on_device([read_file(str(f)) for f in chunk], ctx.device)

    chunks = [files[i:i + batch] for i in range(0, len(files) - batch + 1, batch)]
    x = one(chunks[0])  # warm-up: nvJPEG handles, kernels
    out = {"batch_shape": tuple(x.shape), "on_device": x.device.type == ctx.device.type,
           "channels_last": x.is_contiguous(memory_format=torch.channels_last), "finite": bool(x.isfinite().all()),
           "mean": float(x.mean()), "std": float(x.std())}
    del x
    ctx.sync()
    t0, c0, n, gpu = time.perf_counter(), time.process_time(), 0, StepTimer(ctx.device)
    for rounds in range(1000):
        for chunk in chunks:
            gpu(lambda c=chunk: one(c))
            n += len(chunk)
        if rounds >= 2 and (time.perf_counter() - t0 > 3 or time.monotonic() > deadline):
            break
    ctx.sync()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**out, "images": n, "seconds": dt, "img_s": n / dt, "cpu_s_per_image": cpu / n,
            "device_ms_per_batch": statistics.median(gpu.ms()), "batch": batch}


def section_data(ctx: Ctx, res: Result) -> None:
    s = ctx.sizes
    t = time.perf_counter()
    root = ctx.jpeg_tree()
    files = sorted((root / "train").rglob("*.jpg"))
    kb = statistics.fmean(f.stat().st_size for f in files) / 1024
    res.metric("jpeg_generated_s", time.perf_counter() - t, f"{len(files)} train JPEGs around {s.jpeg['size']} px, quality 90, PIL")
    res.metric("jpeg_mean_kib", kb, "mean file size (ImageNet's train JPEGs average about 110 KiB)")
    bundle = package_data(root)  # the package's own training transforms (data.decode=cpu)
    train_set = bundle.train.dataset
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res.details["cores"] = cores
    cpu = pil_cpu_rate(train_set, 100 if ctx.quick else 400, time.monotonic() + min(15.0, ctx.left() / 4))
    res.details["pil_cpu"] = cpu
    res.metric("pil_img_per_cpu_second", cpu["img_per_cpu_s"],
               f"the same transforms in this process on one thread, {cpu['images']} images / their CPU time "
               "(time.process_time): the per-core rate, barely touched by other load")
    runs, per_core_for_estimate = [], None
    for n in [w for w in s.loader_workers if w <= cores]:
        if ctx.left() < 15:
            res.note(f"loader with {n} processes: skipped, {ctx.left():.0f} s left")
            break
        rate1 = runs[0]["img_s"] if runs else 250.0  # a first guess: about 3 s of images
        images = max(8 * s.loader_batch * n, int(rate1 * n * (1.5 if ctx.quick else 3.0)))
        deadline = time.monotonic() + min(20.0, ctx.left() / 3)
        r = loader_rate(bundle, n, s.loader_batch, images, ctx.cuda, deadline)
        runs.append(r)
        res.metric(f"loader_img_s_{n}proc", r["img_s"],
                   f"DataLoader, {n} process(es), batch {s.loader_batch}, the package's ImageNet transforms (PIL decode, "
                   f"RandomResizedCrop 224, flip, ToTensor, Normalize){', pinned' if ctx.cuda else ''}; "
                   f"{r['images']} images after each worker's first batch")
        res.metric(f"loader_img_s_per_core_{n}proc", r["img_s"] / n, "images/s / loader processes")
        if n < cores or per_core_for_estimate is None:  # one core left to the training process
            per_core_for_estimate = (n, r["img_s"] / n)
    res.details["loader"] = runs
    res.check("loader_batches_224", all(r["batch_shape"] == (s.loader_batch, 3, 224, 224) for r in runs),
              f"every loader batch is ({s.loader_batch}, 3, 224, 224): {sorted({r['batch_shape'] for r in runs})}")
    n, per_core = per_core_for_estimate
    res.metric("loader_cores_for_3000_img_s_pil", FEED_TARGET / min(per_core, cpu["img_per_cpu_s"]),
               f"{FEED_TARGET:,} / the lower of the per-CPU-second rate and the per-process rate with {n} "
               "process(es) (the most that leave the training process a core)")
    d = device_decode_rate(ctx, files, s.decode_batch, time.monotonic() + min(20.0, max(5.0, ctx.left() - 5)))
    res.details["device_decode"] = d
    res.check("device_decode_batch", d["batch_shape"] == (s.decode_batch, 3, 224, 224) and d["on_device"]
              and d["channels_last"] and d["finite"] and abs(d["mean"]) < 1.5 and 0.2 < d["std"] < 3,
              f"decode_on_device gives a finite, normalized channels_last batch {d['batch_shape']} on the "
              f"{ctx.device.type} (mean {d['mean']:.2f}, std {d['std']:.2f})")
    res.metric("device_decode_img_s", d["img_s"],
               f"torchvision.io.decode_jpeg(device={ctx.device.type!r}) on batches of {d['batch']} file bytes, then "
               f"random-resized crop 224, flip and normalisation on the {ctx.device.type}; files read in the loop; "
               f"{d['images']} images")
    res.metric("device_decode_img_s_per_cpu_core", 1 / d["cpu_s_per_image"],
               "images per CPU-second of this process (time.process_time) while decoding on the device")
    res.metric("loader_cores_for_3000_img_s_device_decode", FEED_TARGET * d["cpu_s_per_image"],
               f"{FEED_TARGET:,} x CPU-seconds per image: the host work left (reading files, launching)")
    res.metric("device_share_for_3000_img_s", FEED_TARGET / d["img_s"],
               f"share of one {ctx.device.type} second that decoding {FEED_TARGET:,} images takes from training")
    if ctx.left() < 10:
        res.note(f"the package's data.decode=gpu path: skipped, {ctx.left():.0f} s left")
        return
    gpu_bundle = package_data(root, decode="gpu")
    n = 1 if ctx.quick else min(2, cores)
    p = loader_rate(gpu_bundle, n, s.decode_batch, max(4 * s.decode_batch, 64), ctx.cuda,
                    time.monotonic() + min(20.0, ctx.left() / 2), device=ctx.device)
    res.details["package_decode_gpu"] = p
    res.check("package_decode_gpu_batch", p["batch_shape"] == (s.decode_batch, 3, 224, 224),
              f"data.decode=gpu batches are ({s.decode_batch}, 3, 224, 224) on the {ctx.device.type}: {p['batch_shape']}")
    res.metric("package_decode_gpu_img_s", p["img_s"],
               f"the package's data.decode=gpu path: {n} loader process(es) read the files, DataBundle.to_device "
               f"decodes (batched decode_jpeg) and augments them on the {ctx.device.type}; {p['images']} images")


# ---------------------------------------------------------------- train: the real CLI end to end


def cli_command() -> list[str]:
    exe = Path(sys.executable).parent / "dsr-tune"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dsr_tune.cli"]


def e2e_overrides(ctx: Ctx, root: Path, np_: int) -> list[str]:
    e = ctx.sizes.e2e
    values = dict(width=e["width"], root=root, image=e["image"], batch=e["batch"], workers=e["workers"], np=np_,
                  period=e["period"], epochs=e["epochs"], device=ctx.device.type)
    return [f"{k}={str(v).format(**values)}" for k, v in TRAIN_KEYS.items()]


def section_train(ctx: Ctx, res: Result) -> None:
    in_process_check(ctx, res)
    e, classes = ctx.sizes.e2e, ctx.sizes.jpeg["classes"]
    root = ctx.jpeg_tree()
    numel, budget_expected, total = budget_of("resnet50", {"width": e["width"]}, classes)
    np_ = scaled_np(replace(ctx.sizes.resnet50, kw={"width": e["width"]}, classes=classes), numel)
    run_dir = ctx.work / "e2e_run"
    cmd = [*cli_command(), "train", str(ROOT / TRAIN_CONFIG), *e2e_overrides(ctx, root, np_), "--output", str(run_dir)]
    res.details["command"] = shlex.join(cmd)
    print(f"  $ {shlex.join(cmd)}", flush=True)
    log = ctx.out / "train_cli.log"
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT,
                              timeout=max(10.0, ctx.left() - 15))
    wall = time.perf_counter() - t
    tail = log.read_text()[-3000:]
    res.details["log_tail"] = tail
    res.check("cli_exit_ok", proc.returncode == 0, f"`dsr-tune train` exit status {proc.returncode} (log: {log.name})")
    if proc.returncode != 0:
        raise RuntimeError(f"dsr-tune train failed with status {proc.returncode}: {tail[-500:]}")
    from dsr_tune.runfolder import read_records

    records = read_records(run_dir / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    reallocs = [r for r in records if r["kind"] == "realloc"]
    steps = epochs[-1]["step"] if epochs else 0
    res.metric("e2e_wall_s", wall, "the CLI subprocess, start to exit (imports, data, training, evaluation, checkpoints)")
    res.metric("e2e_steps", steps, f"training steps: {len(epochs)} epochs of resnet50 width {e['width']} at "
               f"{e['image']} px, batch {e['batch']}, {e['workers']} loader processes, bf16, channels_last")
    res.metric("e2e_samples_per_s_last_epoch", epochs[-1]["samples_per_s"], "the trainer's own record (metrics.jsonl)")
    res.metric("e2e_reallocations", len(reallocs), f"reallocation records (period {e['period']} steps, Np {np_:,})")
    res.check("e2e_epochs_complete", len(epochs) == e["epochs"], f"{len(epochs)} epoch records of {e['epochs']}")
    res.check("e2e_records_budget", all(sum(l["nonzero"] for l in r["layers"].values()) == budget_expected for r in reallocs),
              f"every reallocation record's per-tensor non-zero counts sum to {budget_expected:,}")
    res.check("e2e_nonzero_params", all(r["nonzero_params"] == total - numel + budget_expected for r in epochs),
              f"every epoch's nonzero_params == dense {total - numel:,} + budget {budget_expected:,}")
    checkpoint_check(ctx, res, run_dir / "checkpoint.pt", e["width"], classes, budget_expected)


def checkpoint_check(ctx: Ctx, res: Result, path: Path, width: float, classes: int, budget: int) -> None:
    """The CLI's checkpoint loaded onto the device: budget, masked weights, inactive momentum."""
    from dsr_tune import checkpoint as ckpt

    state = ckpt.load(path, map_location=ctx.device)
    with torch.device("meta"):
        names = [n for n, _ in build_model("resnet50", width=width, num_classes=classes).named_parameters()]
    groups = state["optimizer"]["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or len(ids) != len(names):
        raise RuntimeError(f"cannot map optimizer state to names: {len(groups)} groups, {len(ids)} ids, {len(names)} params")
    index = dict(zip(names, ids))
    masks = {n: m.to(ctx.device) for n, m in state["masking"]["masks"].items()}
    weights = {n: state["model"][n] for n in masks}
    momenta = {n: state["optimizer"]["state"][index[n]]["momentum_buffer"] for n in masks
               if "momentum_buffer" in state["optimizer"]["state"].get(index[n], {})}
    res.check("ckpt_budget_recorded", state["masking"]["budget"] == budget,
              f"checkpoint's budget {state['masking']['budget']:,} == {budget:,}, the uniform spread at sparsity {SPARSITY}")
    check_invariants(res, "ckpt_", violations(masks, weights, momenta), state["masking"]["budget"],
                     "the CLI's checkpoint.pt, loaded onto the device")


def in_process_check(ctx: Ctx, res: Result) -> None:
    """A few steps of the small ResNet-50 on the device with DSR every 3 steps, then the
    invariants checked there."""
    e = ctx.sizes.e2e
    spec = replace(ctx.sizes.resnet50, kw={"width": e["width"]}, image=e["image"], classes=10)
    torch.manual_seed(0)
    model = make_model(ctx, spec)
    opt = sgd(model)
    names = sparse_names(spec.name, model)
    numel = sum(p.numel() for n, p in model.named_parameters() if n in set(names))
    masking = Masking(model, opt, sparsity=SPARSITY, names=names,
                      method=dsr(periods=[(0, 3)], stop_epoch=None, target_pruned=scaled_np(spec, numel)))
    x, y = make_batch(ctx, spec, e["batch"])
    for _ in range(7):
        train_step(model, opt, x, y, masking)
    events = masking.pop_events()
    res.check("inproc_reallocated", len(events) == 2, f"{len(events)} reallocations in 7 steps at period 3 (expected 2)")
    check_invariants(res, "inproc_", masking_violations(masking), masking.budget,
                     f"in-process, right after 7 bf16 channels_last steps on the {ctx.device.type}")


# ---------------------------------------------------------------- tests: pytest -m cuda


def section_tests(ctx: Ctx, res: Result) -> None:
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


# ---------------------------------------------------------------- the runner


SECTIONS = {  # name: (function, share of the budget); at 480 s: 58, 24, 24, 48, 67, 67, 192 s
    "resnet50": (section_throughput("resnet50"), 0.12),
    "wrn": (section_throughput("wrn"), 0.05),
    "masks": (section_masks, 0.05),
    "data": (section_data, 0.10),
    "train": (section_train, 0.14),
    "tests": (section_tests, 0.14),
    "compile": (section_compile, 0.40),
}
MIN_SECTION_S = 5.0


def run_sections(names: list[str], table: dict, ctx: Ctx, report: Report, budget_s: float) -> None:
    """Run each section under a guard, within its share of what is left of the budget (plus
    whatever the sections before it left unused)."""
    start = time.monotonic()
    shares = {n: table[n][1] for n in names}
    total = sum(shares.values())
    for i, name in enumerate(names):
        res = report.sections[name] = Result(name)
        now = time.monotonic()
        remaining = start + budget_s - now
        later = budget_s * sum(shares[n] for n in names[i + 1:]) / total
        limit = min(remaining, max(budget_s * shares[name] / total, remaining - later))
        res.limit_s = max(limit, 0.0)
        if limit < MIN_SECTION_S:
            res.status = "skipped"
            res.note(f"out of time: {max(remaining, 0):.0f} s of --budget-s {budget_s:g} left")
            report.write()
            continue
        print(f"\n== {name} (up to {limit:.0f} s)", flush=True)
        ctx.section_deadline = now + limit
        try:
            with alarm(limit + min(30.0, 0.2 * limit)):
                table[name][0](ctx, res)
        except (SectionTimeout, subprocess.TimeoutExpired) as exc:  # the latter: a subprocess given the time left
            res.status, res.error = "timeout", first_line(exc)
        except torch.cuda.OutOfMemoryError as exc:
            res.status, res.error = "oom", first_line(exc)
        except KeyboardInterrupt as exc:
            res.status, res.error = "interrupted", f"interrupted by {exc or 'Ctrl-C'}"
            raise
        except Exception as exc:
            res.status, res.error = "error", first_line(exc)
            res.details["traceback"] = traceback.format_exc()[-4000:]
        finally:
            res.wall_s = time.monotonic() - now
            if res.error:
                print(f"  {res.status}: {res.error}", flush=True)
            print(f"== {name}: {res.status} in {res.wall_s:.1f} s", flush=True)
            free_memory()
            report.write()


def metadata(args, device: torch.device) -> dict:
    import torchvision

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, sm_{props.major}{props.minor})"
    else:
        name = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
        name = f"CPU: {name}"
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        git = "unknown"
    driver = "n/a"
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip() or "n/a"
    return {
        "_t0": time.monotonic(), "device": str(device), "device_name": name, "driver": driver,
        "torch": torch.__version__, "cuda": torch.version.cuda or "none",
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none",
        "torchvision": torchvision.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "git": git,
        "command": shlex.join([sys.executable, *sys.argv]), "mode": "quick" if args.quick else "full",
        "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "how": ("times are medians of per-step CUDA events (perf_counter on CPU) after warm-up steps; every ratio "
                "compares two things measured in this run; DSR/dense steps alternate; compile time is never in img/s"),
    }


def _interrupt(*_):
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, gpu_check.md and logs")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes on 2 CPU cores)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for all sections together (default 480)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (JPEG tree, the CLI's run)")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        p.error(f"--sections: unknown {unknown}; allowed: {', '.join(SECTIONS)}")
    names = [s for s in SECTIONS if s in names]  # the canonical order
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available here")
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    report = Report(args.out, metadata(args, device))
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Ctx(device=device, sizes=QUICK if args.quick else FULL, out=args.out, work=work, quick=args.quick)
    report.meta.update(sections=names, sizes=asdict(ctx.sizes))
    print(f"gpu_check: {report.meta['device_name']}; torch {torch.__version__}, CUDA {report.meta['cuda']}; "
          f"sections {','.join(names)}; budget {args.budget_s:g} s; out {args.out}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # an outer `timeout` still leaves the report, marked
    try:
        run_sections(names, SECTIONS, ctx, report, args.budget_s)
    except KeyboardInterrupt:
        report.write()
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.write()
    bad = {n: r.status for n, r in report.sections.items() if r.status not in ("ok", "unavailable", "skipped")}
    print(f"\ngpu_check: {report.meta['wall_s']} s; wrote {args.out / 'gpu_check.json'} and gpu_check.md"
          + (f"; not ok: {bad}" if bad else "; every section ok"), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
