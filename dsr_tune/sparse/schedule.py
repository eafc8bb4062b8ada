"""When to reallocate: an epoch-indexed period schedule with a stop epoch."""

from __future__ import annotations

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
