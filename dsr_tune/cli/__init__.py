"""The ``dsr-tune`` command line.

Every subcommand validates its whole input before any work starts; a bad
config key, value or search space exits with status 2 and one line naming it.
"""

from __future__ import annotations

import argparse
import signal
import sys

from . import compare, serve, sweep, train
from .common import setup_logging


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="dsr-tune", description=(
        "Dynamic sparse reparameterization (Mostafa & Wang, ICML 2019): train compact CNNs directly, compare "
        "them with every baseline, sweep them with Ray Tune + Optuna, every run in MLflow. "
        "section.key=value overrides may go anywhere on the command line."))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"dsr-tune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    train.add_parsers(sub)    # train, keys
    compare.add_parsers(sub)  # compare, export
    sweep.add_parsers(sub)    # sweep, report, sync
    serve.add_parsers(sub)    # ui, dashboard
    return p


def _is_override(token: str) -> bool:
    key, eq, _ = token.partition("=")
    return bool(eq) and not token.startswith("-") and key.replace(".", "").replace("_", "").isalnum()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides anywhere (after --output too), as torchtune and Hydra take them
    if extra and hasattr(args, "overrides") and all(_is_override(t) for t in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.verbose)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `dsr-tune keys | head` ends quietly
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
