"""Magnitude-pruning schedules that change the budget: GMP and DSD. Imports torch only.

Both plug into :class:`~dsr_tune.sparse.masking.Masking` as its ``method``
(they answer ``due(step, epoch)`` and ``reallocate(masking)``), so the masks,
the optimizer-state zeroing and the checkpointing are the masking's own. Unlike
the reallocators they do not keep the budget: they set ``masking.budget`` to
the new number of active weights each time they act. Build the masking with
``sparsity=0.0`` (every weight active) and let the schedule prune.

- :class:`GradualMagnitudePruning` (Zhu & Gupta 2017): ``steps`` pruning steps,
  one every ``every`` epochs from ``start``, to the cubic schedule
  ``s_t = s_f * (1 - (1 - t/steps)**3)``; step ``steps`` lands on ``s_f``
  exactly, with every tensor at the uniform per-tensor count that
  :func:`~dsr_tune.sparse.distribution.layer_counts` gives for ``s_f``, so
  the final budget equals a uniform sparse run's at the same sparsity.
- :class:`DenseSparseDense` (Han et al. 2017): dense until ``sparse_from``,
  then one magnitude prune to the target kept fixed, then every weight back
  (re-enabled ones start at zero with zero momentum) from ``dense_from``. The
  tenth-of-the-LR rule of the last phase belongs to the LR schedule, not here.
"""

from __future__ import annotations

import torch

from .distribution import layer_counts
from .state import saved_state


@torch.no_grad()
def magnitude_prune_to(masking, counts: dict[str, int]) -> dict[str, int]:
    """Keep the ``counts[name]`` largest-magnitude active weights of each tensor.

    Only active positions compete (a tensor never grows here). Of weights tied
    at the cut, the lowest positions (row-major) stay, so the result is the
    same on every device and run. Sets ``masking.budget`` and invalidates its
    cached counts; the caller (the masking) zeroes the removed weights and
    their optimizer state. Returns the number removed per tensor.
    """
    removed = {}
    active = masking.active_counts()  # cached: no recount of every mask
    for name, p in masking.params.items():
        mask = masking.masks[name]
        keep = min(counts[name], active[name])
        # reshape, not view: the weight may be stored channels_last; positions are logical
        score = p.detach().abs().masked_fill(~mask, -1.0).reshape(-1)
        mask.copy_(_top_positions(score, keep).view_as(mask))
        removed[name] = active[name] - keep
    masking.masks_changed()
    masking.budget = sum(active.values()) - sum(removed.values())
    return removed


def _top_positions(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the ``keep`` largest scores; ties at the cut go to the lowest positions.

    topk alone picks among tied scores in an order that depends on the device
    and the kernel. Here everything strictly above the k-th largest score is
    kept, and the tied ones are taken in position order (nonzero() returns
    them sorted) until ``keep`` is reached."""
    if keep <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    cut = torch.topk(score, keep, sorted=False).values.min()
    out = score > cut
    missing = keep - int(out.count_nonzero())
    out[(score == cut).nonzero().squeeze(1)[:missing]] = True
    return out


def _shapes(masking) -> dict[str, torch.Size]:
    return {n: p.shape for n, p in masking.params.items()}


def cubic_sparsity(step: int, steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule after ``step`` of ``steps`` pruning steps
    (``step=0``: ``initial``; ``step=steps``: ``final``, exactly)."""
    if step >= steps:
        return final
    return final + (initial - final) * (1.0 - step / steps) ** 3


class GradualMagnitudePruning:
    """Prune to ``sparsity`` in ``steps`` steps, one every ``every`` epochs from ``start``.

    Step t (1-based) runs at the first iteration of epoch ``start + (t-1) * every``;
    after the last one the masks stay fixed (fine-tuning). ``done`` (the steps
    taken) is the whole state, saved with the masking.
    """

    name = "GMP"

    def __init__(self, sparsity: float, steps: int = 20, every: int = 2, start: int = 0):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if steps < 1 or every < 1 or start < 0:
            raise ValueError(f"need steps >= 1, every >= 1, start >= 0; got {steps}, {every}, {start}")
        self.sparsity, self.steps, self.every, self.start = float(sparsity), int(steps), int(every), int(start)
        self.done = 0

    def last_epoch(self) -> int:
        """The epoch of the final pruning step."""
        return self.start + (self.steps - 1) * self.every

    def due(self, step: int, epoch: int) -> bool:
        return self.done < self.steps and epoch >= self.start + self.done * self.every

    def reallocate(self, masking) -> dict:
        self.done += 1
        target = cubic_sparsity(self.done, self.steps, self.sparsity)
        counts = layer_counts(_shapes(masking), 1.0 - target, "uniform")
        removed = magnitude_prune_to(masking, counts)
        return {"method": "gmp", "prune_step": self.done, "target_sparsity": target,
                "pruned": sum(removed.values()), "grown": 0, "budget": masking.budget}

    state_dict, load_state_dict = saved_state(done=int)

    def __repr__(self) -> str:
        return f"GMP(sparsity={self.sparsity}, steps={self.steps}, every={self.every}, start={self.start})"


class DenseSparseDense:
    """Dense, then magnitude-pruned to ``sparsity`` from epoch ``sparse_from``,
    then dense again from epoch ``dense_from`` (``sparse_from < dense_from``)."""

    name = "DSD"

    def __init__(self, sparsity: float, sparse_from: int, dense_from: int):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if not 0 < sparse_from < dense_from:
            raise ValueError(f"need 0 < sparse_from < dense_from, got {sparse_from}, {dense_from}")
        self.sparsity, self.sparse_from, self.dense_from = float(sparsity), int(sparse_from), int(dense_from)
        self.phase = 0  # 0 dense, 1 sparse, 2 dense again

    def due(self, step: int, epoch: int) -> bool:
        return (self.phase == 0 and epoch >= self.sparse_from) or (self.phase == 1 and epoch >= self.dense_from)

    @torch.no_grad()
    def reallocate(self, masking) -> dict:
        self.phase += 1
        if self.phase == 1:
            counts = layer_counts(_shapes(masking), 1.0 - self.sparsity, "uniform")
            pruned = sum(magnitude_prune_to(masking, counts).values())
            return {"method": "dsd", "phase": "sparse", "pruned": pruned, "grown": 0, "budget": masking.budget}
        grown = masking.sparse_numel - sum(masking.active_counts().values())
        for mask in masking.masks.values():
            mask.fill_(True)  # re-enabled weights are zero already, and so is their momentum
        masking.masks_changed()
        masking.budget = masking.sparse_numel
        return {"method": "dsd", "phase": "dense", "pruned": 0, "grown": grown, "budget": masking.budget}

    state_dict, load_state_dict = saved_state(phase=int)

    def __repr__(self) -> str:
        return f"DSD(sparsity={self.sparsity}, sparse_from={self.sparse_from}, dense_from={self.dense_from})"
