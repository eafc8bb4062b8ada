"""SET (Mocanu et al. 2018) on DSR's period schedule: each tensor drops its
smallest-magnitude fraction and regrows as many at random in the same tensor.
Keys: ``sparsity.set.*``."""

from ..schema import ConfigError, Real, Section, opt
from .registry import TIMING, Method, register, timing


class SETOptions(Section):
    fraction: Real = opt(0.0, "share of each tensor's active weights replaced per reallocation; 0: "
                         "sparsity.dsr.target_pruned / budget (as many moved as DSR's Np)", ge=0, le=1)


def reallocator(cfg, steps_per_epoch: int):
    from ..sparse import set_

    return set_(**timing(cfg), fraction=cfg.sparsity.set.fraction or None,
                target_pruned=cfg.sparsity.dsr.target_pruned)


def masking(cfg, model, optimizer, steps_per_epoch: int):
    from .registry import sparse_masking

    try:
        return sparse_masking(cfg, model, optimizer, reallocator(cfg, steps_per_epoch))
    except ValueError as exc:  # f = Np / budget above 1
        if "target_pruned" not in str(exc):
            raise
        raise ConfigError("sparsity.dsr.target_pruned", f"{exc}; lower it or set sparsity.set.fraction") from None


register(Method("set", "dynamic", "SET: per-tensor smallest-magnitude fraction, regrown at random in the "
                "same tensor", options=SETOptions, reads=(*TIMING, "dsr.target_pruned"), reallocator=reallocator, masking=masking))
