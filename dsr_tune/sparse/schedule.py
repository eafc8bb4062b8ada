"""When to reallocate (an epoch-indexed period schedule with a stop epoch), and
the values that change over training (DeepR's temperature, a decaying drop
fraction). Every schedule here is a pure function of (step, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class PeriodSchedule:
    """Reallocate every P iterations, P looked up by epoch, until ``stop_epoch``.

    ``periods`` is a list of ``(start_epoch, period)`` pairs; the paper's WRN
    schedule is ``[(0, 100), (25, 200), (80, 400), (140, 800)]``. ``scale``
    multiplies every period (a sweep can search one number instead of four).
    A step is due when the global step count is a multiple of the period in
    force: a pure function of ``(step, epoch)``, so there is no state to save.
    """

    def __init__(self, periods: Sequence[Sequence[int]], stop_epoch: int | None = None, scale: float = 1.0):
        periods = [(int(s), int(p)) for s, p in periods]
        if not periods or periods[0][0] != 0:
            raise ValueError(f"period schedule must start at epoch 0, got {periods}")
        if any(b[0] <= a[0] for a, b in zip(periods, periods[1:])):
            raise ValueError(f"period schedule start epochs must increase, got {periods}")
        if any(p < 1 for _, p in periods) or scale <= 0:
            raise ValueError("periods and scale must be positive")
        self.periods = [(s, max(1, round(p * scale))) for s, p in periods]
        self.stop_epoch = stop_epoch

    def period(self, epoch: int) -> int:
        current = self.periods[0][1]
        for start, p in self.periods:
            if epoch >= start:
                current = p
        return current

    def due(self, step: int, epoch: int) -> bool:
        if self.stop_epoch is not None and epoch >= self.stop_epoch:
            return False
        return step > 0 and step % self.period(epoch) == 0

    def __repr__(self) -> str:
        return f"PeriodSchedule({self.periods}, stop_epoch={self.stop_epoch})"


class EveryStep(PeriodSchedule):
    """Every iteration until ``stop_epoch`` (DeepR)."""

    def __init__(self, stop_epoch: int | None = None):
        super().__init__([(0, 1)], stop_epoch)


class EpochTable:
    """A value looked up by epoch from ``(start_epoch, value)`` pairs.

    DeepR's temperature is ``[(0, 1e-5), (25, 1e-8), (80, 1e-12), (140, 1e-15)]``:
    the value of the last pair whose start is <= the epoch. Stateless.
    """

    def __init__(self, pairs: Sequence[Sequence[float]]):
        pairs = [(int(s), float(v)) for s, v in pairs]
        if not pairs or pairs[0][0] != 0:
            raise ValueError(f"an epoch table must start at epoch 0, got {pairs}")
        if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
            raise ValueError(f"epoch table start epochs must increase, got {pairs}")
        self.pairs = pairs

    def __call__(self, epoch: int) -> float:
        current = self.pairs[0][1]
        for start, v in self.pairs:
            if epoch >= start:
                current = v
        return current

    def __repr__(self) -> str:
        return f"EpochTable({self.pairs})"


class CosineDecay:
    """A fraction that falls from ``initial`` to 0 at ``end_step`` along half a cosine.

    ``f(step) = initial * (1 + cos(pi * step / end_step)) / 2``, 0 from
    ``end_step`` on (RigL's drop fraction, SNFS's prune rate). A pure function
    of the step, so there is no state to save.
    """

    def __init__(self, initial: float, end_step: int):
        if not 0.0 <= initial <= 1.0:
            raise ValueError(f"initial fraction must be in [0, 1], got {initial}")
        self.initial, self.end_step = float(initial), int(end_step)

    def __call__(self, step: int, epoch: int = 0) -> float:
        if self.end_step <= 0 or step >= self.end_step:
            return 0.0
        return self.initial * 0.5 * (1.0 + math.cos(math.pi * step / self.end_step))

    def __repr__(self) -> str:
        return f"CosineDecay({self.initial:g} -> 0 at step {self.end_step})"
