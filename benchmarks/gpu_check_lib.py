"""gpu_check's shared parts that need torch: sizes, the device, timing, models and masks,
the invariant checks and the generated JPEG tree. Loaded only inside a section's child
process (benchmarks/gpu_check.py runs each section in its own); APIs of torch 2.11 and
torchvision 0.26 (the GPU image) or older."""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import dataclass

import torch

from dsr_tune.models import build_model, sparse_names
from dsr_tune.sparse import Masking, layer_counts

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
    jpeg: dict                  # the generated tree: classes, images per class, (width, height)
    loader_workers: tuple       # CPU loader processes tried (capped at the core count)
    loader_batch: int
    decode_batch: int           # images per torchvision.io.decode_jpeg call on the device
    package_decode_images: int  # images through the package's data.decode=gpu path (timed after warm-up)
    compile_backend: str        # torch.compile's backend: inductor on the GPU; aot_eager (no C++ codegen) in --quick
    e2e: dict                   # the `dsr-tune train` run: 768 JPEGs, 1/8 held out -> 21 batches of 32 per epoch
    e2e_compile: dict           # the second, short run: train.compile=true and data.decode=gpu
    resident: dict              # wrn_resident: the trainer on CIFAR-shaped data kept on the device
    packed: dict                # wrn_packed: trials packed on one GPU, each capped at 1/trials of its memory


FULL = Sizes(
    resnet50=ModelSpec(**R50, kw={"width": 1.0}, batch=256, image=224),
    wrn=ModelSpec(**WRN, kw={"depth": 28, "width": 2.0}, batch=128, image=32),
    warmup=5, steps=20, reps=10,
    jpeg=dict(classes=8, train=96, val=16, size=(500, 375)),
    loader_workers=(1, 2, 4, 8, 16), loader_batch=32, decode_batch=64, package_decode_images=64 * 80,
    compile_backend="inductor",
    e2e=dict(model="resnet50", kw={"width": 0.25}, image=64, batch=32, epochs=12, workers=8, period=25,
             val_fraction=0.125),  # 672 training images = 21 batches: 252 steps
    e2e_compile=dict(model="wrn", kw={"depth": 10, "width": 1.0}, image=64, batch=32, epochs=2, workers=4,
                     period=10, val_fraction=0.125, backend="inductor"),  # 42 steps
    resident=dict(depth=28, width=2.0, images=50_000, test_images=1_000, batch=128, epochs=2, rounds=1,
                  run_estimate_s=15),  # 390 steps an epoch; the dense run's first epoch is not timed
    packed=dict(kw={"depth": 28, "width": 2.0}, batch=128, trials=4, warmup=10, window_s=5.0),
)
QUICK = Sizes(
    resnet50=ModelSpec(**R50, kw={"width": 0.25}, batch=8, image=64),
    wrn=ModelSpec(**WRN, kw={"depth": 16, "width": 2.0}, batch=32, image=32),
    warmup=3, steps=6, reps=5,
    jpeg=dict(classes=4, train=16, val=4, size=(160, 120)),
    loader_workers=(1, 2), loader_batch=8, decode_batch=16, package_decode_images=16 * 8,
    # inductor's CPU code generation takes minutes on 2 loaded cores (WRN-16: 110 s, WRN-10: up to
    # 230 s measured here): the quick form traces and runs the same torch.compile path without it
    compile_backend="aot_eager",
    e2e=dict(model="resnet50", kw={"width": 0.25}, image=32, batch=8, epochs=4, workers=1, period=6,
             val_fraction=0.125),  # 56 training images = 7 batches: 28 steps
    e2e_compile=dict(model="wrn", kw={"depth": 10, "width": 0.5}, image=32, batch=8, epochs=2, workers=1,
                     period=4, val_fraction=0.125, backend="aot_eager"),  # 14 steps
    resident=dict(depth=10, width=1.0, images=256, test_images=64, batch=16, epochs=2, rounds=1, run_estimate_s=20),
    packed=dict(kw={"depth": 10, "width": 1.0}, batch=16, trials=4, warmup=2, window_s=3.0),
)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def setup_device(arg: str) -> torch.device:
    """auto -> CUDA if present; CUDA gets its device set and cuDNN's autotuner (fixed shapes)."""
    if arg == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(arg)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: CUDA is not available here")
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


def torch_meta(device: torch.device, quick: bool) -> dict:
    """What the report's header says about the device, the versions and the sizes (from a
    section's process)."""
    from dataclasses import asdict

    import torchvision

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
                f"sm_{props.major}{props.minor})")
    else:
        name = platform.processor()
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
        name = f"CPU: {name}"
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda or "none",
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none",
            "torchvision": torchvision.__version__, "torch_threads": torch.get_num_threads(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "sizes": asdict(sizes(quick))}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


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


def make_model(device: torch.device, spec: ModelSpec):
    return build_model(spec.name, num_classes=spec.classes, **spec.kw).to(device, memory_format=torch.channels_last)


def make_batch(device: torch.device, spec: ModelSpec, batch: int):
    x = torch.randn(batch, 3, spec.image, spec.image, device=device).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, spec.classes, (batch,), device=device)


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


def check_invariants(res, prefix: str, v: dict, budget: int, where: str) -> None:
    res.details[f"{prefix}invariants"] = v
    res.check(f"{prefix}budget_exact", v["active"] == budget, f"active weights {v['active']:,} == budget {budget:,} ({where})")
    res.check(f"{prefix}masked_weights_zero", v["masked_nonzero_weights"] == 0,
              f"{v['masked_nonzero_weights']} masked weights non-zero, on {', '.join(v['devices'])} ({where})")
    res.check(f"{prefix}inactive_momentum_zero", v["inactive_nonzero_momentum"] == 0 and v["momentum_tensors"] > 0,
              f"{v['inactive_nonzero_momentum']} momentum entries of inactive weights non-zero, "
              f"{v['momentum_tensors']} buffers checked ({where})")


# ---------------------------------------------------------------- the generated JPEG tree


def jpeg_tree(work, jpeg: dict):
    """work/jpeg/{train,val}/classNNN/*.jpg, made once and shared by the sections (each in its
    own process): a marker file says the tree is complete; a half-written one is made anew."""
    import shutil
    from pathlib import Path

    root = Path(work) / "jpeg"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_jpeg_tree(root, **jpeg)
        marker.write_text("ok\n")
    return root


def make_jpeg_tree(root, classes: int, train: int, val: int, size: tuple[int, int], quality: int = 90):
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


def _write_jpegs(folder, n: int, size: tuple[int, int], quality: int, seed: int) -> None:
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
