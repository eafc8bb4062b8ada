"""DeepR (Bellec et al. 2018) as the DSR paper ran it: L1 and Gaussian noise on
the active weights every step, sign flips deactivated and as many random
positions of the same tensor activated. Keys: ``sparsity.deepr.*``."""

from typing import Annotated

from pydantic import AfterValidator

from ..schema import Real, Section, checked, epochs_within, opt, scaled
from .registry import Method, register


def _temperatures(v) -> str | None:
    if v is None:
        return None
    if not v or not all(isinstance(i, list) and len(i) == 2 for i in v):
        return "must be a non-empty list of [start_epoch, T] pairs"
    starts = [s for s, _ in v]
    if any(not float(s).is_integer() or s < 0 for s in starts):
        return f"start epochs must be non-negative integers, got {starts}"
    if any(t < 0 for _, t in v):
        return f"temperatures must be >= 0, got {[t for _, t in v]}"
    if starts[0] != 0 or starts != sorted(set(starts)):
        return "the first pair must start at epoch 0 and start epochs must increase strictly"
    return None


def _as_pairs(v):
    return None if v is None else [[int(s), float(t)] for s, t in v]


#: the paper's temperatures (epochs 0/25/80/140 of 200) as fractions of the run
PAPER_TEMPERATURES = [[0.0, 1.0e-5], [0.125, 1.0e-8], [0.4, 1.0e-12], [0.7, 1.0e-15]]


class DeepROptions(Section):
    temperatures: Annotated[list[list[Real]] | None, checked(_temperatures), AfterValidator(_as_pairs)] = opt(
        None, "noise temperature T as [start_epoch, T] pairs (noise std sqrt(2 eta T)); null: the paper's "
              "1e-5, 1e-8, 1e-12, 1e-15 from 0, 12.5%, 40%, 70% of train.epochs (epochs 0/25/80/140 of 200)")
    l1: Real = opt(1e-5, "L1 penalty on the active weights (the sparse tensors get no weight decay)", ge=0)
    eta: Real | None = opt(0.01, "eta of the noise std sqrt(2 eta T): the spec's 0.01; null: the current LR "
                           "(Bellec et al. tie it to the learning rate); the L1 step always uses the LR", gt=0)


def reallocator(cfg, steps_per_epoch: int):
    from ..sparse import deepr

    o = cfg.sparsity.deepr
    return deepr(temperatures=o.temperatures, l1=o.l1, noise_eta=o.eta,
                 report_every=steps_per_epoch)


def check(cfg) -> None:
    epochs_within("sparsity.deepr.temperatures", [s for s, _ in cfg.sparsity.deepr.temperatures][1:],
                  cfg.train.epochs, null="the paper's 1e-5 to 1e-15 from 0, 12.5%, 40%, 70% of it")


def resolve(cfg) -> None:
    if cfg.sparsity.deepr.temperatures is None:
        cfg.sparsity.deepr.temperatures = scaled(PAPER_TEMPERATURES, cfg.train.epochs)


register(Method("deepr", "dynamic", "DeepR: noise and L1 on active weights, sign flips deactivated, random "
                "reactivation in the same tensor", options=DeepROptions, reallocator=reallocator, check=check,
                resolve=resolve, resolves=("temperatures",)))
