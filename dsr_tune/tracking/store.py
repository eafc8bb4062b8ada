"""Where runs are tracked: the embedded store, any MLflow URI, reachability.

The embedded default needs no server: a sqlite database and an artifact
folder under the working directory (``./mlruns/mlflow.db``,
``./mlruns/artifacts``), always as absolute paths because Ray workers run in
their own working directories. ``MLFLOW_TRACKING_URI`` or an explicit store replaces it: a URI
(``http://host:5000``, ``sqlite:////abs/db``, ...), or the plain path of an
sqlite file or of a folder holding ``mlflow.db`` (what users have at hand).

Credentials in a URI (``http://user:pass@host``) are used but never written
down: :func:`redact` strips them from what goes to logs, ``sweep.json`` and
``tracking.json``, and :func:`with_credentials` puts them back from the URI
the user gave (or ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, which MLflow
reads itself).

A tracking server must never stop training: HTTP calls fail fast (few
retries, short timeouts; MLflow's defaults retry for about 4 minutes per
call) and callers treat any MLflow error as "offline", keeping the records
in the run folders for ``dsr-tune sync``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dsr_tune")

EMBEDDED_DIR = "mlruns"
DB_NAME = "mlflow.db"
# MLflow reads these per request: a refused connection then fails in ~2 s, not ~247 s
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # no "View run at" lines per run


@dataclass(frozen=True)
class Target:
    """A tracking store. ``artifact_root`` is set for the embedded store (new
    experiments keep their artifacts there); None lets the server decide."""

    uri: str
    artifact_root: str | None = None

    @property
    def embedded(self) -> bool:
        return self.artifact_root is not None

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))


def embedded(cwd: str | Path | None = None) -> Target:
    root = Path(cwd or os.getcwd()).resolve() / EMBEDDED_DIR
    return Target(uri=f"sqlite:///{root / DB_NAME}", artifact_root=(root / "artifacts").as_uri())


# MLflow tracking URIs taken as given, besides sqlite: its servers and the SQL databases it stores in
SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
SQLITE_MAGIC = b"SQLite format 3\x00"


def resolve(uri: str | None = None, cwd: str | Path | None = None, key: str = "--tracking-uri") -> Target:
    """``uri``, else $MLFLOW_TRACKING_URI, else the embedded store under ``cwd``.

    ``uri`` may be a path: an existing sqlite file, or a folder holding
    ``mlflow.db``, becomes ``sqlite:////abs/path`` (its artifacts beside it).
    A relative sqlite URI is made absolute. Anything else (a missing file, a
    scheme MLflow has no store for here) is a :class:`ConfigError` on ``key``."""
    env = not uri and bool(os.environ.get("MLFLOW_TRACKING_URI"))
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if not uri:
        return embedded(cwd)
    key = "MLFLOW_TRACKING_URI" if env else key
    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):  # relative (3 slashes) or absolute (4)
        return _sqlite((base / uri[len("sqlite:///"):]).resolve())
    scheme = re.match(r"([a-z][a-z0-9+.-]*)://", uri, re.IGNORECASE)
    if scheme:
        name = scheme.group(1).lower().split("+")[0]  # postgresql+psycopg2: a driver of postgresql
        if name in SERVER_SCHEMES + DATABASE_SCHEMES:
            return Target(uri=uri)
        if name == "file":  # file:///abs/mlflow.db: a path by another name
            from urllib.parse import unquote, urlparse

            return _sqlite(_store_file(key, uri, Path(unquote(urlparse(uri).path))))
        raise _bad(key, uri, f"{scheme.group(1)}:// is not a store this tool reads")
    return _sqlite(_store_file(key, uri, (base / uri).expanduser()))


def _sqlite(path: Path) -> Target:
    return Target(uri=f"sqlite:///{path}", artifact_root=(path.parent / "artifacts").as_uri())


def _bad(key: str, uri: str, why: str):
    from ..schema import ConfigError

    return ConfigError(key, f"{redact(uri)}: {why}; give the path of an MLflow sqlite file (mlflow.db) or of a "
                            "folder holding one, sqlite:///PATH (created if missing), http(s)://HOST:PORT of a "
                            "tracking server, or a postgresql:// / mysql:// / mssql:// database")


def _store_file(key: str, uri: str, path: Path) -> Path:
    """The sqlite file a plain path names: the file itself or ``<folder>/mlflow.db``."""
    if path.is_dir():
        if not (path / DB_NAME).is_file():
            raise _bad(key, uri, f"the folder holds no {DB_NAME}")
        path = path / DB_NAME
    elif not path.exists():
        raise _bad(key, uri, "no such file or folder")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise _bad(key, uri, exc.strerror or "cannot be read") from None
    if head != SQLITE_MAGIC:
        raise _bad(key, uri, "not an SQLite database")
    return path.resolve()


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it removed."""
    return _USERINFO.sub(r"\1", text)


def with_credentials(target: Target, *candidates: str | None) -> Target:
    """``target`` (as written down: no credentials) with the credentials of the
    first candidate URI that is the same store ($MLFLOW_TRACKING_URI is tried last)."""
    for uri in (*candidates, os.environ.get("MLFLOW_TRACKING_URI")):
        if uri and uri != target.uri and redact(uri) == target.uri:
            return Target(uri=uri, artifact_root=target.artifact_root)
    return target


def fast_fail_env() -> None:
    """Set MLflow's HTTP retry settings low, unless the user chose their own."""
    for k, v in FAST_FAIL_ENV.items():
        os.environ.setdefault(k, v)


def probe(target: Target, timeout: float = 3.0) -> str | None:
    """None when the store answers, else a one-line reason. Only HTTP stores
    are probed (GET /health, which needs no login); a sqlite file is always there."""
    if not target.remote:
        return None
    import urllib.error
    import urllib.request

    url = redact(target.uri).rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (the user's tracking URI)
            return None if resp.status == 200 else f"{url} answered HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} is unreachable ({reason})"


def describe(exc: BaseException, uri: str) -> str:
    """One short line for an MLflow failure (its messages hold whole URLs and tracebacks)."""
    text, uri = redact(str(exc).strip()), redact(uri)
    refused = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)
    if refused or "Max retries exceeded" in text:
        return f"MLflow at {uri} is unreachable ({refused.group(0).strip() if refused else 'no answer'})"
    lines = [ln for ln in text.splitlines() if not ln.startswith("(raised as a result of")]  # SQLAlchemy's preamble
    first = lines[0] if lines else type(exc).__name__
    return f"MLflow at {uri}: {first[:200]}"


def _quiet_mlflow() -> None:
    # the first open of a new sqlite store logs every schema migration at INFO
    for name in ("alembic", "mlflow.tracking", "mlflow.store",
                 "urllib3.connectionpool"):  # a "Retrying ..." line per retry of a failed request
        logging.getLogger(name).setLevel(logging.WARNING)
    # a failed database write (a full disk, a broken store) comes with a traceback here, and again as the
    # exception our callers turn into one line (describe())
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def client(target: Target):
    """An ``MlflowClient`` for ``target`` (imports mlflow: about 2 s)."""
    fast_fail_env()
    from mlflow import MlflowClient

    _quiet_mlflow()
    if target.embedded:
        Path(target.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=target.uri)


# MLflow 3's UI opens an experiment on the page its kind says: the runs table for model training
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTION_TAG = "mlflow.note.content"  # the description MLflow shows for an experiment or a run


def experiment_id(mlflow_client, name: str, target: Target, description: str | None = None) -> str:
    """The id of experiment ``name``, created (with the embedded artifact root) if missing; the
    experiment the tool makes opens on its runs table and carries ``description``."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        location = f"{target.artifact_root}/{name}" if target.artifact_root else None
        try:
            exp_id = mlflow_client.create_experiment(name, artifact_location=location,
                                                     tags=dict([EXPERIMENT_KIND]))
        except Exception:  # another process created it meanwhile
            exp = mlflow_client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND[0] not in exp.tags:  # made by someone else: the kind only if it has none
            mlflow_client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    if description and (exp is None or DESCRIPTION_TAG not in exp.tags):
        mlflow_client.set_experiment_tag(exp_id, DESCRIPTION_TAG, description)
    return exp_id


def git_revision() -> str | None:
    """The commit of the code that runs (``<sha>`` or ``<sha>-dirty``), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha
