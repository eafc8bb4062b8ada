"""What every subcommand shares: its registration, the one-line error, logging, the resume hint."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import shlex
import sys

EXIT_USAGE = 2  # a bad command line, config or search space, an --output that cannot be written: nothing started
EXIT_FAULT = 1  # a fault during work (disk full, a file that breaks): everything finished is kept


def command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """Register subcommand ``name`` (on ``add_subparsers()``'s ``sub``), run by ``func(args) -> exit status``.

    Its ``--help`` description is ``func``'s docstring (argparse reflows it), so
    the command is documented once, where it is written."""
    p = sub.add_parser(name, help=help, description=inspect.cleandoc(func.__doc__ or help))
    p.set_defaults(func=func)
    return p


def fail(message: str) -> int:
    print(f"dsr-tune: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def fault(message: str) -> int:
    """A fault during work, in one line (what is kept and how to go on belong in it)."""
    print(f"dsr-tune: error: {message}", file=sys.stderr)
    return EXIT_FAULT


def storage_fault(exc, argv: list[str]) -> int:
    """A :class:`dsr_tune.runfolder.StorageError` during a run: the file, the
    cause, what is kept and the command that continues (``argv``)."""
    import errno

    where = exc.path.parent
    fix = ("free space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
           f"make {where} writable" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else
           f"fix the storage of {where}")
    if exc.epochs_kept:
        told = (f"the last complete checkpoint, epoch {exc.epochs_kept}, is intact; {fix} and resume with: "
                f"{' '.join(shlex.quote(a) for a in argv)} (a copy of the folder resumes too, with --output set to it)")
    else:
        told = f"no epoch was finished, so there is nothing to resume; {fix} and run it again"
    return fault(f"{exc} ({told})")


class _Format(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            time, _, rest = text.partition(" ")
            text = f"{time} {record.levelname.lower()}: {rest}"
        return text


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def interrupted(what: str, argv: list[str]) -> int:
    """After Ctrl-C: say what is kept and the command that continues."""
    print(f"\ninterrupted; {what}. Continue with:\n  {' '.join(shlex.quote(a) for a in argv)}", file=sys.stderr)
    return 130


def joining_cluster(address: str | None) -> bool:
    """True when the command joins an existing Ray cluster. Then the data
    lives on the worker nodes, not necessarily here: the config's paths are
    checked where training runs (the trainer calls ``check_paths`` there),
    not on this node."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def ray_host_error(address: str | None) -> str | None:
    """The error for a bad $DSR_TUNE_RAY_HOST when the command starts a local
    Ray (no ``address``, no $RAY_ADDRESS), else None."""
    if address or os.environ.get("RAY_ADDRESS"):
        return None
    from .. import config as C
    from ..distributed.session import ray_host

    try:
        ray_host()
    except C.ConfigError as exc:
        return str(exc)
    return None


def store_error(uri: str | None, key: str = "--tracking-uri") -> str | None:
    """The bad-input message for an MLflow store (``uri``, else $MLFLOW_TRACKING_URI), else None."""
    from .. import config as C
    from ..tracking import store

    try:
        store.resolve(uri, key=key)
    except C.ConfigError as exc:
        return str(exc)
    return None


def starting(what: str) -> None:
    """The first line of a long command, before its heavy imports (torch, Ray, MLflow)."""
    logging.getLogger("dsr_tune").info("%s; starting (loading torch%s)", what,
                                       ", Ray and MLflow" if "sweep" in what or "compare" in what else "")
