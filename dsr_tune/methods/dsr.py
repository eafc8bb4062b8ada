"""DSR (Mostafa & Wang 2019): prune below an adaptive global threshold H, regrow
across tensors in proportion to their survivors. Keys: ``sparsity.dsr.*``."""

from ..schema import Real, Section, opt
from .registry import TIMING, Method, register, timing


class DSROptions(Section):
    init_threshold: Real = opt(1e-3, "initial pruning threshold H", gt=0)
    target_pruned: int = opt(20000, "Np: target number of weights pruned per reallocation (SET's default fraction reads it too)", ge=1)
    delta: Real = opt(0.1, "tolerance on Np before H is halved or doubled", ge=0, lt=1)
    threshold_factor: Real = opt(2.0, "factor H is divided or multiplied by", gt=1)


def reallocator(cfg, steps_per_epoch: int):
    from ..sparse import dsr

    o = cfg.sparsity.dsr
    return dsr(**timing(cfg), init_threshold=o.init_threshold, target_pruned=o.target_pruned,
               delta=o.delta, factor=o.threshold_factor)


register(Method("dsr", "dynamic", "dynamic sparse reparameterization: adaptive global threshold, "
                "regrowth across tensors by survivors", options=DSROptions, reads=TIMING, reallocator=reallocator))
