"""What to prune. A pruner returns, per sparse tensor, the positions it removes.

DSR: a global threshold (:class:`ThresholdPrune`); SET, RigL, SNFS: a
per-tensor fraction of the smallest magnitudes (:class:`MagnitudeFractionPrune`);
DeepR: sign flips (:class:`SignFlipPrune`). The reallocator passes every
result through :func:`keep_one` (unless told ``never_empty=False``: DeepR
regrows in the same tensor, so an instant with no survivor is harmless).
"""

from __future__ import annotations

import torch

from .state import PER_TENSOR, saved_state


def keep_one(weight: torch.Tensor, mask: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """If ``pruned`` would remove every active weight, spare the largest one."""
    if bool((mask & ~pruned).any()) or not bool(mask.any()):
        return pruned
    score = weight.abs().masked_fill(~mask, -1.0)
    pruned = pruned.clone(memory_format=torch.contiguous_format)
    pruned.view(-1)[score.reshape(-1).argmax()] = False  # reshape: the weight may be channels_last
    return pruned


class ThresholdPrune:
    """DSR's pruning: remove active weights with |w| < H, one comparison each.

    H is global (one number for every tensor) and adapts after each
    reallocation against the target ``target_pruned`` (Np) with tolerance
    ``delta``: K > (1+delta) Np halves it (by ``factor``), K < (1-delta) Np
    doubles it, otherwise it stays.
    """

    def __init__(self, init_threshold: float = 1e-3, target_pruned: int = 20000,
                 delta: float = 0.1, factor: float = 2.0):
        self.threshold = float(init_threshold)
        self.target_pruned = int(target_pruned)
        self.delta = float(delta)
        self.factor = float(factor)

    def __call__(self, masking) -> dict[str, torch.Tensor]:
        # one pass: |w| < H, then restricted to the active positions in place
        return {name: torch.lt(p.detach().abs(), self.threshold).logical_and_(masking.masks[name])
                for name, p in masking.params.items()}

    def adjust(self, total_pruned: int) -> None:
        if total_pruned > (1 + self.delta) * self.target_pruned:
            self.threshold /= self.factor
        elif total_pruned < (1 - self.delta) * self.target_pruned:
            self.threshold *= self.factor

    def record(self) -> dict:
        return {"threshold": self.threshold}

    state_dict, load_state_dict = saved_state(threshold=float)

    def __repr__(self) -> str:
        return f"ThresholdPrune(H={self.threshold:g}, Np={self.target_pruned}, delta={self.delta})"


# ---------------------------------------------------------------- per-tensor fraction (SET, RigL, SNFS)


def drop_count(active: int, fraction: float) -> int:
    """Weights a tensor with ``active`` weights drops at ``fraction`` (nearest integer)."""
    return min(active, int(round(fraction * active)))


def set_fraction(target_pruned: int, budget: int) -> float:
    """SET's fraction chosen so one reallocation moves as many weights as DSR's Np.

    ``f = Np / budget``: WRN-28-2 at sparsity 0.9 has a budget of 145,155
    sparse weights, so Np = 20,000 gives f = 0.1378 (the paper's 0.138).
    """
    if budget <= 0 or not 0 < target_pruned <= budget:
        raise ValueError(f"target_pruned={target_pruned} must be in [1, budget={budget}]")
    return target_pruned / budget


class MagnitudeFractionPrune:
    """Every tensor drops its ``drop_count(active, f)`` smallest-magnitude active weights.

    ``fraction`` is a number, or a callable ``(step, epoch) -> f`` (e.g.
    :class:`~dsr_tune.sparse.schedule.CosineDecay`), or None with
    ``target_pruned`` set: then f = Np / budget (:func:`set_fraction`) is fixed
    when the masking attaches. Needs a top-k per tensor (SET-style), unlike
    DSR's single comparison.
    """

    def __init__(self, fraction=None, target_pruned: int | None = None):
        if fraction is None and target_pruned is None:
            raise ValueError("give a fraction or a target_pruned to derive it from")
        if isinstance(fraction, (int, float)) and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.target_pruned = target_pruned
        self.last_fraction: float | None = None

    def attach(self, masking) -> None:
        if self.fraction is None:
            self.fraction = set_fraction(self.target_pruned, masking.budget)

    def current(self, step: int, epoch: int) -> float:
        return float(self.fraction(step, epoch) if callable(self.fraction) else self.fraction)

    def __call__(self, masking) -> dict[str, torch.Tensor]:
        f = self.last_fraction = self.current(masking.global_step, masking.epoch)
        names = list(masking.masks)
        active = masking.active_counts()
        out = {}
        for name in names:
            a = active[name]
            p, mask = masking.params[name], masking.masks[name]
            pruned = torch.zeros_like(mask)
            k = drop_count(a, f)
            if k:
                score = p.detach().abs().masked_fill(~mask, float("inf")).reshape(-1)  # logical order
                pruned.view(-1)[torch.topk(score, k, largest=False).indices] = True
            out[name] = pruned
        return out

    def record(self) -> dict:
        return {"drop_fraction": self.last_fraction}

    def __repr__(self) -> str:
        f = self.fraction if self.fraction is not None else f"Np={self.target_pruned}/budget"
        return f"MagnitudeFractionPrune({f})"


# ---------------------------------------------------------------- sign flip (DeepR)


class SignFlipPrune:
    """DeepR: an active weight whose sign differs from its connection's sign is removed.

    Every position has a fixed sign (Bellec et al.: w = s * theta, theta >= 0):
    the initial weight's sign where active, a random one elsewhere, drawn from
    the masking's generator when it attaches and kept for the whole run (a
    reactivated connection starts at zero with its stored sign). A weight at
    exactly zero is not flipped. Signs are part of the state.
    """

    def __init__(self):
        self.positive: dict[str, torch.Tensor] = {}

    def attach(self, masking) -> None:
        for name, p in masking.params.items():
            w = p.detach().cpu()
            coin = torch.rand(w.shape, generator=masking.generator) < 0.5
            self.positive[name] = torch.where(w != 0, w > 0, coin).to(p.device)

    def flipped(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        pos = self.positive[name]
        return (pos & (weight < 0)) | (~pos & (weight > 0))

    def __call__(self, masking) -> dict[str, torch.Tensor]:
        return {n: masking.masks[n] & self.flipped(n, p.detach()) for n, p in masking.params.items()}

    state_dict, load_state_dict = saved_state(positive=PER_TENSOR)

    def __repr__(self) -> str:
        return "SignFlipPrune()"
