"""The few Ray internals the package relies on, where Ray 2.60 has no public API
for the same thing. Each test fails when Ray renames or moves what the code uses,
so an upgrade cannot silently undo it (the code's comments say why each is used)."""

import importlib
import logging


def test_train_v2_report_logger_is_named_after_its_source_file():
    # distributed/worker.py mutes Train V2's per-rank "Reporting training result" lines:
    # that logger is named after context.py's path, so no LoggingConfig level reaches it
    from ray.train.v2._internal.execution import context

    assert isinstance(context.logger, logging.Logger) and context.logger.name == context.__file__


def test_token_setup_logger_module_exists():
    # distributed/: the "token authentication is on" notice comes from this module's logger
    module = importlib.import_module("ray._private.authentication.authentication_token_setup")
    assert module.__name__ == "ray._private.authentication.authentication_token_setup"


def test_head_node_resource_name():
    # sweep: trial processes are placed on the head node (beside the sweep folder) by this
    # resource, which Ray gives the head node of every cluster
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    from dsr_tune.sweep.tune import HEAD_NODE_RESOURCE

    assert HEAD_NODE_RESOURCE == HEAD_NODE_RESOURCE_NAME


def test_torch_backend_internals_the_loopback_store_builds_on():
    # distributed/loopback.py: a TCPStore bound to 127.0.0.1 needs its own backend; it subclasses
    # Ray's torch backend and reuses its env-var setup (no public hook for the rendezvous store)
    from ray.train._internal.worker_group import WorkerGroup
    from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend

    assert callable(_set_torch_distributed_env_vars) and hasattr(_TorchBackend, "on_start")
    assert hasattr(TorchConfig, "backend_cls") and isinstance(WorkerGroup, type)


def test_localhost_switch_of_ray_constants():
    # distributed/session.py: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is what makes Ray 2.60 keep the
    # node IP at 127.0.0.1 (every other loopback address is swapped for the external one)
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)


def test_tune_slow_operation_warnings_come_from_the_muted_logger(monkeypatch):
    # sweep/tunephase.py mutes Tune's "may be a performance bottleneck" warnings by this logger's name
    import time

    from ray.tune.utils import util

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("ray.tune.utils.util")
    logger.addHandler(handler)
    monkeypatch.setattr(util, "START_OF_TIME", time.time() - 100)  # Tune is quiet in its first minute
    try:
        with util.warn_if_slow("probe", threshold=1e-6):
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
    assert [r.name for r in seen if "probe" in r.getMessage()] == ["ray.tune.utils.util"]
