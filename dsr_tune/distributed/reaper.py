"""Find and stop the processes of a local Ray this package started (Linux).

``ray.init()`` makes Ray's head processes (gcs_server, raylet, dashboard,
monitors) die with the driver (PR_SET_PDEATHSIG) and workers die with the
raylet; but its dashboard and runtime-env agents, when the driver is
SIGKILLed, notice the raylet's death, try to exit and stay a minute or more,
still listening (measured with Ray 2.60). So a session is recorded, and
found again, by two things:

- a marker in the environment of its processes,
  ``DSR_TUNE_RAY_SESSION=<driver pid>:<driver start time>:<nonce>``, set in
  the driver's environment just before ``ray.init`` (Ray's processes
  inherit it: the raylet from the driver, workers from the raylet);
- its Ray session folder: the agents rename themselves (setproctitle
  overwrites their environment's memory, so /proc shows no marker), but a
  process titled ``ray::...`` that holds a file open in the session folder
  is that session's.

A session is stopped (SIGTERM, SIGKILL after a grace period):

- at its end, by the driver, after ``ray.shutdown()`` (stragglers);
- by a watchdog (this file run as a script, in its own session, reading a
  pipe from the driver) when the pipe closes, i.e. when the driver exits by
  any means, SIGKILL included;
- at the next start, for every state file (``<state dir>/<pid>-<nonce>.json``)
  or marker whose driver is dead (its pid gone or reused: another start
  time), in case the watchdog was killed too.

Nothing else is signalled: only this user's processes, carrying the marker or
titled ``ray::`` with a file open in the recorded session folder; never a
Ray the user started, never the session of a live driver (another
dsr-tune's). A pidfd closes the pid-reuse window between finding a process
and signalling it.

This module is stdlib-only and imports nothing from the package at its top,
so the watchdog runs it by path (``python -S``) without importing torch or
ray. The one write, the state file, is the driver's (:func:`record`): it goes
through :mod:`dsr_tune.runfolder`'s atomic write, imported there, where the
package is at hand (the watchdog only reads and removes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "DSR_TUNE_RAY_SESSION"
GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
PROC = Path("/proc")


@dataclass(frozen=True)
class Session:
    """A local Ray session of this package: its marker and (once known) its Ray session folder."""

    marker: str
    session_dir: str | None = None

    @property
    def driver_pid(self) -> int:
        return int(self.marker.split(":")[0])

    def driver_alive(self) -> bool:
        """True while the driver the marker names runs (same pid, same start time)."""
        try:
            pid, start, _ = self.marker.split(":")
            return start_time(int(pid)) == int(start)
        except ValueError:  # not a marker this module wrote: treat its driver as alive, touch nothing
            return True


@dataclass(frozen=True)
class Proc:
    """A process found: ``start`` (clock ticks after boot) tells it from a later one with the same pid."""

    pid: int
    start: int
    name: str


def new_session() -> Session:
    """A session whose driver is this process."""
    return Session(f"{os.getpid()}:{start_time(os.getpid())}:{secrets.token_hex(4)}")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None if it is gone or a zombie."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return fields if fields[0] not in ("Z", "X") else None


def start_time(pid: int) -> int | None:
    """The start time of a live (not zombie) ``pid``, or None."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 of proc(5)


def family(pid: int) -> list[Proc]:
    """``pid``, its descendants and the other members of its process group (live ones),
    e.g. a server started in its own session and the workers it forked."""
    parents: dict[int, int] = {}
    group, start = [], {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            child = int(entry.name)
            parents[child], start[child] = int(fields[1]), int(fields[19])  # ppid, start time
            if int(fields[2]) == pid:  # pgrp
                group.append(child)
    found, todo = set(group), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += [c for c, parent in parents.items() if parent == p and c not in found]
    return [Proc(p, start[p], _cmdline(p)[:120]) for p in sorted(found) if p in start]


def marker_of(pid: int) -> str | None:
    """The session marker in ``pid``'s environment (as it was at exec), or None."""
    try:
        env = (PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or not ours
        return None
    key = MARKER.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _holds_file_in(pid: int, folder: str) -> bool:
    prefix = folder.rstrip("/") + "/"
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(prefix):
                return True
    return False


def _own_pids() -> list[int]:
    me, uid = os.getpid(), os.getuid()
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
    return out


def processes(session: Session) -> list[Proc]:
    """This user's live processes of ``session`` (this one excluded), found by
    marker, or by a ``ray::`` title and a file open in its session folder."""
    out = []
    for pid in _own_pids():
        name = _cmdline(pid)
        ours = marker_of(pid) == session.marker or (
            session.session_dir is not None and name.startswith("ray::") and _holds_file_in(pid, session.session_dir))
        start = start_time(pid)
        if ours and start is not None:
            out.append(Proc(pid, start, name[:120]))
    return out


def _signal(p: Proc, sig: int) -> None:
    """Send ``sig`` to ``p`` only if its pid still is that process."""
    try:
        fd = os.pidfd_open(p.pid)  # from here on the pid cannot be reused under us
    except (AttributeError, OSError):  # gone, or no pidfd support: check, then signal by pid
        if start_time(p.pid) == p.start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
        return
    try:
        if start_time(p.pid) == p.start:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def _wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if start_time(p.pid) == p.start]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def stop(procs: list[Proc], grace: float = GRACE_S) -> list[Proc]:
    """SIGTERM ``procs``, SIGKILL those still there after ``grace`` s; returns those that outlived both."""
    for p in procs:
        _signal(p, signal.SIGTERM)
    left = _wait_gone(procs, grace)
    for p in left:
        _signal(p, signal.SIGKILL)
    return _wait_gone(left, 2.0)


# ---------------------------------------------------------------- state files


def state_file(session: Session, state_dir: Path) -> Path:
    pid, _, nonce = session.marker.split(":")
    return state_dir / f"{pid}-{nonce}.json"


def record(session: Session, state_dir: Path) -> Path:
    """The driver: write the session's state file (atomically, fsynced); returns its path.
    Temporaries that a driver killed while writing left behind are removed first."""
    from .. import runfolder  # stdlib-only too; imported here, as the watchdog runs this file outside the package

    runfolder.clean_stale(state_dir)
    return runfolder.write_json(state_file(session, state_dir), asdict(session))


def recorded(state_dir: Path) -> list[tuple[Path, Session]]:
    """Every state file in ``state_dir`` with its session (unreadable ones left out)."""
    out = []
    for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append((path, Session(**json.loads(path.read_text()))))
    return out


def stop_orphans(state_dir: Path, grace: float = GRACE_S) -> dict[Session, list[Proc]]:
    """Stop every recorded or marked session whose driver is dead; returns what was stopped.
    A dead driver's state file is removed once its processes are gone."""
    sessions = {s.marker: s for _, s in recorded(state_dir)}
    for pid in _own_pids():
        found = marker_of(pid)
        if found and found not in sessions:  # a driver that died before it could write its state file
            sessions[found] = Session(found)
    stopped: dict[Session, list[Proc]] = {}
    for s in sessions.values():
        if s.driver_alive():
            continue
        procs = processes(s)
        if procs:
            stop(procs, grace)
            stopped[s] = procs
        with contextlib.suppress(OSError, ValueError):
            state_file(s, state_dir).unlink(missing_ok=True)
    return stopped


# ---------------------------------------------------------------- the watchdog


def spawn_watchdog(session: Session, state_dir: Path) -> subprocess.Popen:
    """Start the watchdog of ``session``. Write the Ray session folder to its
    stdin once known; when stdin closes (the driver closes it, or dies), it
    stops the session's processes and removes its state file. Its own
    session keeps it out of signals sent to the driver's process group."""
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    return subprocess.Popen([sys.executable, "-S", str(Path(__file__).resolve()), "--watch", session.marker,
                             str(state_file(session, state_dir))],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True, close_fds=True)


def _watch(marker: str, state: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver must not end the watch
    session_dir = None
    for line in sys.stdin:  # until EOF: the driver closed the pipe or died
        session_dir = line.strip() or session_dir
    stop(processes(Session(marker, session_dir)))
    Path(state).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        sys.exit(_watch(sys.argv[2], sys.argv[3]))
    sys.exit(f"usage: {sys.argv[0]} --watch MARKER STATE_FILE")
