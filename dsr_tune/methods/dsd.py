"""DSD (Han et al. 2017): dense, then magnitude-pruned sparse, then dense again at a
fraction of the LR. Keys: ``sparsity.dsd.*``."""

from typing import Annotated

from ..schema import ConfigError, Real, Section, checked, opt
from .registry import Method, register, sparse_masking


def _pair(v) -> str | None:
    return None if not v or (len(v) == 2 and v[0] < v[1]) else "must be [] or [sparse_from, dense_from], increasing"


class DSDOptions(Section):
    phases: Annotated[list[int], checked(_pair)] = opt([], "[first sparse epoch, first dense-again epoch]; "
                                                       "[]: thirds of train.epochs")
    lr_factor: Real = opt(0.1, "LR multiplier in the last, dense-again phase", gt=0, le=1)


def phases(cfg) -> tuple[int, int]:
    """(first sparse epoch, first dense-again epoch); default: thirds of the run."""
    if cfg.sparsity.dsd.phases:
        a, b = cfg.sparsity.dsd.phases
        return int(a), int(b)
    e = cfg.train.epochs
    return max(1, round(e / 3)), max(2, round(2 * e / 3))


def check(cfg) -> None:
    p, epochs = cfg.sparsity.dsd.phases, cfg.train.epochs
    if p and (p[0] < 1 or p[1] >= epochs):
        raise ConfigError("sparsity.dsd.phases", f"{p}: need [sparse_from, dense_from] with "
                                                 f"1 <= sparse_from < dense_from < train.epochs={epochs}")
    if not p and epochs < 3:
        raise ConfigError("train.epochs", f"{epochs}: dsd needs at least 3 epochs (dense, sparse, dense)")


def masking(cfg, model, optimizer, steps_per_epoch: int):
    from ..sparse.pruning_schedules import DenseSparseDense

    return sparse_masking(cfg, model, optimizer, DenseSparseDense(cfg.sparsity.sparsity, *phases(cfg)),
                          sparsity=0.0)


def lr_factor(cfg, epoch: int) -> float:
    return cfg.sparsity.dsd.lr_factor if epoch >= phases(cfg)[1] else 1.0


def derive(data: dict, parent: str | None, arg: int | None) -> None:
    data["sparsity"]["dsd"]["phases"] = []  # thirds of this row's epochs


register(Method("dsd", "baseline", "dense, sparse, dense again at a fraction of the LR", options=DSDOptions,
                check=check, masking=masking, lr_factor=lr_factor, derive=derive))
