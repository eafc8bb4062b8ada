"""Start a local Ray, or join a cluster: where it listens, its token, its end.

A local Ray this package starts (``dsr-tune sweep``, ``dsr-tune train ...
train.workers=N``, :func:`ray_session` without an address):

- listens on 127.0.0.1 only, unless ``DSR_TUNE_RAY_HOST`` says otherwise
  (see :func:`ray_host` and docs/network.md). Ray 2.60 binds its servers to
  loopback only when its node IP is a loopback address, and ``ray.init``
  turns ``_node_ip_address="127.0.0.1"`` into the machine's external IP
  (``services.resolve_ip_for_localhost``) unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes
  ``services.get_node_ip_address`` answer 127.0.0.1 (ray_constants.py);
- uses a token file of mode 0600 (Ray 2.60 writes ``~/.ray/auth_token``
  with the umask's mode, usually 0644);
- leaves no process behind, even when its driver is SIGKILLed (see
  :mod:`.reaper`): processes of an earlier session whose driver is dead are
  stopped at the next start.

Joining a cluster (an address, or $RAY_ADDRESS) changes none of that
cluster's settings.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from .. import config as C
from . import reaper

log = logging.getLogger("dsr_tune")

# Ray settings for every run this package starts (workers get them through the job's runtime env)
TRAIN_ENV = {
    # Train V2 workers wait in ray.train.report until the controller polls (every 2 s by default):
    # a stall of up to 2 s per epoch, most of a short epoch
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
# Only on a Ray started here: a local machine is never preempted, and the watcher logs an error
# line per run there. A real cluster keeps it (spot nodes announce their preemption through it).
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

HOST_ENV = "DSR_TUNE_RAY_HOST"
LOOPBACK = "127.0.0.1"
ANY = "0.0.0.0"
# Ray reads it when ray._private.ray_constants is imported; "0" = node IP 127.0.0.1 (on Linux too)
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_env(on_cluster: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables a run sets for Ray (a value the user already
    exported wins), also put into this process's environment."""
    wanted = {**TRAIN_ENV, **(extra or {}), **({} if on_cluster else LOCAL_RAY_ENV)}
    env = {k: os.environ.get(k, v) for k, v in wanted.items()}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    # a notice that token auth is on for the local cluster (the default we keep), once per run
    # (no public setting mutes it; tests/test_ray_internals.py fails if Ray moves that module)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    return env


_joined = False  # set by ray_session while this process is connected to an existing cluster


def joined() -> bool:
    """True while :func:`ray_session` holds a connection to an existing cluster."""
    return _joined


def joins_cluster(address: str | None = None) -> bool:
    """True when :func:`ray_session` with ``address`` joins an existing cluster
    (an address given, or $RAY_ADDRESS, as in a Ray job) rather than starting a
    local Ray. On an autoscaling cluster that is the question to ask, not how
    many nodes are up now: nodes join later."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def ray_host(value: str | None = None) -> str:
    """Where a local Ray listens: ``value``, else $DSR_TUNE_RAY_HOST, else 127.0.0.1.

    Returns 127.0.0.1 (unset, ``localhost`` or a loopback address: loopback only),
    0.0.0.0 (Ray's own defaults: the IP it detects, servers on every
    interface) or an IP address of this machine (Ray's node IP: what other
    nodes dial). Raises ConfigError for anything else.
    """
    raw = (value if value is not None else os.environ.get(HOST_ENV, "")).strip()
    if raw in ("", "localhost", LOOPBACK):
        return LOOPBACK
    if raw in (ANY, "::"):
        return ANY
    allowed = "allowed: 127.0.0.1 (the default), 0.0.0.0 (Ray's defaults, every interface) or an IP of this machine"
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise C.ConfigError(HOST_ENV, f"{raw!r} is not an IP address; {allowed}") from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(ip), 0))  # only an address of this machine can be bound
        except OSError:
            raise C.ConfigError(HOST_ENV, f"{raw} is not an address of this machine; {allowed}") from None
    return LOOPBACK if ip.is_loopback else str(ip)  # Ray's loopback mode is 127.0.0.1, whichever was named


def _bind_kwargs(host: str) -> dict:
    """``ray.init`` arguments for ``host`` (see :func:`ray_host`)."""
    if host == LOOPBACK:
        return {"dashboard_host": LOOPBACK}  # the node IP comes from _loopback_node_ip
    if host == ANY:
        return {"dashboard_host": ANY}
    return {"_node_ip_address": host, "dashboard_host": host}


def _loopback_env() -> dict[str, str]:
    """Environment for a Ray on 127.0.0.1 only. Ray's node IP: forced (its only switch). The
    collective libraries' sockets: on the loopback interface unless the user chose one (gloo's
    pairs otherwise bind to whatever the host name resolves to, NCCL's bootstrap to the first
    non-loopback interface)."""
    env = {_RAY_CLUSTER_ENV: "0"}
    names = {name for _, name in socket.if_nameindex()}
    lo = next((n for n in ("lo", "lo0") if n in names), None)
    for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if lo and key not in os.environ:
            env[key] = lo
    return env


@contextlib.contextmanager
def _loopback_node_ip(on: bool) -> Iterator[None]:
    """While active, Ray's node IP on this machine is 127.0.0.1, for this process
    and the Ray processes it starts (they inherit the environment, see
    :func:`_loopback_env`). If Ray was imported before, its constant (read at
    import) is set too: the setting has no other entry point in Ray 2.60."""
    if not on:
        yield
        return
    env = _loopback_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    constants = sys.modules.get("ray._private.ray_constants")
    old_const = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = old_const


def token_path() -> Path | None:
    """The token file a local Ray reads (and creates when missing), or None
    when it reads none (token auth off, or the token in $RAY_AUTH_TOKEN)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if (mode is not None and mode.lower() != "token") or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    explicit = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(explicit) if explicit else Path.home() / ".ray" / "auth_token"


def secure_token(path: Path) -> None:
    """Make ``path`` a token file of mode 0600: created so, with a fresh token,
    when missing (before Ray would write it with the umask's mode); narrowed to
    0600 when it is ours and readable by others; a warning when it is not ours."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process wrote it first: checked below
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # what Ray's own generator writes (256 random bits, hex)
            log.info("Ray token: created %s (mode 0600)", path)
    st = path.stat()
    if st.st_mode & 0o077:
        if st.st_uid != os.getuid():
            log.warning("Ray token %s is readable by others and not yours: make it mode 0600", path)
            return
        path.chmod(0o600)
        log.info("Ray token: %s was mode %o, now 0600", path, st.st_mode & 0o777)


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where this package records the local Ray sessions it starts (one small JSON file
    each): ``$XDG_STATE_HOME/dsr_tune/ray_sessions``, by default under ``~/.local/state``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return Path(base) / "dsr_tune" / "ray_sessions"


def _stop_orphans() -> None:
    for s, procs in reaper.stop_orphans(state_dir()).items():
        log.warning("stopped %d process(es) left by an earlier local Ray of dsr-tune (driver pid %d, dead; %s): %s",
                    len(procs), s.driver_pid, s.session_dir or "session folder unknown",
                    ", ".join(f"{p.pid} {p.name[:40]}" for p in procs[:6]))


@contextlib.contextmanager
def _marked_environment(marker: str) -> Iterator[None]:
    """The session marker in this process's environment: Ray's processes started
    inside the block inherit it, later children of this process do not."""
    previous = os.environ.get(reaper.MARKER)
    os.environ[reaper.MARKER] = marker
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(reaper.MARKER, None)
        else:
            os.environ[reaper.MARKER] = previous


@contextlib.contextmanager
def _local_ray(cpus: float, init_kwargs: dict) -> Iterator[None]:
    """A local Ray for the duration of the block; see the module docstring."""
    import ray

    host = ray_host()
    if host != LOOPBACK:
        log.warning("%s=%s: the local Ray listens beyond 127.0.0.1 (see docs/network.md)", HOST_ENV, host)
    _stop_orphans()
    cores = os.cpu_count() or 1
    if cpus > cores:
        log.warning("%g CPUs asked for on a %d-core machine: workers will share cores", cpus, cores)
    token = token_path()
    if token is not None:
        secure_token(token)
    session = reaper.new_session()
    watchdog = reaper.spawn_watchdog(session, state_dir())
    kwargs = {"address": "local", "num_cpus": max(cores, math.ceil(cpus)), "logging_level": logging.WARNING,
              **_bind_kwargs(host), **init_kwargs}
    try:
        with _loopback_node_ip(host == LOOPBACK):
            with _marked_environment(session.marker):
                context = ray.init(**kwargs)
            session = _recorded(session, (getattr(context, "address_info", None) or {}).get("session_dir"),
                                watchdog)
            if host == LOOPBACK and ray.util.get_node_ip_address() != LOOPBACK:
                log.warning("the local Ray's node IP is %s, not 127.0.0.1: some of its ports listen beyond "
                            "loopback", ray.util.get_node_ip_address())
            try:
                yield
            finally:
                ray.shutdown()
    finally:
        _end(session, watchdog)


def _recorded(session: reaper.Session, folder: str | None, watchdog) -> reaper.Session:
    """``session`` with its Ray session folder, written to its state file and told to the watchdog."""
    session = reaper.Session(session.marker, folder)
    reaper.record(session, state_dir())
    with contextlib.suppress(OSError, ValueError):
        watchdog.stdin.write(f"{folder or ''}\n".encode())
        watchdog.stdin.flush()
    return session


def _end(session: reaper.Session, watchdog) -> None:
    """After ``ray.shutdown()``: stop what is left of the session (Ray's agents
    may take a minute to exit), forget it, then release the watchdog."""
    left = reaper.processes(session)
    if left:
        log.debug("stopping %d process(es) left after ray.shutdown(): %s", len(left),
                  [(p.pid, p.name[:40]) for p in left])
        reaper.stop(left)
    reaper.state_file(session, state_dir()).unlink(missing_ok=True)
    with contextlib.suppress(OSError, ValueError):
        watchdog.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        watchdog.wait(timeout=10)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, cpus: float = 0.0, **init_kwargs):
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray
    that stops on exit, listening on 127.0.0.1 (see the module docstring).
    A local Ray gets at least ``cpus`` logical CPUs, so a run larger than this
    machine still starts (its workers share the cores). ``init_kwargs`` go to
    ``ray.init`` (the sweep's quieter logging, its env vars). Yields True when
    Ray was started here. Inside an initialised Ray: no-op."""
    global _joined
    import ray

    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        with _local_ray(cpus, init_kwargs):
            yield True
        return
    ray.init(address=address, **init_kwargs)
    _joined = True
    try:
        yield False
    finally:
        _joined = False
        ray.shutdown()
