"""Ray Train's torch process group with its rendezvous store on 127.0.0.1 only.

Rank 0 of a Ray Train run hosts PyTorch's TCPStore, the rendezvous every
rank dials; its server listens on every interface (torch 2.14: TCPStore
has no bind address, only ``master_listen_fd``, a listening socket it takes
over). On a Ray whose node IP is 127.0.0.1 every worker is on this machine,
so rank 0 binds a socket to 127.0.0.1, the store takes it over, and every
rank joins the process group through it.

Only the rendezvous differs from Ray's own setup (``ray.train.torch.config.
_TorchBackend.on_start``, Ray 2.60): the backend choice, the torch
environment variables (RANK, LOCAL_RANK, ...) and the shutdown are Ray's.
Imported by the Ray Train controller: ray and torch are imported here at
module level on purpose (this module is only loaded where they run).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK = "127.0.0.1"

_listen_fd: int | None = None  # rank 0: the bound socket's fd until the store takes it over


def wanted() -> bool:
    """True when this process's Ray runs on 127.0.0.1 only, so every worker is local."""
    return ray.is_initialized() and ray.util.get_node_ip_address() == LOOPBACK


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group meets through a store on 127.0.0.1."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


def _listen() -> int:
    """Rank 0: bind and listen on 127.0.0.1 (a free port); returns the port."""
    global _listen_fd
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    _listen_fd = sock.detach()  # the TCPStore owns the fd from here on (and closes it)
    return port


def _join(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    """Every rank: the store (rank 0 serves it on the bound socket), then the process group."""
    global _listen_fd
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = LOOPBACK, str(port)  # for code that reads them
    if backend == "nccl":  # as Ray does: fail on an NCCL timeout rather than hang
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        fd, _listen_fd = _listen_fd, None
        store = dist.TCPStore(LOOPBACK, port, world_size, True, timeout, wait_for_workers=False,
                              master_listen_fd=fd)
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        # TorchTrainer has set backend_config.backend (gloo, or nccl with GPUs) before this runs
        port = worker_group.execute_single(0, _listen)
        if not isinstance(worker_group, V1WorkerGroup):  # Train V1 sets them in on_training_start
            worker_group.execute(_set_torch_distributed_env_vars)
        n = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _join, backend=backend_config.backend, world_rank=i, world_size=n,
                                                   port=port, timeout_s=backend_config.timeout_s)
                 for i in range(n)])
