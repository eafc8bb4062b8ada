"""RigL (Evci et al. 2020): drop by magnitude with a cosine-decayed fraction,
grow where the dense gradient is largest. Keys: ``sparsity.rigl.*``."""

from typing import Literal

from ..schema import Real, Section, opt
from .registry import TIMING, Method, register, timing


class RigLOptions(Section):
    drop_fraction: Real = opt(0.3, "share of each tensor's active weights dropped per update at the start "
                              "(RigL's 0.3)", gt=0, le=1)
    drop_decay: Literal["cosine", "constant"] = opt("cosine", "the drop fraction decays to 0 at "
                                                    "sparsity.stop_epoch (cosine) or stays (constant)")


def drop_args(cfg, options, steps_per_epoch: int) -> dict:
    """RigL's and SNFS's drop schedule: the cosine reaches 0 at stop_epoch, when
    reallocation ends (not at train.epochs, so a run extended on resume continues exactly)."""
    return {"drop_fraction": options.drop_fraction, "decay": options.drop_decay,
            "end_step": cfg.sparsity.stop_epoch * steps_per_epoch}


def reallocator(cfg, steps_per_epoch: int):
    from ..sparse import rigl

    return rigl(**timing(cfg), **drop_args(cfg, cfg.sparsity.rigl, steps_per_epoch))


register(Method("rigl", "dynamic", "RigL: drop by magnitude (cosine-decayed fraction), grow where the dense "
                "gradient is largest", options=RigLOptions, reads=TIMING,
                dense_grad="updates", reallocator=reallocator))
