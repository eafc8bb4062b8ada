"""Reallocation methods as compositions of small parts.

A :class:`Reallocator` is four choices: *when* (a schedule), *what to prune*
(a pruner), *how many to grow per tensor* (an allocator) and *where to grow*
(a grower). DSR and its relatives differ only in those choices; the loop that
runs them is written once, here.
"""

from __future__ import annotations

import torch

from .grow import ProportionalToSurvivors, RandomGrowth
from .prune import ThresholdPrune, keep_one
from .schedule import PeriodSchedule


class Reallocator:
    """Prune then regrow the same number of weights, keeping the budget exact.

    One reallocation:
      1. the pruner marks positions to remove in each tensor (never all of
         them: :func:`keep_one`); K_i removed, R_i survive;
      2. the allocator turns (K_i, R_i, room) into grow counts summing to K;
      3. the grower picks the positions among the inactive ones, excluding the
         ones just pruned (unless a tensor has no other room);
      4. the pruner adapts (DSR's threshold) to the total K.
    """

    def __init__(self, schedule, pruner, allocator, grower, name: str = "custom"):
        self.schedule, self.pruner, self.allocator, self.grower = schedule, pruner, allocator, grower
        self.name = name

    def due(self, step: int, epoch: int) -> bool:
        return self.schedule.due(step, epoch)

    @torch.no_grad()
    def reallocate(self, masking) -> dict:
        before = self.pruner.record() if hasattr(self.pruner, "record") else {}
        names = list(masking.masks)
        pruned = self.pruner(masking)
        # one device->host transfer for all counts
        stats = torch.stack([torch.stack([masking.masks[n].sum(), (masking.masks[n] & ~pruned[n]).sum()])
                             for n in names]).tolist()
        active = {n: a for n, (a, _) in zip(names, stats)}
        survivors = {n: s for n, (_, s) in zip(names, stats)}
        for n in names:
            if survivors[n] == 0 and active[n] > 0:
                pruned[n] = keep_one(masking.params[n], masking.masks[n], pruned[n])
                survivors[n] = 1
        k = {n: active[n] - survivors[n] for n in names}
        numel = {n: masking.masks[n].numel() for n in names}
        room = {n: numel[n] - survivors[n] - k[n] for n in names}
        total = sum(k.values())
        # a tensor may go back into positions it just pruned only if the
        # others have no room at all (possible only above density 0.5)
        capacity = room if sum(room.values()) >= total else {n: numel[n] - survivors[n] for n in names}
        grow = self.allocator(k, survivors, capacity, masking)
        layers = {}
        for n in names:
            mask = masking.masks[n]
            mask &= ~pruned[n]
            free = ~mask & ~pruned[n] if capacity is room else ~mask
            idx = self.grower(n, free, grow[n], capacity[n], masking)
            masking.zero_at(n, idx)
            mask.view(-1)[idx] = True
            layers[n] = {"pruned": k[n], "grown": grow[n], "nonzero": survivors[n] + grow[n]}
        record = {"pruned": total, "grown": sum(grow.values()), **before, "layers": layers}
        if hasattr(self.pruner, "adjust"):
            self.pruner.adjust(total)
            record.update({f"next_{key}": v for key, v in self.pruner.record().items()})
        return record

    def state_dict(self) -> dict:
        return {part: obj.state_dict() for part, obj in self._parts().items() if hasattr(obj, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for part, obj in self._parts().items():
            if part in state:
                obj.load_state_dict(state[part])

    def _parts(self) -> dict:
        return {"schedule": self.schedule, "pruner": self.pruner, "allocator": self.allocator, "grower": self.grower}

    def __repr__(self) -> str:
        return f"{self.name}({self.schedule}, {self.pruner}, {self.allocator}, {self.grower})"


def dsr(periods=((0, 100), (25, 200), (80, 400), (140, 800)), stop_epoch: int | None = 190,
        init_threshold: float = 1e-3, target_pruned: int = 20000, delta: float = 0.1,
        factor: float = 2.0, period_scale: float = 1.0) -> Reallocator:
    """Dynamic sparse reparameterization (Mostafa & Wang 2019), the paper's defaults."""
    return Reallocator(PeriodSchedule(periods, stop_epoch, period_scale),
                       ThresholdPrune(init_threshold, target_pruned, delta, factor),
                       ProportionalToSurvivors(), RandomGrowth(), name="DSR")


METHODS = {"dsr": dsr}


def build_method(name: str, **kwargs):
    """A reallocator by name; "static" gives None (masks never move)."""
    if name == "static":
        return None
    if name not in METHODS:
        raise ValueError(f"unknown sparse method {name!r}; allowed: static, {', '.join(METHODS)}")
    return METHODS[name](**kwargs)
