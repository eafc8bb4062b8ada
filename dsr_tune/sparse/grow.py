"""Where to grow and how many per tensor.

Allocators decide the count per tensor; growers pick the positions, given
the ``taken`` ones (a bool mask, True where growth may not go). Grown
weights start at exactly zero with zero optimizer state (the masking zeroes
them), and never land on a position pruned in the same reallocation unless
there is no other room left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def proportional_counts(total: int, weights: Mapping[str, int], capacity: Mapping[str, int],
                        generator: torch.Generator) -> dict[str, int]:
    """Split ``total`` over tensors in proportion to ``weights``, exactly.

    Largest-remainder rounding: each tensor gets floor or ceil of its exact
    share ``total * w_i / sum(w)``, ties broken at random, and the counts sum
    to ``total``. A tensor whose ``capacity`` is reached passes the rest of its
    share on to the others in the same proportion. Integer arithmetic only.
    """
    alloc = {n: 0 for n in weights}
    remaining = total
    open_ = [n for n in weights if capacity[n] > 0 and weights[n] > 0]
    while remaining > 0:
        if not open_:  # nothing weighted has room: spread by room left
            open_ = [n for n in weights if capacity[n] > alloc[n]]
            if not open_:
                raise RuntimeError(f"no room to grow {remaining} more weights")
            w = {n: capacity[n] - alloc[n] for n in open_}
        else:
            w = {n: weights[n] for n in open_}
        wsum = sum(w.values())
        share = {n: remaining * w[n] // wsum for n in open_}
        rest = remaining - sum(share.values())
        # largest fractional part first; random tie-break
        tie = torch.rand(len(open_), generator=generator).tolist()
        order = sorted(range(len(open_)), key=lambda i: (-((remaining * w[open_[i]]) % wsum), tie[i]))
        for i in order[:rest]:
            share[open_[i]] += 1
        for n in open_:
            give = min(share[n], capacity[n] - alloc[n])
            alloc[n] += give
            remaining -= give
        open_ = [n for n in open_ if alloc[n] < capacity[n]]
    return alloc


class ProportionalToSurvivors:
    """DSR: the K pruned weights are regrown across tensors in proportion to
    each tensor's surviving weights R_i."""

    def __call__(self, pruned: Mapping[str, int], survivors: Mapping[str, int],
                 capacity: Mapping[str, int], masking) -> dict[str, int]:
        return proportional_counts(sum(pruned.values()), survivors, capacity, masking.generator)

    def __repr__(self) -> str:
        return "ProportionalToSurvivors()"


class SameTensor:
    """SET / RigL / DeepR: every tensor regrows what it pruned (fixed per-layer count).

    Always fits: a tensor that pruned K_i has at least K_i inactive positions
    (the reallocator lets it reuse the just-pruned ones when it has no other room).
    """

    keeps_tensor_counts = True  # the reallocator must not spread a shortfall over other tensors

    def __call__(self, pruned, survivors, capacity, masking) -> dict[str, int]:
        return dict(pruned)

    def __repr__(self) -> str:
        return "SameTensor()"


def sample_positions(taken: torch.Tensor, count: int, n_free: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` flat indices drawn uniformly without replacement where ``taken`` is False.

    ``n_free`` is the number of such positions. Sparse regime: draw random
    indices, keep the untaken ones, dedupe, repeat; the cost grows with
    ``count``, not with the tensor, and ``taken`` is only read at the drawn
    indices. When most free positions are wanted, list them all instead. The
    result is a uniform random subset either way (the draw is symmetric in the
    free positions).
    """
    device = taken.device
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if count > n_free:
        raise ValueError(f"asked for {count} positions, only {n_free} free")
    flat = taken.view(-1)
    if 4 * count > n_free:
        idx = flat.logical_not().nonzero().squeeze(1)
        return idx[torch.randperm(idx.numel(), generator=generator)[:count].to(device)]
    numel = flat.numel()
    chosen = torch.empty(0, dtype=torch.long, device=device)
    while chosen.numel() < count:
        need = count - chosen.numel()
        draw = int(need * numel / n_free * 1.3) + 32
        cand = torch.randint(numel, (draw,), generator=generator).to(device)
        chosen = torch.cat([chosen, cand[~flat[cand]]]).unique()
    return chosen[torch.randperm(chosen.numel(), generator=generator)[:count].to(device)]


class RandomGrowth:
    """Grow at uniformly random inactive positions (DSR, SET, DeepR)."""

    def __call__(self, name: str, taken: torch.Tensor, count: int, n_free: int, masking) -> torch.Tensor:
        return sample_positions(taken, count, n_free, masking.generator)

    def __repr__(self) -> str:
        return "RandomGrowth()"


class ProportionalToScore:
    """SNFS: the K pruned weights are regrown across tensors in proportion to a
    per-tensor score (mean momentum magnitude of the active weights).

    ``score(masking) -> {name: float >= 0}`` is evaluated on the masks before
    pruning. Scores are turned into integers (40 bits of precision) so the
    exact, capacity-aware :func:`proportional_counts` does the split.
    """

    def __init__(self, score):
        self.score = score

    def __call__(self, pruned, survivors, capacity, masking) -> dict[str, int]:
        scores = {n: v if math.isfinite(v) and v > 0 else 0.0 for n, v in self.score(masking).items()}
        top = max(scores.values(), default=0.0)
        weights = {n: max(1, round(v / top * 2**40)) if v > 0 else 0 for n, v in scores.items()}
        return proportional_counts(sum(pruned.values()), weights, capacity, masking.generator)

    def __repr__(self) -> str:
        return f"ProportionalToScore({self.score!r})"


def top_positions(score: torch.Tensor, taken: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the ``count`` untaken positions with the largest ``|score|``.

    Taken positions never win (they are ranked below every free one);
    among equal scores torch.topk's order decides, the same on every rank.
    """
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=taken.device)
    ranked = torch.where(taken.view(-1), -1.0, score.detach().reshape(-1).abs().float())
    return torch.topk(ranked, count).indices


class GradientGrowth:
    """RigL: grow where the dense gradient magnitude is largest among free positions.

    Reads ``param.grad`` of the step just taken: the masking runs after the
    optimizer step and before the next ``zero_grad``, and inactive weights
    (held at zero) still receive their dense gradient. Under DDP the gradient
    is already averaged, so every rank picks the same positions.
    """

    def __call__(self, name: str, taken: torch.Tensor, count: int, n_free: int, masking) -> torch.Tensor:
        grad = masking.params[name].grad
        if grad is None:
            if count <= 0:
                return top_positions(taken, taken, 0)
            raise RuntimeError(f"gradient growth needs {name}.grad: reallocate after backward(), before zero_grad()")
        return top_positions(grad, taken, count)

    def __repr__(self) -> str:
        return "GradientGrowth()"


class ScoreGrowth:
    """Grow where a per-tensor score is largest among free positions (SNFS: momentum).

    ``score(name) -> tensor`` shaped like the parameter.
    """

    def __init__(self, score):
        self.score = score

    def __call__(self, name: str, taken: torch.Tensor, count: int, n_free: int, masking) -> torch.Tensor:
        return top_positions(self.score(name), taken, count)

    def __repr__(self) -> str:
        return f"ScoreGrowth({self.score!r})"
