"""The ``ui`` and ``dashboard`` subcommands of ``dsr-tune``: local web servers.

``ui`` serves the MLflow UI of a sqlite store, ``dashboard`` optuna-dashboard
on a sweep's Optuna study. Both go through :func:`serve`: the server runs in
its own session (so its process group holds it and the workers it forks:
MLflow's uvicorn/gunicorn workers), its URL is printed once it answers HTTP,
and SIGTERM or SIGINT stop the whole group (SIGTERM, SIGKILL after a grace
period). Both bind 127.0.0.1 unless ``--host`` says otherwise, with a
warning: neither server asks who is calling.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .common import command, fail

UI_PORT = 5000
DASHBOARD_PORT = 8080
LOOPBACK = "127.0.0.1"
READY_S = 120.0  # MLflow's server answered /health after about 8 s on 2 busy cores
GRACE_S = 10.0   # SIGTERM to the group, then SIGKILL


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (in use, not an address here), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"--host {host}: {exc.strerror}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as exc:
            return f"--host {host} --port {port}: {exc.strerror} (pick another --port, or stop what listens there)"
    return None


def _url(host: str, port: int, path: str = "") -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        host = LOOPBACK
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):  # refused, reset, timed out: not up yet
        return False


def _stop(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """Stop ``proc``'s whole process group and its descendants; SIGKILL what outlives ``grace``."""
    from ..distributed import reaper

    family = reaper.family(proc.pid)
    if family:  # the group still has members we saw: its id cannot have been reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    reaper.stop(family, grace)  # also reaches descendants that left the group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr without a file: inherit stdout
        return None


def serve(cmd: list[str], *, title: str, url: str, health: str, ready_s: float = READY_S) -> int:
    """Run ``cmd`` in its own session; print ``title: url`` once GET ``health``
    answers; wait until the server ends, or SIGTERM / SIGINT arrives. The
    server's whole process tree is stopped before this returns, whatever
    happens. Returns 0 when stopped by a signal, 1 when the server never
    answered within ``ready_s``, else the server's exit status."""
    stop: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, _frame: stop.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    # its own session: a Ctrl-C reaches us only, and we stop the group. Its output goes to stderr, so
    # that stdout holds our URL line alone (for scripts)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=_stderr_fd())
    try:
        deadline = time.monotonic() + ready_s
        while not stop and proc.poll() is None and not _answers(health):
            if time.monotonic() > deadline:
                print(f"dsr-tune: error: {title} did not answer {health} within {ready_s:g} s; stopped it",
                      file=sys.stderr)
                return 1
            time.sleep(0.25)
        if proc.poll() is not None:
            print(f"dsr-tune: error: {title} exited with status {proc.returncode}" +
                  ("" if stop else " before it answered"), file=sys.stderr)
            return proc.returncode or 1
        if not stop:
            print(f"{title}: {url}  (Ctrl-C stops it)", flush=True)
        while not stop and proc.poll() is None:
            time.sleep(0.2)
        return 0 if stop else proc.returncode
    finally:
        _stop(proc)
        for s, h in handlers.items():
            signal.signal(s, h)


def _host_checks(args) -> str | None:
    """The bad-input message for ``--host`` / ``--port`` / ``--timeout`` (exit 2), else None;
    warns for a non-loopback host."""
    if not 1 <= args.port <= 65535:
        return f"--port {args.port}: must be in [1, 65535]"
    if not args.timeout > 0:
        return f"--timeout {args.timeout:g}: must be > 0 seconds"
    error = _bind_error(args.host, args.port)
    if error is None and not _is_loopback(args.host):
        print(f"warning: --host {args.host}: the server answers anyone who reaches this address, "
              "without authentication", file=sys.stderr)
    return error


def cmd_ui(args) -> int:
    """Serve the MLflow UI of a sqlite store (default: $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db) on
    127.0.0.1, print its URL once it answers, and stop it (with its workers) on Ctrl-C or SIGTERM."""
    from ..tracking import store

    target = store.resolve(args.tracking_uri)
    if not target.embedded:
        return fail(f"{target.uri} is a tracking server: open it in a browser (dsr-tune ui serves sqlite stores)")
    db = Path(target.uri[len("sqlite:///"):])
    if not db.exists():
        return fail(f"no MLflow store at {db}; run a sweep from this folder first (or pass --tracking-uri)")
    error = _host_checks(args)
    if error:
        return fail(error)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", target.uri,
           "--default-artifact-root", target.artifact_root, "--host", args.host, "--port", str(args.port)]
    return serve(cmd, title=f"MLflow UI for {db}", url=_url(args.host, args.port),
                 health=_url(args.host, args.port, "/health"), ready_s=args.timeout)


def cmd_dashboard(args) -> int:
    """Serve optuna-dashboard on the Optuna study of a sweep folder (its optuna.db: every trial the search
    proposed, its values and state) on 127.0.0.1, print its URL once it answers, and stop it on Ctrl-C
    or SIGTERM."""
    from ..runfolder import STUDY as STUDY_FILE

    sweep = Path(args.sweep)
    db = sweep / STUDY_FILE
    if not db.is_file():
        return fail(f"{sweep} holds no {STUDY_FILE} (the Optuna study of a sweep): give a sweep folder "
                    "(--output of dsr-tune sweep)")
    error = _host_checks(args)
    if error:
        return fail(error)
    script = Path(sys.executable).with_name("optuna-dashboard")  # its console script, beside this Python
    if not script.exists():
        found = shutil.which("optuna-dashboard")
        if not found:
            return fail("optuna-dashboard is not installed here: pip install -r requirements.lock -e .")
        script = Path(found)
    cmd = [str(script), f"sqlite:///{db.resolve()}", "--host", args.host, "--port", str(args.port), "--quiet"]
    for line in studies(db):  # on stderr: stdout holds the URL line alone
        print(line, file=sys.stderr)
    return serve(cmd, title=f"Optuna dashboard for {_study_name(sweep)}", url=_url(args.host, args.port, "/dashboard"),
                 health=_url(args.host, args.port, "/api/studies"), ready_s=args.timeout)


def studies(db: Path) -> list[str]:
    """One line per Optuna study in ``db``: its name, trials (complete of all) and objectives."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    out = []
    for name in sorted(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        goals = ", ".join(f"{m or f'objective {i}'} ({d.name.lower()})" for i, (m, d) in
                          enumerate(zip(study.metric_names or [None] * len(study.directions), study.directions)))
        out.append(f"study {name}: {done} of {len(trials)} trials complete; {goals}")
    return out or [f"{db} holds no study yet"]


def _study_name(sweep: Path) -> str:
    """``study <sweep id> (<folder>)``: the study is named after the sweep (sweep.json)."""
    from ..runfolder import SWEEP

    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return f"study {json.loads((sweep / SWEEP).read_text())['sweep_id']} ({sweep})"
    return str(sweep)


def _server_options(p, port: int) -> None:
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    p.add_argument("--host", default=LOOPBACK, help="address to listen on (default 127.0.0.1, this machine only; "
                   "another address makes the server reachable from other machines, without authentication)")
    p.add_argument("--timeout", type=float, default=READY_S, help="seconds to wait for the server to answer "
                   f"(default {READY_S:g})")


def add_parsers(sub) -> None:
    u = command(sub, "ui", cmd_ui, "the MLflow UI of the embedded store, on 127.0.0.1")
    _server_options(u, UI_PORT)
    u.add_argument("--tracking-uri", help="a sqlite store (default: $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")

    d = command(sub, "dashboard", cmd_dashboard, "optuna-dashboard on a sweep's Optuna study, on 127.0.0.1")
    d.add_argument("sweep", help="a sweep folder (the --output of dsr-tune sweep)")
    _server_options(d, DASHBOARD_PORT)
