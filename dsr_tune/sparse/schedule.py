"""When to reallocate (an epoch-indexed period schedule with a stop epoch), and
the values that change over training (DeepR's temperature, a decaying drop
fraction). Every schedule here is a pure function of (step, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class EpochTable:
    """A value looked up by epoch from ``(start_epoch, value)`` pairs: the value
    of the last pair whose start is <= the epoch. Stateless.

    DeepR's temperature is ``[(0, 1e-5), (25, 1e-8), (80, 1e-12), (140, 1e-15)]``;
    DSR's reallocation period ``[(0, 100), (25, 200), (80, 400), (140, 800)]``.
    """

    def __init__(self, pairs: Sequence[Sequence[float]], kind=float):
        pairs = [(int(s), kind(v)) for s, v in pairs]
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


class PeriodSchedule:
    """Reallocate every P iterations, P looked up by epoch, until ``stop_epoch``.

    ``periods`` is a list of ``(start_epoch, period)`` pairs; the paper's WRN
    schedule is ``[(0, 100), (25, 200), (80, 400), (140, 800)]``. ``scale``
    multiplies every period (a sweep can search one number instead of four).
    A step is due when the global step count is a multiple of the period in
    force: a pure function of ``(step, epoch)``, so there is no state to save.
    """

    def __init__(self, periods: Sequence[Sequence[int]], stop_epoch: int | None = None, scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"period scale must be positive, got {scale}")
        bad = [p for _, p in periods if int(p) < 1]
        if bad:
            raise ValueError(f"reallocation periods must be >= 1 iteration, got {bad}")
        self.table = EpochTable([(s, max(1, round(int(p) * scale))) for s, p in periods], kind=int)
        self.stop_epoch = stop_epoch

    @property
    def periods(self) -> list[tuple[int, int]]:
        return self.table.pairs

    def period(self, epoch: int) -> int:
        return self.table(epoch)

    def due(self, step: int, epoch: int) -> bool:
        if self.stop_epoch is not None and epoch >= self.stop_epoch:
            return False
        return step > 0 and step % self.period(epoch) == 0

    def __repr__(self) -> str:
        return f"PeriodSchedule({self.periods}, stop_epoch={self.stop_epoch})"


def every_step(stop_epoch: int | None = None) -> PeriodSchedule:
    """Every iteration until ``stop_epoch`` (DeepR)."""
    return PeriodSchedule([(0, 1)], stop_epoch)


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
