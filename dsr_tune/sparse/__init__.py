"""The sparse core: masks, and the methods that move them. Imports torch only.

Use inside any PyTorch loop::

    from dsr_tune.sparse import Masking, dsr
    masking = Masking(model, optimizer, sparsity=0.9, method=dsr(), hook=True)
    # or set_(), deepr(), rigl(end_step=...), snfs(end_step=...), a Reallocator of
    # your own parts, or None (static); distribution="erk" for ERK's initial spread
    # ... the usual loop; call masking.set_epoch(epoch) at each epoch start
"""

from .distribution import DISTRIBUTIONS, layer_counts
from .dynamics import DEEPR_TEMPERATURES, DeepRDynamics, DenseMomentum
from .grow import (GradientGrowth, ProportionalToScore, ProportionalToSurvivors, RandomGrowth, SameTensor,
                   ScoreGrowth, proportional_counts, sample_positions, top_positions)
from .masking import Masking, default_sparse_names, select_names, unwrap
from .reallocators import Reallocator, deepr, dsr, rigl, set_, snfs
from .prune import MagnitudeFractionPrune, SignFlipPrune, ThresholdPrune, drop_count, keep_one, set_fraction
from .schedule import CosineDecay, EpochTable, PeriodSchedule, every_step

__all__ = [
    "DEEPR_TEMPERATURES", "DISTRIBUTIONS", "CosineDecay", "DeepRDynamics", "DenseMomentum", "EpochTable",
    "every_step", "GradientGrowth", "MagnitudeFractionPrune", "Masking", "PeriodSchedule",
    "ProportionalToScore", "ProportionalToSurvivors", "RandomGrowth", "Reallocator", "SameTensor", "ScoreGrowth",
    "SignFlipPrune", "ThresholdPrune", "deepr", "default_sparse_names", "drop_count", "dsr",
    "keep_one", "layer_counts", "proportional_counts", "rigl", "sample_positions", "select_names", "set_",
    "set_fraction", "snfs", "top_positions", "unwrap",
]
