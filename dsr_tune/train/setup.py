"""The pieces the training recipe is set up from: device, LR rule, optimizer,
masking, and the numbers reported about them."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .. import config as C
from ..baselines import setup as baselines
from ..models import count_params, sparse_names
from ..sparse import Masking, build_method


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
            raise RuntimeError(f"train.device={name!r} but CUDA is not available here; use train.device=auto")
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


def sparse_method(cfg: C.Config, steps_per_epoch: int):
    """The reallocation method of ``sparsity.method`` (None for static).

    RigL's and SNFS's cosine drop fraction reaches 0 at stop_epoch, when
    reallocation ends (not at train.epochs, so a run extended on resume
    continues exactly). DeepR rewires every step, so its records are summed
    into one per epoch.
    """
    s = cfg.sparsity
    timing = dict(periods=s.period_schedule, stop_epoch=s.stop_epoch, period_scale=s.period_scale)
    if s.method == "static":
        return None
    if s.method == "dsr":
        return build_method("dsr", **timing, init_threshold=s.init_threshold, target_pruned=s.target_pruned,
                            delta=s.delta, factor=s.threshold_factor)
    if s.method == "set":  # fraction None: f = Np / budget, as many moved as DSR's target
        return build_method("set", **timing, fraction=s.set_fraction or None, target_pruned=s.target_pruned)
    if s.method == "deepr":
        return build_method("deepr", temperatures=s.deepr_temperatures, l1=s.deepr_l1, report_every=steps_per_epoch)
    drop = dict(drop_fraction=s.drop_fraction, end_step=s.stop_epoch * steps_per_epoch, decay=s.drop_decay)
    if s.method == "snfs":
        return build_method("snfs", **timing, **drop, momentum=cfg.optim.momentum)
    return build_method(s.method, **timing, **drop)


def build_masking(cfg: C.Config, model: nn.Module, optimizer, steps_per_epoch: int) -> Masking | None:
    """The masks of the run (None for dense models): the model's sparse rule
    (or the user's patterns), the method, the initial distribution."""
    s = cfg.sparsity
    if s.method in baselines.OWN_METHODS:  # thin dense, HashedNet (no masks), GMP, DSD
        return baselines.baseline_masking(cfg, model, optimizer)
    if s.method == "dense":
        return None
    names = sparse_names(cfg.model.name, model, cfg.model.sparse_layers, cfg.model.dense_layers)
    if not names:
        raise C.ConfigError("model.sparse_layers", f"{cfg.model.sparse_layers!r} matches no parameter of {cfg.model.name}")
    method = sparse_method(cfg, steps_per_epoch)
    try:
        return Masking(model, optimizer, sparsity=s.sparsity, method=method, names=names,
                       distribution=s.distribution, seed=cfg.train.seed)
    except ValueError as exc:
        if "target_pruned" in str(exc):  # SET's f = Np / budget above 1
            raise C.ConfigError("sparsity.target_pruned", f"{exc}; lower it or set sparsity.set_fraction") from None
        raise


def nonzero_params(model: nn.Module, masking: Masking | None) -> int:
    """Parameters the model really has: dense ones plus the active sparse ones."""
    total = count_params(model)
    if masking is None:
        return total
    return total - masking.sparse_numel + sum(masking.active_counts().values())


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


def _without_per_weight(obj):
    """A method state minus its per-weight tensors (DeepR's signs, SNFS's
    dense momentum): the scalars and counters that decide reallocations."""
    if isinstance(obj, dict):
        return {k: _without_per_weight(v) for k, v in obj.items() if not _per_weight(v)}
    return obj


def _per_weight(v) -> bool:
    if torch.is_tensor(v):
        return v.numel() > 64
    return isinstance(v, dict) and any(torch.is_tensor(t) and t.numel() > 64 for t in v.values())


def mask_fingerprint(masking: Masking) -> str:
    """A short digest of the masks, the generator and the method's scalar state.

    Equal on every DDP rank when all ranks took the same reallocation
    decisions; logged per epoch so that can be checked. Per-weight method
    state follows from the rest, and hashing it would copy every weight to
    the host each epoch.
    """
    h = hashlib.sha256()
    state = masking.state_dict()
    _feed(h, {"masks": state["masks"], "generator": state["generator"],
              "method": _without_per_weight(state["method"])})
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
