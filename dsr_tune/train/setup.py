"""Setting a run up: device, model, data, optimizer, LR schedule, masks, resume.

:func:`setup` turns a config and a run folder into a :class:`Run`, the state
the recipe's loop works on. Everything is seeded from ``train.seed`` (the
initial weights from ``train.init_seed`` when set); the method's hooks
(:mod:`dsr_tune.methods`) decide the architecture, the starting values, the
masking and any LR factor of its own.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import checkpoint as ckpt
from .. import config as C
from .. import methods, runfolder
from ..data import DataBundle, build_data
from ..models import build_model, count_params
from ..sparse import Masking
from .flops import FlopCounter, dense_flops, device_name, layer_costs

log = logging.getLogger("dsr_tune.train")


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


@dataclass
class Run:
    """What the loop needs. ``model`` is the plain module (masks, checkpoints,
    evaluation); ``forward`` what the training step calls (DDP and/or compiled)."""

    cfg: C.Config
    out_dir: Path
    info: DistInfo
    device: torch.device
    data: DataBundle
    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    masking: Masking | None
    init_state: dict
    lr: float
    start_epoch: int = 0
    step: int = 0
    records: list[dict] = field(default_factory=list)  # every record so far (the checkpoint carries them)
    flops: FlopCounter | None = None  # the run's FLOPs and reallocation time (see .flops)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's CUDA device if any, else MPS, else CPU.

    Under torchrun or Ray Train every process on a node may see all the
    node's GPUs; ``LOCAL_RANK`` says which one is this process's.
    """
    if name == "auto":
        if torch.cuda.is_available():
            local = os.environ.get("LOCAL_RANK")
            index = int(local) % torch.cuda.device_count() if local is not None else torch.cuda.current_device()
            return torch.device("cuda", index)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise C.ConfigError("train.device", f"{name!r} but CUDA is not available here; use train.device=auto")
        if device.index is None:  # DDP needs an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
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
    """SGD (Nesterov by default). Weight decay reaches every parameter, as in
    the paper's code, unless ``optim.decay_norm_and_bias`` is false, which
    spares the 1-d tensors (batch-norm scales and shifts, biases)."""
    if cfg.decay_norm_and_bias:
        groups = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    else:
        groups = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def build_run_model(cfg: C.Config, num_classes: int, in_channels: int, *, resuming: bool = False) -> nn.Module:
    """The method's architecture with fresh values, then the starting values the
    config asks for (``sparsity.init_from``: a run's initial weights; the
    method's own, e.g. GMP's dense model). When ``resuming``, the run's own
    checkpoint replaces every value next, so those files are not read."""
    method = methods.get(cfg.sparsity.method)
    m = cfg.model
    if method.model is not None:
        model = method.model(cfg, num_classes, in_channels)
    else:
        model = build_model(m.name, width=m.width, depth=m.depth, num_classes=num_classes, in_channels=in_channels)
    if resuming:
        return model
    if cfg.sparsity.init_from:
        path = runfolder.run_file(cfg.sparsity.init_from, runfolder.INIT)
        ckpt.load_weights(model, path, "sparsity.init_from", part="model")
        log.info("initial weights from %s", path)
    if method.start is not None:
        method.start(cfg, model)
    return model


def build_masking(cfg: C.Config, model: nn.Module, optimizer, steps_per_epoch: int) -> Masking | None:
    """The run's masks: the method's own masking, else a masking over the model's
    sparse tensors with the method's reallocator (none: static)."""
    method = methods.get(cfg.sparsity.method)
    if method.masking is not None:
        return method.masking(cfg, model, optimizer, steps_per_epoch)
    realloc = method.reallocator(cfg, steps_per_epoch) if method.reallocator else None
    return methods.registry.sparse_masking(cfg, model, optimizer, realloc)


@torch.no_grad()
def load_masks_from(cfg: C.Config, masking: Masking | None, init_state: dict[str, torch.Tensor]) -> None:
    """``sparsity.mask_from``: the masks of that run's final checkpoint replace
    the random ones (the budget becomes theirs). The masking has zeroed what
    lies outside its own random masks, so the sparse tensors are first restored
    from ``init_state`` (the dense starting values): every active weight then
    starts from its initial value, none from zero."""
    src = cfg.sparsity.mask_from
    if not src:
        return
    if masking is None:
        raise C.ConfigError("sparsity.mask_from", f"method {cfg.sparsity.method!r} has no masks to take")
    path = runfolder.run_file(src, runfolder.CHECKPOINT)
    state = ckpt.load(path, key="sparsity.mask_from").get("masking")
    if not state:
        raise C.ConfigError("sparsity.mask_from", f"{str(path)!r} holds no masks (a dense run?)")
    masks = state["masks"]
    if set(masks) != set(masking.masks) or any(masks[n].shape != masking.masks[n].shape for n in masks):
        raise C.ConfigError("sparsity.mask_from", f"the masks in {str(path)!r} do not fit this model's sparse "
                                                  "tensors; the model section must match that run's")
    for name, mask in masks.items():
        masking.masks[name].copy_(mask)
        masking.params[name].copy_(init_state[name])
    masking.masks_changed()
    masking.budget = sum(masking.active_counts().values())
    masking.apply()
    log.info("masks from %s: %d active sparse weights", path, masking.budget)


def nonzero_params(model: nn.Module, masking: Masking | None) -> int:
    """Parameters the model really has: dense ones plus the active sparse ones."""
    total = count_params(model)
    if masking is None:
        return total
    return total - masking.sparse_numel + sum(masking.active_counts().values())


def _wrap(cfg: C.Config, model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """What the training step calls: DDP across ranks, compiled when asked.
    Masks and checkpoints keep working on the plain module, whose parameters
    DDP and torch.compile share."""
    forward = model
    if info.world_size > 1:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    if cfg.train.compile:
        forward = torch.compile(forward, backend=cfg.train.compile_backend)
    return forward


def setup(cfg: C.Config, out_dir: Path, resume: bool | str | Path) -> Run:
    """Everything the loop needs, freshly seeded; the resume itself is the recipe's."""
    info = DistInfo.current()
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    data = build_data(cfg.data, cfg.train.seed, info.rank, info.world_size, pin_memory=device.type == "cuda",
                      device=device)
    if len(data.train) == 0:
        raise C.ConfigError("data.batch_size", f"{cfg.data.batch_size} is larger than the training set")
    if cfg.train.init_seed is not None:  # other initial weights, the same data order and masks
        torch.manual_seed(cfg.train.init_seed)
    model = build_run_model(cfg, data.num_classes, data.in_channels, resuming=bool(resume))
    init_state = {k: v.clone() for k, v in model.state_dict().items()}  # dense values before masking
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    lr = effective_lr(cfg.optim, cfg.data.batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    method = methods.get(cfg.sparsity.method)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg.optim, e) * (
        method.lr_factor(cfg, e) if method.lr_factor else 1.0))
    masking = build_masking(cfg, model, optimizer, len(data.train))
    if not resume:
        load_masks_from(cfg, masking, init_state)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    size = data.resolved["image_size"]
    flops = FlopCounter(layer_costs(model, (1, data.in_channels, size, size)), masking, method.dense_grad,
                        device_name(device, info.world_size),
                        dense=dense_flops(cfg, data.num_classes, data.in_channels, size))
    return Run(cfg=cfg, out_dir=out_dir, info=info, device=device, data=data, model=model,
               forward=_wrap(cfg, model, device, info), optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               masking=masking, init_state=init_state, lr=lr, flops=flops)
