"""Check a fresh cluster before spending GPU hours on it: one task per alive
node reports what a trial would see there (GPUs, the data root, which copy of
dsr_tune it imports: the job's upload, not the one `ray up` installed), and
logs an MLflow run from that node, proving the node reaches the head's
tracking server.

    launch/cluster.sh submit -- python launch/check_cluster.py [--data /data/imagenet]

Prints one line per node and exits 1 if any node failed a check. The MLflow
runs land in the experiment "cluster-check", tagged with the node id.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys


def probe(data: str | None) -> dict:
    """Runs on one node, as a Ray task."""
    import mlflow
    import ray

    import dsr_tune
    from dsr_tune.tracking.store import fast_fail_env

    fast_fail_env()  # an unreachable server fails in seconds, not after MLflow's minutes of retries
    node_id = ray.get_runtime_context().get_node_id()
    report = {"node_id": node_id, "host": socket.gethostname(), "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
              "gpus": len(ray.get_gpu_ids()), "code": os.path.dirname(dsr_tune.__file__), "data": None, "errors": []}
    if not report["tracking_uri"]:
        report["errors"].append("MLFLOW_TRACKING_URI is not set on this node (see the cluster config)")
    else:
        try:
            mlflow.set_experiment("cluster-check")
            with mlflow.start_run(run_name=f"node-{node_id[:8]}", tags={"node_id": node_id, "host": report["host"]}):
                mlflow.log_metric("gpus", report["gpus"])
        except Exception as exc:  # an unreachable server: report it, check the other nodes too
            report["errors"].append(f"MLflow: {type(exc).__name__}: {str(exc)[:200]}")
    if data:
        report["data"] = os.path.isdir(os.path.join(data, "train"))
        if not report["data"]:
            report["errors"].append(f"{data}/train is missing")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a data root every GPU node must have (e.g. /data/imagenet)")
    args = parser.parse_args(argv)

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    # num_cpus=0: the check must run even on a node whose CPUs are all taken;
    # a GPU node's task also asks for one GPU so ray.get_gpu_ids() shows it.
    tasks = [ray.remote(probe).options(
        num_cpus=0, num_gpus=1 if n["Resources"].get("GPU", 0) >= 1 else 0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
    ).remote(args.data if n["Resources"].get("GPU", 0) else None) for n in nodes]
    reports = ray.get(tasks)
    for r in reports:
        print(json.dumps(r), flush=True)
    failed = [r for r in reports if r["errors"]]
    print(f"{len(reports)} node(s) checked, {len(failed)} with errors", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
