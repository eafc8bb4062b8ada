"""``dsr-tune compare``: every row of the paper's comparison for one config, no search.

The config as given is the selected configuration at every sparsity; the
planner (:mod:`.plan`) makes every row from it (the controls at 1x and
``sparsity.epoch_factor`` x, GMP after its dense run, the ablations after
their DSR run), each on ``seeds`` seeds (train.seed, +1, ...). It is a sweep
without a search phase: the same folder (sweep.json, ``runs/paired/...``),
an MLflow parent run with a child per run, and the same report. Without a
cluster or a concurrency the runs train one after another in this process
(no Ray); with ``address`` or ``concurrency`` they go through Tune like a
sweep's. Run it again to continue an interrupted comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import config as C
from . import plan as P
from .space import for_compare


def default_methods() -> list[str]:
    """Every method row (the ablations only on request: ``--methods ablations``)."""
    return P.default_labels()


def compare(cfg: C.Config, out_dir: str | Path, *, sparsities: Sequence[float], seeds: int = 3,
            methods: Sequence[str] | None = None, address: str | None = None, concurrency: int = 0,
            name: str | None = None, tracking_uri: str | None = None, verbose: bool = False):
    """Run (or finish) the comparison in ``out_dir``; returns the phases' Outcome."""
    from .folder import SWEEP_FILE
    from .phases import run

    space = for_compare(cfg, name=name or Path(out_dir).name, sparsities=list(sparsities),
                        seeds=[cfg.train.seed + i for i in range(seeds)], labels=list(methods or default_methods()),
                        tracking_uri=tracking_uri)
    if concurrency:
        space.search.max_concurrent = concurrency
    t = cfg.train
    if (address or concurrency) and t.workers <= 1 and t.device not in ("auto", "cpu"):
        # on Ray a run trains on the GPU its trial reserved, or on the CPU (the others are hidden)
        raise C.ConfigError("train.device", f"{t.device!r}: on Ray each run trains on the device its trial "
                                            "reserves; use train.device=auto with train.workers=1 "
                                            "train.use_gpu=true (one GPU per run), or cpu")
    out_dir = Path(out_dir).expanduser().resolve()
    resume = (out_dir / SWEEP_FILE).exists()
    return run(space, out_dir, resume=resume, address=address, verbose=verbose,
               local=not (address or concurrency))
