"""A local Ray of the tool listens on 127.0.0.1 only, keeps its token file 0600,
and leaves no process behind: at its end, after its driver is SIGKILLed (the
watchdog), and at the next start when the watchdog died too. The reaper signals
only processes of a session whose driver is dead, never anything else.

Listening sockets are read from /proc/net/tcp{,6} and /proc/<pid>/fd (psutil
is only vendored inside Ray here). The slow tests start Ray 4 times (2-3 minutes
on 2 cores); every process they start is killed at the end, also on failure.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dsr_tune import cli
from dsr_tune.distributed import reaper, session

from conftest import DIGITS
# (process name prefix, why) of sockets allowed beyond 127.0.0.1; docs/network.md explains the list
EXCEPTIONS: dict[str, str] = {}


# ------------------------------------------------------------------ listening sockets from /proc


def _tcp_listeners() -> dict[int, tuple[ipaddress._BaseAddress, int]]:
    """{socket inode: (address, port)} of every listening TCP socket in this network namespace."""
    out = {}
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = f[1].split(":")
            raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.IPv4Address(raw) if width == 8 else ipaddress.IPv6Address(raw)
            out[int(f[9])] = (ip, int(hex_port, 16))
    return out


def listening(pid: int, table: dict | None = None) -> list[tuple[ipaddress._BaseAddress, int]]:
    """The (address, port) pairs ``pid`` listens on."""
    table = _tcp_listeners() if table is None else table
    found = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in table:
            found.append(table[int(link[8:-1])])
    return found


def is_loopback(ip) -> bool:
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def test_proc_reader_sees_a_wildcard_and_a_loopback_socket():
    import socket

    with socket.socket() as lo, socket.socket(socket.AF_INET6) as anyv6:
        lo.bind(("127.0.0.1", 0))
        lo.listen()
        anyv6.bind(("::", 0))
        anyv6.listen()
        seen = dict((port, ip) for ip, port in listening(os.getpid()))
        assert is_loopback(seen[lo.getsockname()[1]]) and not is_loopback(seen[anyv6.getsockname()[1]])


# ------------------------------------------------------------------ fast: settings, token, reaper rules


def test_ray_host_values(monkeypatch, tmp_path, capsys):
    assert session.ray_host("") == session.ray_host("localhost") == session.ray_host("::1") == "127.0.0.1"
    assert session.ray_host("0.0.0.0") == session.ray_host("::") == "0.0.0.0"
    for bad, why in (("bogus", "not an IP address"), ("203.0.113.7", "not an address of this machine")):
        with pytest.raises(Exception, match=why):
            session.ray_host(bad)
        # the CLI refuses it before any work: exit 2, one line, nothing on disk
        monkeypatch.setenv(session.HOST_ENV, bad)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        out = tmp_path / "run"
        assert cli.main(["train", str(DIGITS), "train.workers=2", "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dsr-tune: error: DSR_TUNE_RAY_HOST") and why in err[0]
        assert not out.exists()


def test_token_file_is_created_or_narrowed_to_0600(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    path = session.token_path()
    assert path == tmp_path / ".ray" / "auth_token"
    session.secure_token(path)  # missing: created 0600 with a fresh 256-bit token
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text()) == 64
    token = path.read_text()
    path.chmod(0o644)
    session.secure_token(path)  # readable by others: narrowed, the token kept
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == token
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert session.token_path() == tmp_path / "elsewhere"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x")  # the token in the environment: no file
    assert session.token_path() is None
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert session.token_path() is None


def _sleeper(tmp_path: Path, name: str, env: dict | None = None, hold: Path | None = None) -> subprocess.Popen:
    """``sleep 60`` titled ``name``, with ``env`` added, holding ``hold`` open."""
    script = (f"exec 3<'{hold}'; " if hold else "") + f"exec -a '{name}' sleep 60"
    return subprocess.Popen(["bash", "-c", script], env={**os.environ, **(env or {})}, start_new_session=True)


def test_reaper_stops_only_the_sessions_of_dead_drivers(tmp_path):
    dead = subprocess.Popen(["true"])  # a driver that has exited: same marker layout, pid gone
    dead_start = reaper.start_time(dead.pid)
    dead.wait()
    dead_marker = f"{dead.pid}:{dead_start or 1}:0badc0de"
    folder = tmp_path / "ray" / "session_x"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "agent.log").write_text("")
    state = tmp_path / "state"
    reaper.record(reaper.Session(dead_marker, str(folder)), state)
    live = reaper.new_session()  # this test process is its driver: alive
    procs = {
        "orphan": _sleeper(tmp_path, "orphan", {reaper.MARKER: dead_marker}),
        "agent": _sleeper(tmp_path, "ray::FakeAgent", hold=folder / "logs" / "agent.log"),
        "live": _sleeper(tmp_path, "live", {reaper.MARKER: live.marker}),
        "unmarked": _sleeper(tmp_path, "unmarked"),
        "reader": _sleeper(tmp_path, "tail", hold=folder / "logs" / "agent.log"),  # not titled ray::
        "other": _sleeper(tmp_path, "other", {reaper.MARKER: "not-a-marker-of-ours"}),
    }
    try:
        time.sleep(0.5)  # the exec'd titles and fds are in place
        stopped = reaper.stop_orphans(state, grace=2.0)
        gone = {k for k, p in procs.items() if p.poll() is not None}
        assert gone == {"orphan", "agent"}, gone
        assert [s.marker for s in stopped] == [dead_marker]
        assert not reaper.recorded(state)  # the dead driver's state file is removed
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()


# ------------------------------------------------------------------ slow: real local Rays


@pytest.fixture
def ray_env(tmp_path):
    """An environment whose token, state files and Ray temp folder are the test's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                                                             "RAY_AUTH_MODE", session.HOST_ENV)}
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"))
    (tmp_path / "home").mkdir()
    return env


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _sessions(env: dict) -> list[reaper.Session]:
    return [s for _, s in reaper.recorded(session.state_dir(env))]


def _alive(procs: list[reaper.Proc]) -> list[reaper.Proc]:
    return [p for p in procs if reaper.start_time(p.pid) == p.start]


@pytest.mark.slow
def test_ray_of_a_train_run_listens_on_loopback_only_and_ends_with_the_run(tmp_path, ray_env):
    log = tmp_path / "train.log"
    with log.open("w") as f:  # a file, not a pipe: nothing blocks while the test samples
        proc = subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", "train", str(DIGITS), "train.workers=2",
                                 "train.stop_after=2", "--output", str(tmp_path / "run")], cwd=tmp_path, env=ray_env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, reaper.Proc] = {}
    sockets: dict[tuple, str] = {}  # (pid, address, port) -> process name
    try:
        while proc.poll() is None:  # sample the run's processes and their sockets as it goes
            table = _tcp_listeners()
            procs = reaper.family(proc.pid) + [p for s in _sessions(ray_env) for p in reaper.processes(s)]
            for p in procs:
                seen[p.pid] = p
                for ip, port in listening(p.pid, table):
                    sockets[(p.pid, str(ip), port)] = p.name
            time.sleep(0.3)
        assert proc.returncode == 0, log.read_text()[-3000:]
        names = {p.name.split()[0] for p in seen.values() if p.name}
        # the whole session was watched: GCS, raylet, the agents, Train's workers
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        assert any(n.startswith("ray::RayTrainWorker") for n in names), names
        assert len(sockets) >= 10  # GCS, raylet (2), dashboard, agents, every worker's gRPC port, rendezvous
        beyond = {k: n for k, n in sockets.items() if not is_loopback(ipaddress.ip_address(k[1]))
                  and not any(n.startswith(e) for e in EXCEPTIONS)}
        assert not beyond, beyond
        # nothing of the session outlives the run, and its state file is gone
        time.sleep(0.5)
        left = _alive(list(seen.values()))
        assert not left, left
        assert not _sessions(ray_env)
        token = Path(ray_env["HOME"]) / ".ray" / "auth_token"  # Ray's token file, in the test's HOME
        assert token.exists() and token.stat().st_mode & 0o777 == 0o600
    finally:
        _kill_all({p.pid for p in _alive(list(seen.values()))} | {proc.pid})
        proc.wait()


DRIVER = textwrap.dedent("""
    import os, subprocess, sys, time
    from dsr_tune.distributed import ray_session
    with ray_session(cpus=2):
        import ray

        @ray.remote
        def detach():  # a process of the session that does not die with the raylet (like a user's subprocess)
            return subprocess.Popen(["sleep", "300"], start_new_session=True).pid

        print("READY", ray.get(detach.remote()), flush=True)
        time.sleep(float(sys.argv[1]))
""")


def _start_driver(tmp_path: Path, env: dict, hold_s: float) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    err = tmp_path / f"driver-{time.monotonic_ns()}.err"
    with err.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(script), str(hold_s)], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=f, start_new_session=True)
    proc.err = err  # type: ignore[attr-defined]
    line = proc.stdout.readline()
    assert line.startswith("READY"), err.read_text()[-3000:]
    return proc, int(line.split()[1])


def _pids_matching(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


@pytest.mark.slow
def test_a_killed_driver_leaves_nothing_behind(tmp_path, ray_env):
    started: set[int] = set()
    try:
        # 1. SIGKILL the driver: its watchdog stops the session, the detached process too
        first, sleeper = _start_driver(tmp_path, ray_env, 300)
        (s1,) = _sessions(ray_env)
        procs = reaper.processes(s1) + reaper.family(first.pid)  # by the reaper's rules, and the tree
        started |= {p.pid for p in procs} | {first.pid}
        assert sleeper in {p.pid for p in procs} and len(procs) >= 8
        first.kill()
        first.wait()
        deadline = time.time() + 30
        while _alive(procs) and time.time() < deadline:
            time.sleep(0.5)
        assert not _alive(procs), _alive(procs)
        assert not _sessions(ray_env)

        # 2. SIGKILL the driver and its watchdog: the next start stops what is left
        second, sleeper = _start_driver(tmp_path, ray_env, 300)
        (s2,) = _sessions(ray_env)
        procs = reaper.processes(s2) + reaper.family(second.pid)
        started |= {p.pid for p in procs} | {second.pid}
        watchdogs = _pids_matching(f"--watch {second.pid}:")
        assert len(watchdogs) == 1
        started |= set(watchdogs)
        os.kill(watchdogs[0], signal.SIGKILL)
        second.kill()
        second.wait()
        time.sleep(1.0)
        assert reaper.start_time(sleeper) is not None  # nothing stopped it yet
        third, _ = _start_driver(tmp_path, ray_env, 0)
        started.add(third.pid)
        third.communicate(timeout=120)
        err = third.err.read_text()
        assert third.returncode == 0, err[-3000:]
        assert "left by an earlier local Ray of dsr-tune" in err and str(second.pid) in err, err[-3000:]
        assert not _alive(procs), _alive(procs)  # every old process, the detached one included
        assert not _sessions(ray_env)  # the third ended cleanly too
    finally:
        for s in _sessions(ray_env):
            _kill_all({p.pid for p in reaper.processes(s)})
        _kill_all(started)
