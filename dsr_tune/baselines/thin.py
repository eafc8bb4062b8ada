"""Thin dense: the width that gives a dense network the parameter count of a sparse run.

The target is what the sparse run it is compared with really holds: its dense
parameters (first conv, shortcuts, classifier, BN, biases: whatever the sparse
rule leaves dense) plus the active sparse weights, which is exactly the
``nonzero_params`` the trainer logs for that run. The width is found by
bisection over the real width multiplier, building the model from the registry
on the meta device (no memory, no init cost), never looked up in a table.

``match="storage"`` adds one bit per sparse position (a bitmask, counted in
32-bit words) to the target. That is not the paper's stated rule, but it is the
count its widen factors fit: see tests/test_baselines.py and RESULTS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models import build_model, count_params, sparse_names
from ..sparse import layer_counts

MATCHES = ("nonzero", "storage")


def _meta_model(name: str, width: float, depth: int, num_classes: int, in_channels: int):
    with torch.device("meta"):
        return build_model(name, width=width, depth=depth, num_classes=num_classes, in_channels=in_channels)


def sparse_target(name: str, *, width: float, depth: int = 28, num_classes: int = 10, in_channels: int = 3,
                  sparsity: float, distribution: str = "uniform", include: list[str] | None = None,
                  exclude: list[str] | None = None, match: str = "nonzero") -> int:
    """Parameters of the sparse run at ``sparsity``: dense ones + the active budget
    (the same per-tensor rounding as :class:`~dsr_tune.sparse.Masking`)."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    model = _meta_model(name, width, depth, num_classes, in_channels)
    named = dict(model.named_parameters())
    names = sparse_names(name, model, include, exclude)
    sparse_numel = sum(named[n].numel() for n in names)
    budget = sum(layer_counts({n: named[n].shape for n in names}, 1.0 - sparsity, distribution).values())
    target = count_params(model) - sparse_numel + budget
    if match == "storage":
        target += math.ceil(sparse_numel / 32)
    return target


@dataclass
class ThinSolution:
    width: float
    params: int
    target: int

    @property
    def rel_error(self) -> float:
        return abs(self.params - self.target) / self.target


def solve_width(name: str, target: int, *, depth: int = 28, num_classes: int = 10, in_channels: int = 3,
                hi: float = 64.0, tol: float = 0.01, iters: int = 60, strict: bool = True) -> ThinSolution:
    """The width whose dense model has ``target`` parameters within ``tol`` (relative).

    The count is a non-decreasing step function of the width (channel counts
    are rounded), so bisection brackets the step that crosses the target; of
    the widths evaluated, the one closest to the target wins (the smaller on
    a tie). ``strict``: raise ValueError when no width within ``tol`` exists
    (the target falls inside one rounding step, or outside the range of
    widths); otherwise return the closest.
    """
    def count(w: float) -> int:
        return count_params(_meta_model(name, w, depth, num_classes, in_channels))

    lo = 1e-3
    best = ThinSolution(lo, count(lo), target)
    if best.params > target:
        raise ValueError(f"{name}: even the narrowest model has {best.params} > {target} parameters")
    while count(hi) < target and hi < 4096:
        hi *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        n = count(mid)
        cand = ThinSolution(mid, n, target)
        if (cand.rel_error, cand.width) < (best.rel_error, best.width):
            best = cand
        if n == target or hi - lo < 1e-5:  # far below one channel step of any model
            break
        lo, hi = (mid, hi) if n < target else (lo, mid)
    if strict and best.rel_error > tol:
        raise ValueError(f"{name}: no width gives {target} parameters within {100 * tol:g}% "
                         f"(closest: width {best.width:.4f} with {best.params})")
    return best
