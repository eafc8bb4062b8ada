"""The ``ui`` and ``dashboard`` subcommands of ``dsr-tune``: local web servers.

``ui`` serves the MLflow UI of a sqlite store, ``dashboard`` optuna-dashboard
on a sweep's Optuna study. Both go through :func:`serve`: the server runs in
its own session (so its process group holds it and the workers it forks:
MLflow's uvicorn/gunicorn workers), its URL is printed once it answers HTTP (for ``ui``: the deep link to
an experiment's runs table),
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
from collections.abc import Callable
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


def serve(cmd: list[str], *, title: str, url: str | Callable[[], str], health: str, ready_s: float = READY_S,
          env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in its own session (``env`` added to this environment); print
    ``title: url`` once GET ``health`` answers (``url`` may be a function asked
    then; its LookupError is bad input: exit 2); wait until the server ends, or
    SIGTERM / SIGINT arrives. The server's whole process tree is stopped before
    this returns, whatever happens. Returns 0 when stopped by a signal, 1 when
    the server never answered within ``ready_s``, else the server's exit status."""
    stop: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, _frame: stop.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    # its own session: a Ctrl-C reaches us only, and we stop the group. Its output goes to stderr, so
    # that stdout holds our URL line alone (for scripts)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=_stderr_fd(),
                            env={**os.environ, **env} if env else None)
    try:
        t0 = deadline = time.monotonic()
        deadline += ready_s
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
            try:
                where = url() if callable(url) else url
            except LookupError as exc:
                return fail(str(exc))
            print(f"{title}: {where}  (Ctrl-C stops it)", flush=True)
            print(f"(it answered {time.monotonic() - t0:.1f} s after it started)", file=sys.stderr)
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


# one user's browser needs one worker and none of the GenAI job runners: 3 processes with dsr-tune's own,
# not 16 (benchmarks/bench_ui.py)
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
# MLflow 3's UI keeps its own GenAI / model-training switch (a fresh browser gets GenAI, whatever the
# experiment's kind tag says); this query parameter opens the runs table
RUNS_TABLE = "/#/experiments/{}/runs?workflowType=machine_learning"


def cmd_ui(args) -> int:
    """Serve the MLflow UI of a tracking store (default: $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db) on 127.0.0.1
    with a single worker, and print the URL of an experiment's runs table once it answers (--experiment NAME, or
    the experiment of the newest run); a fresh browser opens on that table. --tracking-uri takes an sqlite URI,
    the path of an mlflow.db or of a folder holding one, or a SQL database URI. Ctrl-C or SIGTERM stop the server
    and its workers."""
    from ..schema import ConfigError
    from ..tracking import store

    try:
        target = store.resolve(args.tracking_uri)
    except ConfigError as exc:
        return fail(str(exc))
    if target.remote:
        return fail(f"{store.redact(target.uri)} is a tracking server: open it in a browser (dsr-tune ui serves "
                    "sqlite stores and databases)")
    where = store.redact(target.uri)
    if target.uri.startswith("sqlite:///"):
        where = target.uri[len("sqlite:///"):]
        if not Path(where).is_file():
            return fail(f"no MLflow store at {where}; run a sweep or dsr-tune train from this folder first "
                        "(or pass --tracking-uri)")
    error = _host_checks(args) or _experiment_error(where, args.experiment)
    if error:
        return fail(error)
    base = _url(args.host, args.port)
    return serve(ui_command(target, args.host, args.port), title=f"MLflow UI for {where}",
                 url=lambda: _runs_table(base, args.experiment), health=f"{base}/health", ready_s=args.timeout,
                 env=UI_ENV)


def ui_command(target, host: str, port: int, workers: int = 1) -> list[str]:
    """MLflow's server for ``target`` (a :class:`~dsr_tune.tracking.store.Target`); run it with :data:`UI_ENV`."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", target.uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    return cmd + (["--default-artifact-root", target.artifact_root] if target.artifact_root else [])


def _experiment_error(db: str, name: str | None) -> str | None:
    """For an sqlite store, before the server starts: the bad-input message for an ``--experiment`` it
    does not hold (a store whose tables this cannot read is left to the server's lookup)."""
    if name is None or not Path(db).is_file():
        return None
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True)) as con:
            names = [n for (n,) in con.execute("SELECT name FROM experiments WHERE lifecycle_stage = 'active'")]
    except sqlite3.Error:
        return None
    if name in names:
        return None
    return f"--experiment {name}: no such experiment in this store (it holds: {', '.join(sorted(names)) or 'none'})"


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (our own server on this machine)
        return json.loads(r.read() or b"{}")


def _runs_table(base: str, name: str | None) -> str:
    """The URL of experiment ``name``'s runs table, else of the experiment holding the newest run (else the
    newest experiment). LookupError for a ``name`` the store does not hold."""
    try:
        exps = _api(base, "experiments/search", {"max_results": 1000}).get("experiments", [])
        newest = _api(base, "runs/search", {"experiment_ids": [e["experiment_id"] for e in exps], "max_results": 1,
                                            "order_by": ["attributes.start_time DESC"]}).get("runs") if exps else None
    except (OSError, ValueError, KeyError) as exc:  # the page still opens; the user picks the experiment
        print(f"warning: could not list the store's experiments ({exc}); pick one, then Model training",
              file=sys.stderr)
        return base + "/#/experiments?workflowType=machine_learning"
    if name is not None:
        found = [e for e in exps if e["name"] == name]
        if not found:
            names = ", ".join(sorted(e["name"] for e in exps)) or "none"
            raise LookupError(f"--experiment {name}: no such experiment in this store (it holds: {names})")
        return base + RUNS_TABLE.format(found[0]["experiment_id"])
    if newest:
        exp_id = newest[0]["info"]["experiment_id"]
    elif exps:
        exp_id = max(exps, key=lambda e: int(e.get("creation_time", 0)))["experiment_id"]
    else:
        return base + "/#/experiments?workflowType=machine_learning"
    others = sorted(e["name"] for e in exps if e["experiment_id"] != exp_id and e["name"] != "Default")
    if others:
        print(f"other experiments here (dsr-tune ui --experiment NAME): {', '.join(others)}", file=sys.stderr)
    return base + RUNS_TABLE.format(exp_id)


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
    u.add_argument("--tracking-uri", help="the store: a path to an mlflow.db or a folder holding one, sqlite:///PATH, "
                   "or a SQL database URI (default: $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)")
    u.add_argument("--experiment", help="open this experiment's runs table (default: the experiment of the newest "
                   "run)")

    d = command(sub, "dashboard", cmd_dashboard, "optuna-dashboard on a sweep's Optuna study, on 127.0.0.1")
    d.add_argument("sweep", help="a sweep folder (the --output of dsr-tune sweep)")
    _server_options(d, DASHBOARD_PORT)
