"""The baselines' own models: what a comparison row needs beyond the sparse core.

- :mod:`.thin`: the thin dense width solver (bisection over the real width);
- :mod:`.hashed`: HashedNet layers over any registry model's sparse layers.

GMP and DSD are magnitude-pruning schedules in
``dsr_tune.sparse.pruning_schedules``; how each baseline is built from a
config is its method's file in :mod:`dsr_tune.methods`.
"""

from .hashed import HashedWeight, bank_names, hash_layers
from .thin import ThinSolution, solve_width, sparse_target

__all__ = ["HashedWeight", "ThinSolution", "bank_names", "hash_layers", "solve_width", "sparse_target"]
