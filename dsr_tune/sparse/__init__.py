"""The sparse core: masks, and the methods that move them. Imports torch only.

Use inside any PyTorch loop::

    from dsr_tune.sparse import Masking, dsr
    masking = Masking(model, optimizer, sparsity=0.9, method=dsr(), hook=True)
    # ... the usual loop; call masking.set_epoch(epoch) at each epoch start
"""

from .distribution import DISTRIBUTIONS, layer_counts
from .grow import ProportionalToSurvivors, RandomGrowth, SameTensor, proportional_counts, sample_positions
from .masking import Masking, default_sparse_names, select_names, unwrap
from .methods import METHODS, Reallocator, build_method, dsr
from .prune import ThresholdPrune, keep_one
from .schedule import EveryStep, PeriodSchedule

__all__ = [
    "DISTRIBUTIONS", "EveryStep", "METHODS", "Masking", "PeriodSchedule", "ProportionalToSurvivors",
    "RandomGrowth", "Reallocator", "SameTensor", "ThresholdPrune", "build_method", "default_sparse_names",
    "dsr", "keep_one", "layer_counts", "proportional_counts", "sample_positions", "select_names", "unwrap",
]
