"""The one object that owns the masks of a model's sparse tensors.

Invariants kept by :class:`Masking` (the tests check each one):

- the number of active (mask=True) weights over all sparse tensors is the
  budget fixed at construction, after every step and every reallocation;
- after :meth:`Masking.step` (or the optimizer hook) every inactive weight and
  every optimizer-state entry of it (momentum, Adam moments) is exactly zero;
- masks are keyed by the unwrapped model's parameter names, so checkpoints do
  not depend on DDP or ``torch.compile`` wrappers;
- all random choices come from ``self.generator`` (a CPU generator saved in
  :meth:`state_dict`), so every DDP rank seeded alike takes the same decision.

A method answers ``due(step, epoch)`` and ``reallocate(masking)``; it may also
define ``attach(masking)`` (called once here), ``before_optimizer_step(masking)``
(an optimizer pre-hook), ``after_step(masking)`` (every :meth:`Masking.step`)
and ``summarize(record, step)`` (to report a sum every N reallocations).
"""

from __future__ import annotations

import fnmatch
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .distribution import layer_counts


def default_sparse_names(model: nn.Module) -> list[str]:
    """Every conv and linear weight: a sensible rule for a model we do not know."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def select_names(model: nn.Module, include: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Parameter names matching any ``include`` pattern and no ``exclude`` one (fnmatch)."""
    include, exclude = list(include), list(exclude)
    return [n for n, _ in model.named_parameters()
            if any(fnmatch.fnmatchcase(n, p) for p in include)
            and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (accelerators run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Masking:
    """Masks for the sparse tensors of ``model`` plus the method that moves them.

    Args:
        model: the model (wrappers are unwrapped for naming).
        optimizer: whose state of inactive weights is kept at zero; may be None.
        sparsity: share of zeros over all sparse tensors at the start.
        method: a reallocator (see :mod:`dsr_tune.sparse.reallocators`); None keeps
            the masks fixed (static sparse).
        names: parameter names of the sparse tensors; default: every conv and
            linear weight.
        distribution: how the budget is spread at the start ("uniform", "erk").
        seed: seed of the generator behind every random choice.
        hook: register :meth:`step` as an optimizer step post-hook, so a plain
            ``optimizer.step()`` keeps the masks.
        steps_per_epoch: if given, the epoch is derived from the step count;
            otherwise call :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 sparsity: float, method: Any = None, names: Sequence[str] | None = None,
                 distribution: str = "uniform", seed: int = 0, hook: bool = False,
                 steps_per_epoch: int | None = None):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        model = unwrap(model)
        named = dict(model.named_parameters())
        names = list(names) if names is not None else default_sparse_names(model)
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(f"no such parameters: {missing}; the model has e.g. {list(named)[:5]}")
        if hook and optimizer is None:
            raise ValueError("hook=True needs the optimizer whose step() it hooks; got optimizer=None")
        if not names:
            raise ValueError("no sparse tensors: the name list is empty")
        self.params: dict[str, nn.Parameter] = {n: named[n] for n in names}
        self.optimizer = optimizer
        self.method = method
        self.steps_per_epoch = steps_per_epoch
        self.generator = torch.Generator().manual_seed(seed)
        self.global_step = 0
        self.epoch = 0
        self.masks: dict[str, torch.Tensor] = {}
        counts = layer_counts({n: p.shape for n, p in self.params.items()}, 1.0 - sparsity, distribution)
        for name, p in self.params.items():
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[torch.randperm(p.numel(), generator=self.generator)[: counts[name]]] = True
            self.masks[name] = flat.view_as(p).to(p.device)
        self.budget = sum(counts.values())
        self._active: dict[str, int] | None = dict(counts)  # cache of nonzero_counts(); None = stale
        self._multipliers: dict[str, torch.Tensor] = {}  # what apply() multiplies by; rebuilt when masks change
        # bumped whenever the masks may have changed: what derives from them (a FLOPs count) compares it
        self.version = 0
        self.realloc_seconds = 0.0  # wall time inside reallocate() in this process (not saved)
        self._hook = optimizer.register_step_post_hook(lambda *_: self.step()) if hook else None
        # reallocation records not yet taken by pop_events(); bounded for hook users who never take them
        self.events: deque[dict] = deque(maxlen=1000)
        self.inactive_zero = False  # see reallocate()
        self.apply()
        # a method may keep state tied to these tensors (DeepR's signs, SNFS's
        # momentum) and may need to act before every optimizer step (DeepR
        # cancels weight decay on the sparse tensors); that pre-hook is always
        # registered, whatever ``hook`` says, and is not removed by remove_hook()
        if hasattr(method, "attach"):
            method.attach(self)
        self._pre_hook = None
        if optimizer is not None and hasattr(method, "before_optimizer_step"):
            self._pre_hook = optimizer.register_step_pre_hook(lambda *_: self._before_optimizer_step())

    # ------------------------------------------------------------ every step

    @torch.no_grad()
    def apply(self) -> None:
        """Zero inactive weights and their optimizer state."""
        for name, p in self.params.items():
            mask = self._multiplier(name)
            p.mul_(mask)
            for buf in self._state_tensors(p):
                buf.mul_(mask)

    def _multiplier(self, name: str) -> torch.Tensor:
        """The mask as ``apply()`` multiplies by it, built once per mask change.

        On the CPU a multiply by a bool tensor is several times slower than by
        one of the weight's own dtype and memory format (channels_last
        included), so the mask is kept in that form too; on accelerators the
        bool mask itself moves fewer bytes.
        """
        mult = self._multipliers.get(name)
        if mult is None:
            p, mask = self.params[name], self.masks[name]
            mult = torch.empty_like(p).copy_(mask) if p.device.type == "cpu" else mask
            self._multipliers[name] = mult
        return mult

    def step(self) -> dict | None:
        """Call after every optimizer step: re-apply masks, run the method's
        per-step dynamics (if any), reallocate when due.

        Returns the reallocation record when one happened, else None.
        """
        self.apply()
        if self.method is not None and hasattr(self.method, "after_step"):
            self.method.after_step(self)  # DeepR's L1 + noise, SNFS's dense momentum
        self.global_step += 1
        if self.steps_per_epoch:  # the epoch of the step just taken: steps 1..N are epoch 0
            self.epoch = (self.global_step - 1) // self.steps_per_epoch
        if self.method is None or not self.method.due(self.global_step, self.epoch):
            return None
        event = self.reallocate(inactive_zero=True)  # apply() above zeroed every inactive position
        if hasattr(self.method, "summarize"):  # a method rewiring every step reports sums now and then
            event = self.method.summarize(event, self.global_step)
            if event is None:
                return None
        self.events.append(event)
        return event

    def _before_optimizer_step(self) -> None:
        if self.method is not None and hasattr(self.method, "before_optimizer_step"):
            self.method.before_optimizer_step(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def pop_events(self) -> list[dict]:
        events = list(self.events)
        self.events.clear()
        return events

    @torch.no_grad()
    def reallocate(self, *, inactive_zero: bool = False) -> dict:
        """Run the method's prune/grow once now; returns its record.

        ``inactive_zero=True`` promises that every inactive weight and its
        optimizer state are zero already (:meth:`step` has just applied the
        masks), so a method may skip zeroing the positions it grows into.
        """
        self.inactive_zero = inactive_zero
        device = next(iter(self.masks.values())).device
        _sync(device)  # the time is the reallocation's, not that of the step queued before it
        started = time.perf_counter()
        try:
            record = self.method.reallocate(self)
        finally:
            self.inactive_zero = False
        layers = record.get("layers")  # budget-changing schedules (GMP, DSD) report no per-layer counts
        self._multipliers.clear()
        self._active = {n: layer["nonzero"] for n, layer in layers.items()} if layers else None
        self.version += 1
        if not getattr(self.method, "zeroes_pruned", False):
            self.apply()
        _sync(device)
        seconds = time.perf_counter() - started
        self.realloc_seconds += seconds
        record.update(step=self.global_step, epoch=self.epoch, realloc_time=seconds)
        return record

    # ------------------------------------------------------------ helpers for methods

    def _state_tensors(self, p: torch.Tensor) -> list[torch.Tensor]:
        if self.optimizer is None:
            return []
        state = self.optimizer.state.get(p, {})
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == p.shape]

    @torch.no_grad()
    def zero_where(self, name: str, where: torch.Tensor) -> None:
        """Weights and optimizer state become exactly zero where the bool
        tensor ``where`` (the mask's shape) is True: one pass, no index list."""
        p = self.params[name]
        for t in (p, *self._state_tensors(p)):
            t.masked_fill_(where, 0)

    @torch.no_grad()
    def zero_at(self, name: str, flat_index: torch.Tensor) -> None:
        """Weights and optimizer state at these positions become exactly zero.

        ``flat_index`` counts in the logical (row-major) order of the masks; the
        weight may be stored channels_last, so it is indexed by coordinates.
        """
        p = self.params[name]
        where = None
        for t in (p, *self._state_tensors(p)):
            if t.is_contiguous():  # row-major like the mask: fill by flat index (fast)
                t.view(-1).index_fill_(0, flat_index, 0)
            else:
                where = torch.unravel_index(flat_index, p.shape) if where is None else where
                t[where] = 0

    # ------------------------------------------------------------ reporting

    def nonzero_counts(self) -> dict[str, int]:
        """Active weights per sparse tensor, counted from the masks."""
        counts = torch.stack([m.count_nonzero() for m in self.masks.values()]).tolist()  # much faster than bool sum() on CPU
        return dict(zip(self.masks, counts))

    def active_counts(self) -> dict[str, int]:
        """Like :meth:`nonzero_counts`, but kept up to date by reallocations
        instead of recounted (a device sync and a pass over every mask).
        Code that edits ``masks`` directly must call :meth:`masks_changed`."""
        if self._active is None:
            self._active = self.nonzero_counts()
        return dict(self._active)

    def masks_changed(self) -> None:
        """Drop what is derived from the masks (counts, multipliers): call after
        editing ``masks`` outside a reallocation."""
        self._active = None
        self._multipliers.clear()
        self.version += 1

    def densities(self) -> dict[str, float]:
        return {n: c / self.masks[n].numel() for n, c in self.nonzero_counts().items()}

    @property
    def sparse_numel(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def __repr__(self) -> str:
        return (f"Masking({len(self.masks)} tensors, budget={self.budget}/{self.sparse_numel}, "
                f"method={self.method!r})")

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "generator": self.generator.get_state(),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "budget": self.budget,
            "method": self.method.state_dict() if self.method is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["masks"]) != set(self.masks):
            raise KeyError(f"checkpoint masks {sorted(state['masks'])} do not match sparse tensors {sorted(self.masks)}")
        for name, mask in state["masks"].items():
            if mask.shape != self.masks[name].shape:
                raise ValueError(f"mask {name}: shape {tuple(mask.shape)} != {tuple(self.masks[name].shape)}")
            self.masks[name].copy_(mask)
        self.masks_changed()
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto a GPU moves it
        self.global_step = state["global_step"]
        self.epoch = state["epoch"]
        self.budget = state["budget"]
        if self.method is not None and state.get("method") is not None:
            self.method.load_state_dict(state["method"])
        self.apply()

    def remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
