"""Ray Train: the same trainer on many workers and nodes.

The trainer (:mod:`dsr_tune.train`) knows nothing of Ray; this package runs it
as Ray Train's per-worker function. Ray is imported only inside functions
(and at the top of :mod:`.loopback`, which only those functions import).

    from dsr_tune.distributed import fit, ray_session
    with ray_session():                  # a local Ray, or RAY_ADDRESS
        summary = fit(cfg, run_dir="runs/digits2", workers=2)
    summary.metrics["test_acc"], summary.checkpoint

A local Ray listens on 127.0.0.1 and leaves no process behind (:mod:`.session`,
:mod:`.reaper`; docs/network.md). See the README section "Many workers and
nodes (Ray Train)".
"""

from .launcher import FitSummary, LoggerSpec, fit, launch, worker_resources
from .session import LOCAL_RAY_ENV, TRAIN_ENV, joins_cluster, ray_env, ray_host, ray_session

__all__ = ["FitSummary", "LoggerSpec", "fit", "joins_cluster", "launch", "ray_env", "ray_host", "ray_session",
           "worker_resources", "TRAIN_ENV", "LOCAL_RAY_ENV"]
