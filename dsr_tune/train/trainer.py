"""The training recipe: set up, train, evaluate, checkpoint, resume.

Pure PyTorch. It runs in one process, under torchrun, or as the per-worker
function of Ray Train (see :mod:`dsr_tune.distributed`): when a process group
is initialised the model is wrapped in DDP and data is sharded per rank.
Only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import config as C
from ..data import DataBundle, build_data
from ..models import count_params, sparse_names  # issue 3: models are built by baselines.build_run_model
from ..sparse import Masking, build_method, layer_counts, set_fraction, unwrap
from ..baselines import setup as baselines  # issue 3: thin dense, HashedNet, GMP, DSD, ablations
from . import checkpoint as ckpt
from .metrics import JsonlLogger, MetricLogger, truncate_records

log = logging.getLogger("dsr_tune")


# ---------------------------------------------------------------- setup pieces


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the local CUDA device of this process if any, else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available here; use train.device=auto")
    return device


def effective_lr(cfg: C.OptimConfig, batch_size: int) -> float:
    """The base LR scaled to the global batch (linear or square-root rule)."""
    if not cfg.base_batch_size or cfg.lr_scaling == "none":
        return cfg.lr
    ratio = batch_size / cfg.base_batch_size
    return cfg.lr * (ratio if cfg.lr_scaling == "linear" else math.sqrt(ratio))


def lr_factor(cfg: C.OptimConfig, epoch: int) -> float:
    """Epoch-milestone decay with an optional linear warm-up from lr/10."""
    factor = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if epoch < cfg.warmup_epochs:
        factor *= 0.1 + 0.9 * epoch / cfg.warmup_epochs
    return factor


def build_optimizer(model: nn.Module, cfg: C.OptimConfig, lr: float) -> torch.optim.Optimizer:
    # no weight decay on BN and biases (1-d tensors), as usual for ResNets
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def sparse_method(cfg: C.Config, shapes: dict, steps_per_epoch: int):
    """The reallocation method of ``sparsity.method`` (None for static), from the config.

    issue 3: set / deepr / rigl / snfs besides dsr. RigL's and SNFS's cosine
    drop fraction reaches 0 at stop_epoch, when reallocation ends (not tied
    to train.epochs, so a run extended on resume continues exactly).
    """
    s = cfg.sparsity
    timing = dict(periods=s.period_schedule, stop_epoch=s.stop_epoch, period_scale=s.period_scale)
    if s.method == "static":
        return None
    if s.method == "dsr":
        return build_method("dsr", **timing, init_threshold=s.init_threshold, target_pruned=s.target_pruned,
                            delta=s.delta, factor=s.threshold_factor)
    if s.method == "set":
        fraction = s.set_fraction
        if not fraction:  # f = Np / budget: as many weights moved per reallocation as DSR's target
            budget = sum(layer_counts(shapes, 1.0 - s.sparsity, s.distribution).values())
            if s.target_pruned > budget:
                raise C.ConfigError("sparsity.target_pruned", f"{s.target_pruned} exceeds the budget of {budget} sparse "
                                    "weights, so set's fraction Np / budget would exceed 1; lower it or set "
                                    "sparsity.set_fraction")
            fraction = set_fraction(s.target_pruned, budget)
            log.info("set: fraction %.4f = target_pruned %d / budget %d", fraction, s.target_pruned, budget)
        return build_method("set", **timing, fraction=fraction)
    if s.method == "deepr":
        # rewires every step: one summed reallocation record per epoch
        return build_method("deepr", temperatures=s.deepr_temperatures, l1=s.deepr_l1, report_every=steps_per_epoch)
    end_step = s.stop_epoch * steps_per_epoch
    drop = dict(drop_fraction=s.drop_fraction, end_step=end_step, decay=s.drop_decay)
    if s.method == "snfs":
        return build_method("snfs", **timing, **drop, momentum=cfg.optim.momentum)
    return build_method(s.method, **timing, **drop)


def build_masking(cfg: C.Config, model: nn.Module, optimizer, steps_per_epoch: int) -> Masking | None:
    s = cfg.sparsity
    if s.method in baselines.OWN_METHODS:  # issue 3: thin_dense / hashednet (no masks), gmp, dsd
        return baselines.baseline_masking(cfg, model, optimizer)
    if s.method == "dense":
        return None
    names = sparse_names(cfg.model.name, model, cfg.model.sparse_layers, cfg.model.dense_layers)
    if not names:
        raise C.ConfigError("model.sparse_layers", f"{cfg.model.sparse_layers!r} matches no parameter of {cfg.model.name}")
    shapes = {n: p.shape for n, p in unwrap(model).named_parameters() if n in names}
    method = sparse_method(cfg, shapes, steps_per_epoch)
    return Masking(model, optimizer, sparsity=s.sparsity, method=method, names=names,
                   distribution=s.distribution, seed=cfg.train.seed)


def nonzero_params(model: nn.Module, masking: Masking | None) -> int:
    """Parameters the model really has: dense ones plus the active sparse ones."""
    total = count_params(model)
    if masking is None:
        return total
    return total - masking.sparse_numel + sum(masking.nonzero_counts().values())


def _feed(h, obj) -> None:
    """Hash a nested state (dicts, lists, tensors, numbers) in a fixed order."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _feed(h, v)
    elif torch.is_tensor(obj):
        h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())


def mask_fingerprint(masking: Masking) -> str:
    """A short digest of the masks, the generator and the method's state
    (threshold, counters). Equal on every DDP rank when all ranks took the same
    reallocation decisions; logged per epoch so that can be checked."""
    import hashlib

    h = hashlib.sha256()
    state = masking.state_dict()
    _feed(h, {"masks": state["masks"], "generator": state["generator"], "method": state["method"]})
    return h.hexdigest()[:16]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistInfo:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------- the loop


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, precision: str, channels_last: bool, num_classes: int) -> dict:
    """Loss, top-1 and (with more than 5 classes) top-5, summed over ranks."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, reduction="sum")
        top = out.topk(min(5, num_classes), dim=1).indices
        sums += torch.stack([loss.double(), (top[:, 0] == y).sum().double(),
                             (top == y[:, None]).any(1).sum().double(), torch.tensor(len(y), device=device).double()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    loss, top1, top5, n = sums.tolist()
    out = {"test_loss": loss / max(n, 1), "test_acc": top1 / max(n, 1)}
    if num_classes > 5:
        out["test_acc5"] = top5 / max(n, 1)
    return out


def _progress(loader, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, file=sys.stderr)


EpochCallback = Callable[[dict, "Path | None"], None]


def train(cfg: C.Config, out_dir: str | Path, *, resume: bool | str | Path = False,
          loggers: Sequence[MetricLogger] = (), on_epoch_end: EpochCallback | None = None,
          progress: bool | None = None) -> dict:
    """Train ``cfg`` and write config.yaml, metrics.jsonl and checkpoints to ``out_dir``.

    resume: False; True (the latest checkpoint in ``out_dir``); or a
        checkpoint path to start from (Ray Train hands one in after a failure).
    on_epoch_end: called on every rank after each epoch with the epoch record
        and the checkpoint path written this epoch (or None).
    Returns the last epoch record.
    """
    out_dir = Path(out_dir)
    info = DistInfo.current()
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    # -- model, data, optimizer, masks: all seeded from train.seed
    torch.manual_seed(cfg.train.seed)
    data: DataBundle = build_data(cfg.data, cfg.train.seed, info.rank, info.world_size,
                                  pin_memory=device.type == "cuda")
    # issue 3: the plain registry model, or thin dense / HashedNet, from init_from / dense_from values
    model = baselines.build_run_model(cfg, data.num_classes, data.in_channels)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}  # dense values before masking
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    lr = effective_lr(cfg.optim, cfg.data.batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(cfg.optim, e) * baselines.phase_lr_factor(cfg, e))  # issue 3: DSD
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise C.ConfigError("data.batch_size", f"{cfg.data.batch_size} is larger than the training set")
    masking = build_masking(cfg, model, optimizer, steps_per_epoch)
    baselines.load_masks_from(cfg, masking, init_state)  # issue 3: sparsity.mask_from (ablations)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    ddp_model = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- run folder, resume
    start_epoch, metrics_path = 0, out_dir / "metrics.jsonl"
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(C.dump(cfg))
    resume_path = (out_dir / ckpt.LATEST) if resume is True else (Path(resume) if resume else None)
    if resume_path is not None:
        state = ckpt.load(resume_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if masking is not None:
            masking.load_state_dict(state["masking"])
        start_epoch = state["epoch"]
        if info.main and metrics_path.exists():
            truncate_records(metrics_path, start_epoch, state["step"])
        log.info("resumed from %s at epoch %d (step %d)", resume_path, start_epoch, state["step"])
    elif info.main:
        if metrics_path.exists():
            metrics_path.unlink()  # a fresh run owns its folder's records
        ckpt.atomic_save({"model": init_state, "masking": masking.state_dict() if masking else None}, out_dir / "init.pt")

    loggers = ([JsonlLogger(metrics_path)] + list(loggers)) if info.main else []
    for lg in loggers:
        lg.log_params(cfg.flat())
    total_params = count_params(model)
    if info.main:
        log.info("%s on %s: %d params dense, %s; %d steps/epoch, %d worker(s), lr %.4g",
                 cfg.model.name, device, total_params,
                 f"{masking.budget}/{masking.sparse_numel} sparse weights active ({cfg.sparsity.method})" if masking else "dense",
                 steps_per_epoch, info.world_size, lr)

    show_bar = info.main and (sys.stderr.isatty() if progress is None else progress)
    record: dict = {}
    step = masking.global_step if masking else start_epoch * steps_per_epoch
    status = "FAILED"
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            data.set_epoch(epoch, cfg.train.seed)
            torch.manual_seed(cfg.train.seed * 1_000_003 + epoch)  # augmentation in the main process
            if masking is not None:
                masking.set_epoch(epoch)
            ddp_model.train()
            epoch_lr = optimizer.param_groups[0]["lr"]
            t0, seen = time.perf_counter(), 0
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.float64, device=device)
            for x, y in _progress(data.train, epoch, cfg.train.epochs, show_bar):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device, cfg.train.precision):
                    out = ddp_model(x)
                    loss = F.cross_entropy(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                if masking is not None:
                    event = masking.step()
                    if event is not None and info.main:
                        for lg in loggers:
                            lg.log_record({"kind": "realloc", **event})
                loss_sum += loss.detach().double() * len(y)
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
            train_time = time.perf_counter() - t0
            scheduler.step()
            stats = torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=device)])
            if info.world_size > 1:
                dist.all_reduce(stats)
            loss_tot, correct_tot, n = stats.tolist()
            record = {
                "kind": "epoch", "epoch": epoch, "step": step,
                "train_loss": loss_tot / n, "train_acc": correct_tot / n,
                **evaluate(ddp_model, data.test, device, cfg.train.precision, cfg.train.channels_last, data.num_classes),
                "nonzero_params": nonzero_params(model, masking), "total_params": total_params,
                "lr": epoch_lr,
                "samples_per_s": n / train_time, "epoch_time": time.perf_counter() - t0,
            }
            if masking is not None:
                record["density"] = {k: round(v, 6) for k, v in masking.densities().items()}
                record["mask_hash"] = mask_fingerprint(masking)  # equal on all ranks (Ray Train checks)
            path = None
            last = epoch + 1 == cfg.train.epochs
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or last:
                path = out_dir / ckpt.LATEST
                if info.main:
                    ckpt.atomic_save({
                        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                        "masking": masking.state_dict() if masking else None,
                        "epoch": epoch + 1, "step": step, "config": cfg.to_dict(),
                    }, path)
            if info.main:
                for lg in loggers:
                    lg.log_record(record)
                log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%%%s  nonzero %d  lr %.4g  %.0f samples/s",
                         epoch + 1, cfg.train.epochs, record["train_loss"], 100 * record["train_acc"],
                         100 * record["test_acc"],
                         f" (top-5 {100 * record['test_acc5']:.2f}%)" if "test_acc5" in record else "",
                         record["nonzero_params"], record["lr"], record["samples_per_s"])
            if on_epoch_end is not None:
                on_epoch_end(record, path)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for lg in loggers:
            lg.close(status)
    return record
