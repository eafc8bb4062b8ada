"""How the parameter budget is spread over the sparse tensors at the start."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

DISTRIBUTIONS = ("uniform", "erk")


def layer_counts(shapes: Mapping[str, torch.Size], density: float, distribution: str = "uniform") -> dict[str, int]:
    """Active weights per tensor; every tensor keeps at least one.

    uniform: every tensor at the same density (DSR, SET, static sparse).
    erk: Erdos-Renyi-Kernel (RigL): density proportional to
        sum(shape) / prod(shape), tensors that would exceed 1 made dense and
        the rest rescaled, so the total matches the uniform budget.
    """
    numel = {n: math.prod(s) for n, s in shapes.items()}
    if distribution == "uniform":
        return {n: max(1, round(density * k)) for n, k in numel.items()}
    if distribution == "erk":
        return _erk(shapes, numel, density)
    raise ValueError(f"unknown distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")


def _erk(shapes, numel, density) -> dict[str, int]:
    budget = sum(max(1, round(density * k)) for k in numel.values())
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    dense: set[str] = set()
    scale = 0.0
    while len(dense) < len(numel):  # every tensor dense only at density ~1
        left = budget - sum(numel[n] for n in dense)
        scale = left / sum(raw[n] * numel[n] for n in numel if n not in dense)
        over = {n for n in numel if n not in dense and raw[n] * scale > 1.0}
        if not over:
            break
        dense |= over
    counts = {n: numel[n] if n in dense else max(1, int(raw[n] * scale * numel[n])) for n in numel}
    # flooring leaves a few weights unplaced: hand them to the largest sparse tensors
    short = budget - sum(counts.values())
    for n in sorted((n for n in numel if n not in dense), key=lambda n: -numel[n]):
        if short <= 0:
            break
        add = min(short, numel[n] - counts[n])
        counts[n] += add
        short -= add
    # at tiny densities the one-weight floor can overshoot: take it back from the largest
    for n in sorted(numel, key=lambda n: -counts[n]):
        if short >= 0:
            break
        take = min(-short, counts[n] - 1)
        counts[n] -= take
        short += take
    return counts
