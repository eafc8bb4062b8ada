"""What to prune. A pruner returns, per sparse tensor, the positions it removes.

The reallocator passes every result through :func:`keep_one`, so no pruner can
empty a tensor.
"""

from __future__ import annotations

import torch


def keep_one(weight: torch.Tensor, mask: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """If ``pruned`` would remove every active weight, spare the largest one."""
    if bool((mask & ~pruned).any()) or not bool(mask.any()):
        return pruned
    score = weight.abs().masked_fill(~mask, -1.0)
    pruned = pruned.clone()
    pruned.view(-1)[score.view(-1).argmax()] = False
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
        out = {}
        for name, p in masking.params.items():
            mask = masking.masks[name]
            out[name] = mask & (p.abs() < self.threshold)
        return out

    def adjust(self, total_pruned: int) -> None:
        if total_pruned > (1 + self.delta) * self.target_pruned:
            self.threshold /= self.factor
        elif total_pruned < (1 - self.delta) * self.target_pruned:
            self.threshold *= self.factor

    def record(self) -> dict:
        return {"threshold": self.threshold}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])

    def __repr__(self) -> str:
        return f"ThresholdPrune(H={self.threshold:g}, Np={self.target_pruned}, delta={self.delta})"
