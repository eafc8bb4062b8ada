"""The baselines and ablations the paper compares DSR with: everything a
comparison row needs beyond the sparse core's reallocation methods.

- :mod:`.thin`: thin dense width solver (bisection over the real width);
- :mod:`.hashed`: HashedNet layers over any registry model's sparse layers;
- :mod:`.setup`: the trainer's hooks (models, maskings, masks/inits from runs);
- :mod:`.derive`: ``baseline_config(cfg, label)``, each row's config from the
  DSR config (static baselines at ``epoch_factor`` x the epochs).

GMP and DSD themselves are magnitude-pruning schedules in ``dsr_tune.sparse.gmp``.
Which labels exist, and what each one runs, is :data:`dsr_tune.methods_table.TABLE`.
"""

from .derive import ABLATIONS, baseline_config, dependencies, known_labels, parse_label, stretched
from .hashed import HashedWeight, bank_names, hash_layers
from .thin import ThinSolution, solve_width, sparse_target, thin_width

__all__ = ["ABLATIONS", "HashedWeight", "ThinSolution", "bank_names", "baseline_config", "dependencies",
           "hash_layers", "known_labels", "parse_label", "solve_width", "sparse_target", "stretched", "thin_width"]
