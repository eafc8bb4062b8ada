"""Sparse momentum / SNFS (Dettmers & Zettlemoyer 2019): redistribution across
tensors by mean momentum, growth by momentum. Keys: ``sparsity.snfs.*``."""

from typing import Literal

from ..schema import Real, Section, opt
from .registry import TIMING, Method, register, timing
from .rigl import drop_args


class SNFSOptions(Section):
    drop_fraction: Real = opt(0.5, "share of each tensor's active weights pruned per update at the start "
                              "(the paper's prune rate 0.5)", gt=0, le=1)
    drop_decay: Literal["cosine", "constant"] = opt("cosine", "the prune rate decays to 0 at "
                                                    "sparsity.stop_epoch (cosine) or stays (constant)")


def reallocator(cfg, steps_per_epoch: int):
    from ..sparse import snfs

    return snfs(**timing(cfg), **drop_args(cfg, cfg.sparsity.snfs, steps_per_epoch),
                momentum=cfg.optim.momentum)


register(Method("snfs", "dynamic", "SNFS (sparse momentum): regrowth across tensors by mean momentum, "
                "inside them where momentum is largest", options=SNFSOptions, reads=TIMING,
                dense_grad="steps", reallocator=reallocator))
