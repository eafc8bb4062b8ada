"""The training recipe: set up, train, evaluate, checkpoint, resume.

Pure PyTorch. It runs in one process, under torchrun, or as the per-worker
function of Ray Train (see :mod:`dsr_tune.distributed`): when a process group
is initialised the model is wrapped in DDP and data is sharded per rank.
Only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import config as C
from ..baselines import setup as baselines
from ..data import DataBundle, build_data, resolved_comment
from ..models import count_params
from ..sparse import unwrap
from . import checkpoint as ckpt
from .metrics import JsonlLogger, MetricLogger, truncate_records
from .setup import (DistInfo, build_masking, build_optimizer, effective_lr, lr_factor, mask_fingerprint,
                    nonzero_params, pick_device)

log = logging.getLogger("dsr_tune")


# ---------------------------------------------------------------- the loop


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, precision: str, channels_last: bool, num_classes: int,
             prefix: str = "test_", to_device=None) -> dict:
    """Loss, top-1 and (with more than 5 classes) top-5, summed over ranks,
    as ``{prefix}loss`` etc.; ``to_device`` turns a batch into (x, y) on the
    device (DataBundle.to_device; default: a batch is (x, y))."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, top5
    n = 0
    for batch in loader:
        x, y = to_device(batch, device) if to_device else (t.to(device, non_blocking=True) for t in batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, reduction="sum")
        top = out.topk(min(5, num_classes), dim=1).indices
        sums += torch.stack([loss.double(), (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
        n += len(y)
    sums = torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64, device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    loss, top1, top5, n = sums.tolist()
    out = {f"{prefix}loss": loss / max(n, 1), f"{prefix}acc": top1 / max(n, 1)}
    if num_classes > 5:
        out[f"{prefix}acc5"] = top5 / max(n, 1)
    return out


def _progress(loader, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, file=sys.stderr)


def _optimizer_step(optimizer, scaler, loss) -> bool:
    """Backward and step; False when fp16's grad scaler skipped the step
    (inf/NaN gradients), so nothing else should act on this iteration."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if not scaler.is_enabled():
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped


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
    C.validate_paths(cfg)  # here, where training runs (a launching node may not hold the data)
    info = DistInfo.current()
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    # -- model, data, optimizer, masks: all seeded from train.seed (initial weights: train.init_seed if set)
    torch.manual_seed(cfg.train.seed)
    data: DataBundle = build_data(cfg.data, cfg.train.seed, info.rank, info.world_size,
                                  pin_memory=device.type == "cuda")
    if cfg.train.init_seed is not None:  # other initial weights, the same data order and masks
        torch.manual_seed(cfg.train.init_seed)
    # the registry model, or a thin dense / HashedNet one; initial values from init_from / dense_from
    model = baselines.build_run_model(cfg, data.num_classes, data.in_channels, resuming=bool(resume))
    init_state = {k: v.clone() for k, v in model.state_dict().items()}  # dense values before masking
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    lr = effective_lr(cfg.optim, cfg.data.batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # DSD's last phase runs at a fraction of the LR
        optimizer, lambda e: lr_factor(cfg.optim, e) * baselines.phase_lr_factor(cfg, e))
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise C.ConfigError("data.batch_size", f"{cfg.data.batch_size} is larger than the training set")
    masking = build_masking(cfg, model, optimizer, steps_per_epoch)
    baselines.load_masks_from(cfg, masking, init_state, resuming=bool(resume))  # mask_from: another run's masks
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    ddp_model = model
    if info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- run folder, resume
    start_epoch, step, metrics_path = 0, 0, out_dir / "metrics.jsonl"
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # data choices made from the files, as comments: the keys stay as given, so --resume compares equal
        (out_dir / "config.yaml").write_text(C.dump(cfg) + resolved_comment(data.resolved))  # data edit
    resume_path = (out_dir / ckpt.LATEST) if resume is True else (Path(resume) if resume else None)
    if resume_path is not None:
        state = ckpt.load(resume_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if masking is not None:
            masking.load_state_dict(state["masking"])
        start_epoch, step = state["epoch"], state["step"]
        if info.main and metrics_path.exists():
            truncate_records(metrics_path, start_epoch, state["step"])
        log.info("resumed from %s at epoch %d (step %d)", resume_path, start_epoch, state["step"])
    elif info.main:
        if metrics_path.exists():
            metrics_path.unlink()  # a fresh run owns its folder's records
        ckpt.atomic_save({"model": init_state, "masking": masking.state_dict() if masking else None}, out_dir / "init.pt")

    loggers = ([JsonlLogger(metrics_path)] + list(loggers)) if info.main else []
    for lg in loggers:
        lg.log_params(cfg.flat() | {f"resolved.data.{k}": v for k, v in data.resolved.items()})  # data edit
    total_params = count_params(model)
    if info.main:
        log.info("%s on %s: %d params dense, %s; %d steps/epoch, %d worker(s), lr %.4g",
                 cfg.model.name, device, total_params,
                 f"{masking.budget}/{masking.sparse_numel} sparse weights active ({cfg.sparsity.method})" if masking else "dense",
                 steps_per_epoch, info.world_size, lr)

    show_bar = info.main and (sys.stderr.isatty() if progress is None else progress)
    record: dict = {}
    status = "FAILED"
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            data.set_epoch(epoch, cfg.train.seed)
            # augmentation and loader-process seeds: a function of (seed, epoch, rank) alone
            torch.manual_seed((cfg.train.seed * 1_000_003 + epoch) * 1_009 + info.rank)
            if masking is not None:
                masking.set_epoch(epoch)
            ddp_model.train()
            epoch_lr = optimizer.param_groups[0]["lr"]
            t0, seen = time.perf_counter(), 0
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.float64, device=device)
            for batch in _progress(data.train, epoch, cfg.train.epochs, show_bar):
                x, y = data.to_device(batch, device)  # data edit: decode=gpu decodes and augments here
                if cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device, cfg.train.precision):
                    out = ddp_model(x)
                    loss = F.cross_entropy(out.float(), y)
                stepped = _optimizer_step(optimizer, scaler, loss)
                step += 1
                if masking is not None and stepped:
                    masking.step()
                    for event in masking.pop_events():
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
                # the unwrapped model: DDP's forward would add a collective per batch; sums are reduced anyway
                # -- data edit: validation (selection) and test (reported) splits, files dropped as undecodable
                **(evaluate(model, data.val, device, cfg.train.precision, cfg.train.channels_last, data.num_classes,
                            "val_", data.to_device) if data.val is not None else {}),
                **evaluate(model, data.test, device, cfg.train.precision, cfg.train.channels_last, data.num_classes,
                           "test_", data.to_device),
                "bad_images": data.pop_bad_images(device),
                # -- end data edit
                "nonzero_params": nonzero_params(model, masking), "total_params": total_params,
                "lr": epoch_lr,
                "samples_per_s": n / train_time, "epoch_time": time.perf_counter() - t0,
            }
            if masking is not None:
                active = masking.active_counts()
                record["density"] = {k: round(c / masking.masks[k].numel(), 6) for k, c in active.items()}
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
