"""What a method does at every training step, besides the mask update.

A dynamics part plugs into a :class:`~dsr_tune.sparse.reallocators.Reallocator`
and may define any of:

- ``attach(masking)``: once, when the masking is built;
- ``before_optimizer_step(masking)``: an optimizer step pre-hook (gradients
  are final, the weights not yet updated);
- ``after_step(masking)``: from :meth:`Masking.step`, after the masks are
  re-applied and before a reallocation that is due.

Random draws come from ``masking.generator`` only, so DDP ranks seeded alike
stay identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .schedule import EpochTable
from .state import PER_TENSOR, saved_state

DEEPR_TEMPERATURES = ((0, 1e-5), (25, 1e-8), (80, 1e-12), (140, 1e-15))


def _decoupled(optimizer, group: dict) -> bool:
    return bool(group.get("decoupled_weight_decay")) or isinstance(optimizer, torch.optim.AdamW)


class DeepRDynamics:
    """Deep R's Langevin step on the active weights (Bellec et al. 2018).

    After every optimizer step each active weight moves by
    ``-eta * l1 * sign(w) + sqrt(2 * eta * T) * N(0, 1)``: the L1 penalty and
    the noise of the paper, applied directly (not through the momentum).
    ``eta`` is ``lr`` if given, else the current LR of the weight's optimizer
    group (so it follows the LR schedule); ``T`` comes from an epoch table.
    ``noise_eta``, when given, replaces eta in the noise term only (the DSR
    paper's setting, eta = 0.01, beside an L1 step at the LR).
    A weight pushed across zero is then removed by
    :class:`~dsr_tune.sparse.prune.SignFlipPrune` in the same step.

    Weight decay is turned off on the sparse tensors: before each optimizer
    step ``wd * w`` is subtracted from their gradient, which the optimizer's
    coupled (L2) decay adds back, so the net decay is zero while the dense
    layers keep theirs. Decoupled decay (AdamW) cannot be cancelled this way
    and is refused.

    Noise cost: on CPU one ``randn`` over every sparse weight per step from
    the masking's generator. On an accelerator one 62-bit seed is drawn from
    that (CPU) generator per tensor and step and seeds a generator on the
    device, so the noise is made where it is used with no host-to-device copy
    and is still identical on every rank.
    """

    def __init__(self, temperatures: Sequence[Sequence[float]] = DEEPR_TEMPERATURES, l1: float = 1e-5,
                 lr: float | None = None, noise_eta: float | None = None):
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        if noise_eta is not None and noise_eta <= 0:
            raise ValueError(f"noise_eta must be > 0, got {noise_eta}")
        self.temperature = EpochTable(temperatures)
        self.l1 = float(l1)
        self.lr = lr
        self.noise_eta = noise_eta
        self._device_generators: dict[torch.device, torch.Generator] = {}

    def attach(self, masking) -> None:
        opt = masking.optimizer
        if opt is None:
            if self.lr is None:
                raise ValueError("DeepR without an optimizer needs an explicit lr")
            return
        sparse = {id(p) for p in masking.params.values()}
        for group in opt.param_groups:
            if group.get("weight_decay") and _decoupled(opt, group) and any(id(p) in sparse for p in group["params"]):
                raise ValueError("DeepR turns weight decay off on sparse tensors and cannot cancel decoupled "
                                 "decay (AdamW): put them in a parameter group with weight_decay=0")

    @torch.no_grad()
    def before_optimizer_step(self, masking) -> None:
        opt = masking.optimizer
        sparse = {id(p) for p in masking.params.values()}
        for group in opt.param_groups:
            wd = group.get("weight_decay", 0.0)
            if not wd:
                continue
            for p in group["params"]:
                if id(p) in sparse and p.grad is not None:
                    p.grad.sub_(p, alpha=wd)  # the optimizer adds wd * p back: net decay zero

    def _lrs(self, masking) -> dict[str, float]:
        if self.lr is not None:
            return {n: float(self.lr) for n in masking.params}
        by_id = {id(p): float(g["lr"]) for g in masking.optimizer.param_groups for p in g["params"]}
        return {n: by_id.get(id(p), 0.0) for n, p in masking.params.items()}

    def _noise(self, p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if p.device.type == "cpu":
            return torch.randn(p.shape, generator=generator, dtype=p.dtype)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        gen = self._device_generators.get(p.device)
        if gen is None:
            gen = self._device_generators[p.device] = torch.Generator(device=p.device)
        gen.manual_seed(seed)
        return torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def after_step(self, masking) -> None:
        temperature = self.temperature(masking.epoch)
        for name, lr in self._lrs(masking).items():
            p, mask = masking.params[name], masking.masks[name]
            if self.l1:
                p.sub_(p.sign(), alpha=lr * self.l1)  # inactive weights are 0: sign 0, unchanged
            std = math.sqrt(2.0 * (lr if self.noise_eta is None else self.noise_eta) * temperature)
            if std > 0:
                p.addcmul_(self._noise(p, masking.generator), mask, value=std)

    def record(self, masking) -> dict:
        return {"temperature": self.temperature(masking.epoch)}

    def __repr__(self) -> str:
        eta = "" if self.noise_eta is None else f", noise_eta={self.noise_eta:g}"
        return f"DeepRDynamics(T={self.temperature.pairs}, l1={self.l1:g}, lr={self.lr or 'optimizer'}{eta})"


class DenseMomentum:
    """SNFS's signal: a momentum of the dense gradient, ``m = beta * m + g``.

    The optimizer's own momentum cannot serve: the masking keeps it at zero
    on inactive weights, and those are where SNFS must look to grow. This
    buffer (one dense tensor per sparse weight, saved in the state) sees the
    gradient of every position. Non-finite gradients (a skipped fp16 step)
    count as zero.
    """

    def __init__(self, beta: float = 0.9):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.buffers: dict[str, torch.Tensor] = {}

    def attach(self, masking) -> None:
        self.buffers = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for n, p in masking.params.items()}

    @torch.no_grad()
    def after_step(self, masking) -> None:
        for name, p in masking.params.items():
            if p.grad is not None:
                self.buffers[name].mul_(self.beta).add_(torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0))

    def momentum(self, name: str) -> torch.Tensor:
        return self.buffers[name]

    @torch.no_grad()
    def mean_active(self, masking) -> dict[str, float]:
        """Mean |m| over each tensor's active weights (SNFS's redistribution score)."""
        names = list(masking.masks)
        means = torch.stack([(self.buffers[n].abs() * masking.masks[n]).sum() / masking.masks[n].sum().clamp(min=1)
                             for n in names])
        return dict(zip(names, means.tolist()))

    state_dict, load_state_dict = saved_state(buffers=PER_TENSOR)

    def __repr__(self) -> str:
        return f"DenseMomentum(beta={self.beta})"
