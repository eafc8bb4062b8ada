"""One epoch of training, evaluation, and the epoch's record."""

from __future__ import annotations

import contextlib
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..records import EPOCH, REALLOC, EpochRecord
from .fingerprint import mask_fingerprint
from .setup import Run, nonzero_params


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _to_device(run: Run, batch):
    x, y = run.data.to_device(batch, run.device)
    if run.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


@torch.no_grad()
def evaluate(run: Run, loader, prefix: str = "test") -> dict:
    """``<prefix>_loss``, ``_acc``, (more than 5 classes) ``_acc5`` and the
    images counted, ``_n``, over ``loader``, summed over ranks. Runs the plain
    module: DDP's forward would add a collective per batch, and the sums are
    reduced anyway."""
    model, device = run.model, run.device
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, top5
    n = 0
    for batch in loader:
        x, y = _to_device(run, batch)
        with autocast(device, run.cfg.train.precision):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, reduction="sum")
        top = out.topk(min(5, run.data.num_classes), dim=1).indices
        sums += torch.stack([loss.double(), (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
        n += len(y)
    sums = torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64, device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    loss, top1, top5, n = sums.tolist()
    out = {f"{prefix}_loss": loss / max(n, 1), f"{prefix}_acc": top1 / max(n, 1), f"{prefix}_n": int(n)}
    if run.data.num_classes > 5:
        out[f"{prefix}_acc5"] = top5 / max(n, 1)
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


def train_epoch(run: Run, epoch: int, on_realloc, show_bar: bool) -> dict:
    """One pass over the training data; the masks are re-applied after every
    step and reallocated when due (each reallocation record goes to
    ``on_realloc``). Returns loss, accuracy and throughput over all ranks."""
    cfg, device = run.cfg, run.device
    run.data.set_epoch(epoch, cfg.train.seed)
    # augmentation and loader-process seeds: a function of (seed, epoch, rank) alone
    torch.manual_seed((cfg.train.seed * 1_000_003 + epoch) * 1_009 + run.info.rank)
    if run.masking is not None:
        run.masking.set_epoch(epoch)
    run.forward.train()
    t0, seen = time.perf_counter(), 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    for batch in _progress(run.data.train, epoch, cfg.train.epochs, show_bar):
        x, y = _to_device(run, batch)
        with autocast(device, cfg.train.precision):
            out = run.forward(x)
            loss = F.cross_entropy(out.float(), y)
        stepped = _optimizer_step(run.optimizer, run.scaler, loss)
        run.step += 1
        if run.masking is not None and stepped:
            run.masking.step()
            for event in run.masking.pop_events():
                on_realloc({"kind": REALLOC, **event})
        run.flops.charge(len(y))  # at the masks this step trained with (a skipped fp16 step computed too)
        loss_sum += loss.detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    train_time = time.perf_counter() - t0
    stats = torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if run.info.world_size > 1:
        dist.all_reduce(stats)
    loss_tot, correct_tot, n = stats.tolist()
    return {"train_loss": loss_tot / n, "train_acc": correct_tot / n, "samples_per_s": n / train_time}


def epoch_record(run: Run, epoch: int, trained: dict, epoch_lr: float, started: float) -> EpochRecord:
    """The epoch's record: training stats, validation and test metrics, the
    budget, the cost so far (FLOPs, time, device), per-tensor densities and
    the mask digest (equal on every rank)."""
    record: EpochRecord = {"kind": EPOCH, "epoch": epoch, "step": run.step, **trained}
    if run.data.val is not None:
        record.update(evaluate(run, run.data.val, "val"))
    record.update(evaluate(run, run.data.test, "test"))
    record["bad_images"] = run.data.pop_bad_images(run.device)  # files dropped as undecodable (skip_bad_images)
    record.update({"nonzero_params": nonzero_params(run.model, run.masking), "total_params": _count(run.model),
                   "lr": epoch_lr, "epoch_time": time.perf_counter() - started})
    record.update(run.flops.epoch_fields(run.records, record["epoch_time"], run.device))
    masking = run.masking
    if masking is not None:
        active = masking.active_counts()
        record["density"] = {k: round(c / masking.masks[k].numel(), 6) for k, c in active.items()}
        record["mask_hash"] = mask_fingerprint(masking)
    return record


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
