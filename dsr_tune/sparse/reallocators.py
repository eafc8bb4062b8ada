"""Reallocation methods as compositions of small parts.

A :class:`Reallocator` is four choices: *when* (a schedule), *what to prune*
(a pruner), *how many to grow per tensor* (an allocator) and *where to grow*
(a grower), plus optional per-step *dynamics*. DSR and its relatives differ
only in those choices; the loop that runs them is written once, here:

    method  schedule         pruner                allocator            grower          dynamics
    DSR     period, stop     |w| < H, H adapts     by survivors R_i     random          -
    SET     period, stop     fraction f by |w|     same tensor          random          -
    DeepR   every step       sign flip             same tensor          random          L1 + noise, no decay
    RigL    period, stop     cosine f by |w|       same tensor          largest |grad|  -
    SNFS    period, stop     cosine f by |w|       by mean |momentum|   largest |m|     dense momentum

The initial spread over tensors (uniform or ERK) is the masking's choice,
independent of the method.
"""

from __future__ import annotations

import torch

from .dynamics import DEEPR_TEMPERATURES, DeepRDynamics, DenseMomentum
from .grow import (GradientGrowth, ProportionalToScore, ProportionalToSurvivors, RandomGrowth, SameTensor,
                   ScoreGrowth, proportional_counts, sample_positions)
from .prune import MagnitudeFractionPrune, SignFlipPrune, ThresholdPrune, keep_one
from .schedule import CosineDecay, PeriodSchedule, every_step

_SUMMED = ("pruned", "grown", "realloc_time")  # what a summarized record adds up over its reallocations


class Reallocator:
    """Prune then regrow the same number of weights, keeping the budget exact.

    One reallocation:
      1. the pruner marks positions to remove in each tensor (never all of
         them when ``never_empty``: :func:`keep_one`); K_i removed, R_i survive;
      2. the allocator turns (K_i, R_i, room) into grow counts summing to K;
      3. the grower picks the positions among the inactive ones. With
         ``regrow_pruned=False`` (DSR, SET, DeepR) the ones just pruned are
         excluded unless there is no other room (globally, or in a tensor that
         must regrow its own count); with True (RigL, SNFS) every position
         inactive after the prune is a candidate;
      4. the pruner adapts (DSR's threshold) to the total K.

    ``dynamics`` (optional) acts at every step: see
    :mod:`dsr_tune.sparse.dynamics` (DeepR's noise, SNFS's dense momentum).
    Every part may define ``attach(masking)``, ``state_dict()`` and
    ``load_state_dict()``; the reallocator forwards them.
    """

    def __init__(self, schedule, pruner, allocator, grower, name: str = "custom", *, dynamics=None,
                 regrow_pruned: bool = False, never_empty: bool = True, report_every: int = 1):
        self.schedule, self.pruner, self.allocator, self.grower = schedule, pruner, allocator, grower
        self.dynamics = dynamics
        self.regrow_pruned = regrow_pruned
        self.never_empty = never_empty
        if report_every < 1:
            raise ValueError(f"report_every must be >= 1, got {report_every}")
        self.report_every = int(report_every)
        self._pending: dict | None = None  # records summed since the last report
        self.name = name

    zeroes_pruned = True  # reallocate() zeroes what it removes: the masking need not re-apply every mask

    def due(self, step: int, epoch: int) -> bool:
        return self.schedule.due(step, epoch)

    # -- hooks the masking calls (each forwarded to the parts that define it)

    def attach(self, masking) -> None:
        for obj in self._parts().values():
            if hasattr(obj, "attach"):
                obj.attach(masking)

    def before_optimizer_step(self, masking) -> None:
        if hasattr(self.dynamics, "before_optimizer_step"):
            self.dynamics.before_optimizer_step(masking)

    def after_step(self, masking) -> None:
        if hasattr(self.dynamics, "after_step"):
            self.dynamics.after_step(masking)

    # -- one reallocation

    @torch.no_grad()
    def reallocate(self, masking) -> dict:
        names = list(masking.masks)
        # row-major like the masks (a channels_last weight can make a pruner's result channels_last)
        pruned = {n: t.contiguous() for n, t in self.pruner(masking).items()}
        before = self.pruner.record() if hasattr(self.pruner, "record") else {}
        if hasattr(self.dynamics, "record"):
            before.update(self.dynamics.record(masking))
        # active counts are cached by the masking; one device->host transfer
        # for the pruned counts of every tensor
        active = masking.active_counts()
        k_list = torch.stack([pruned[n].count_nonzero() for n in names]).tolist()
        survivors = {n: active[n] - k for n, k in zip(names, k_list)}
        for n in names:
            if self.never_empty and survivors[n] == 0 and active[n] > 0:
                pruned[n] = keep_one(masking.params[n], masking.masks[n], pruned[n])
                survivors[n] = 1
        k = {n: active[n] - survivors[n] for n in names}
        numel = {n: masking.masks[n].numel() for n in names}
        room = {n: numel[n] - survivors[n] - k[n] for n in names}
        total = sum(k.values())
        grow, spill = self._grow_counts(k, survivors, room, masking)
        layers = {}
        for n in names:
            mask = masking.masks[n]
            if self.regrow_pruned:  # every position inactive after the prune is a candidate
                mask.logical_xor_(pruned[n])  # pruned is a subset of mask: xor removes it
                idx = self.grower(n, mask, grow[n], room[n] + k[n], masking)
            else:  # growth avoids what was active before this prune, the just-pruned included
                idx = self.grower(n, mask, grow[n] - spill[n], room[n], masking)
                if spill[n]:  # no other room: back into positions just pruned, at random
                    back = sample_positions(pruned[n].logical_not(), spill[n], k[n], masking.generator)
                    idx = torch.cat([idx, back])
                mask.logical_xor_(pruned[n])
            # zero what was pruned (one masked pass, cheaper than listing the
            # positions) and what grows (by index: few positions), unless the
            # masking vouches that inactive positions are zero already (its step())
            masking.zero_where(n, pruned[n])
            if not getattr(masking, "inactive_zero", False):
                masking.zero_at(n, idx)
            mask.view(-1)[idx] = True
            layers[n] = {"pruned": k[n], "grown": grow[n], "nonzero": survivors[n] + grow[n]}
        record = {"pruned": total, "grown": sum(grow.values()), **before, "layers": layers}
        if hasattr(self.pruner, "adjust"):
            self.pruner.adjust(total)
            record.update({f"next_{key}": v for key, v in self.pruner.record().items()})
        return record

    def _grow_counts(self, k, survivors, room, masking) -> tuple[dict[str, int], dict[str, int]]:
        """How many each tensor grows, and how many of those go back into
        positions it just pruned (``spill``).

        The just-pruned positions are used only for what does not fit
        elsewhere: a same-tensor method whose tensor has no other room, or
        (above density 0.5) a budget larger than all the room there is, in
        which case every tensor first fills its room and only the shortfall
        is spread, in proportion to survivors, over the just-pruned slots.
        """
        names = list(k)
        if self.regrow_pruned:
            grow = self.allocator(k, survivors, {n: room[n] + k[n] for n in names}, masking)
            return grow, dict.fromkeys(names, 0)
        total = sum(k.values())
        if sum(room.values()) >= total:
            grow = self.allocator(k, survivors, room, masking)
        elif getattr(self.allocator, "keeps_tensor_counts", False):
            grow = dict(k)
        else:
            extra = proportional_counts(total - sum(room.values()), survivors, k, masking.generator)
            grow = {n: room[n] + extra[n] for n in names}
        return grow, {n: max(0, grow[n] - room[n]) for n in names}

    def summarize(self, record: dict, step: int) -> dict | None:
        """The record to report for this reallocation, or None while summing.

        With ``report_every=N`` (DeepR rewires every step) the records are
        summed and one is reported when ``step`` is a multiple of N: counts
        and ``realloc_time`` added up, ``nonzero`` and everything else from the latest, plus
        ``reallocations``. Not saved: the trainer resumes at epoch ends, where
        a report with N = steps per epoch has just emptied the sum.
        """
        if self.report_every == 1:
            return record
        acc = self._pending
        if acc is None:
            acc = self._pending = {**record, "layers": {n: dict(v) for n, v in record["layers"].items()},
                                   "reallocations": 1}
        else:
            for key in _SUMMED:
                if key in record:
                    acc[key] = acc.get(key, 0) + record[key]
            for n, layer in record["layers"].items():
                acc["layers"][n] = {"pruned": acc["layers"][n]["pruned"] + layer["pruned"],
                                    "grown": acc["layers"][n]["grown"] + layer["grown"], "nonzero": layer["nonzero"]}
            acc.update({k: v for k, v in record.items() if k not in (*_SUMMED, "layers")})
            acc["reallocations"] += 1
        if step % self.report_every:
            return None
        self._pending = None
        return acc

    def state_dict(self) -> dict:
        return {part: obj.state_dict() for part, obj in self._parts().items() if hasattr(obj, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for part, obj in self._parts().items():
            if part in state:
                obj.load_state_dict(state[part])

    def _parts(self) -> dict:
        parts = {"schedule": self.schedule, "pruner": self.pruner, "allocator": self.allocator, "grower": self.grower}
        if self.dynamics is not None:
            parts["dynamics"] = self.dynamics
        return parts

    def __repr__(self) -> str:
        extra = f", {self.dynamics}" if self.dynamics is not None else ""
        return f"{self.name}({self.schedule}, {self.pruner}, {self.allocator}, {self.grower}{extra})"


def dsr(periods=((0, 100), (25, 200), (80, 400), (140, 800)), stop_epoch: int | None = 190,
        init_threshold: float = 1e-3, target_pruned: int = 20000, delta: float = 0.1,
        factor: float = 2.0, period_scale: float = 1.0) -> Reallocator:
    """Dynamic sparse reparameterization (Mostafa & Wang 2019), the paper's defaults."""
    return Reallocator(PeriodSchedule(periods, stop_epoch, period_scale),
                       ThresholdPrune(init_threshold, target_pruned, delta, factor),
                       ProportionalToSurvivors(), RandomGrowth(), name="DSR")


def set_(periods=((0, 100), (25, 200), (80, 400), (140, 800)), stop_epoch: int | None = 190,
         fraction: float | None = None, target_pruned: int = 20000, period_scale: float = 1.0) -> Reallocator:
    """SET (Mocanu et al. 2018) on DSR's period schedule.

    Every tensor drops the ``fraction`` f of its active weights with the
    smallest magnitude and regrows as many at random in the same tensor, so
    every tensor keeps its count. ``fraction=None`` derives f = Np / budget
    from ``target_pruned`` (:func:`~dsr_tune.sparse.prune.set_fraction`).
    """
    pruner = MagnitudeFractionPrune(fraction, None if fraction is not None else target_pruned)
    return Reallocator(PeriodSchedule(periods, stop_epoch, period_scale), pruner, SameTensor(), RandomGrowth(),
                       name="SET")


def deepr(temperatures=DEEPR_TEMPERATURES, l1: float = 1e-5, lr: float | None = None,
          report_every: int = 1, noise_eta: float | None = None) -> Reallocator:
    """Deep R (Bellec et al. 2018), as the DSR paper ran it.

    Every step: L1 + Gaussian noise on the active weights and no weight decay
    on the sparse tensors (:class:`~dsr_tune.sparse.dynamics.DeepRDynamics`),
    then every active weight whose sign left its connection's sign is removed
    and as many random inactive positions of the same tensor are activated at
    zero (:class:`~dsr_tune.sparse.prune.SignFlipPrune`). It rewires for the
    whole run (no stop epoch): the temperature schedule anneals the search.
    A tensor may lose every weight for an instant; it regrows them in the same
    step, so no weight is spared against the sign rule. ``report_every``: one
    summed record per that many steps (the trainer uses one per epoch).
    ``noise_eta``: eta of the noise term alone (the spec's 0.01); None: the LR.
    """
    return Reallocator(every_step(), SignFlipPrune(), SameTensor(), RandomGrowth(), name="DeepR",
                       dynamics=DeepRDynamics(temperatures, l1, lr, noise_eta), never_empty=False, report_every=report_every)


def _drop_fraction(drop_fraction: float, decay: str, end_step: int | None):
    if decay == "constant":
        return float(drop_fraction)
    if decay != "cosine":
        raise ValueError(f"unknown decay {decay!r}; allowed: cosine, constant")
    if end_step is None:
        raise ValueError("a cosine drop fraction needs end_step (stop_epoch * steps_per_epoch)")
    return CosineDecay(drop_fraction, end_step)


def rigl(periods=((0, 100),), stop_epoch: int | None = None, drop_fraction: float = 0.3,
         end_step: int | None = None, decay: str = "cosine", period_scale: float = 1.0) -> Reallocator:
    """RigL (Evci et al. 2020): every period (Delta T = 100) until the stop epoch,
    each tensor drops ``drop_fraction`` of its active weights by magnitude
    (cosine-decayed to 0 at ``end_step``) and grows as many where the dense
    gradient magnitude is largest among its inactive positions, just-dropped
    ones included. Grown weights start at zero (RigL's reference keeps the old
    value of a weight dropped and regrown at once; here it restarts at zero).
    """
    return Reallocator(PeriodSchedule(periods, stop_epoch, period_scale),
                       MagnitudeFractionPrune(_drop_fraction(drop_fraction, decay, end_step)),
                       SameTensor(), GradientGrowth(), name="RigL", regrow_pruned=True)


def snfs(periods=((0, 100),), stop_epoch: int | None = None, drop_fraction: float = 0.5,
         end_step: int | None = None, decay: str = "cosine", momentum: float = 0.9,
         period_scale: float = 1.0) -> Reallocator:
    """Sparse momentum / SNFS (Dettmers & Zettlemoyer 2019).

    Each tensor prunes ``drop_fraction`` of its active weights by magnitude
    (cosine decay, the paper's prune rate 0.5); the total is regrown across
    tensors in proportion to the mean momentum magnitude of each tensor's
    active weights, and inside a tensor where the momentum magnitude is
    largest among inactive positions. The momentum is a dense one of its own
    (:class:`~dsr_tune.sparse.dynamics.DenseMomentum`, ``beta = momentum``),
    because the optimizer's is held at zero on inactive weights.
    """
    tracker = DenseMomentum(momentum)
    return Reallocator(PeriodSchedule(periods, stop_epoch, period_scale),
                       MagnitudeFractionPrune(_drop_fraction(drop_fraction, decay, end_step)),
                       ProportionalToScore(tracker.mean_active), ScoreGrowth(tracker.momentum), name="SNFS",
                       dynamics=tracker, regrow_pruned=True)
