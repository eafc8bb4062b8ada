"""The ``dsr-tune`` command line.

Every subcommand validates its whole input before any work starts; a bad
config key, value or search space exits with status 2 and one line naming it.
"""

from __future__ import annotations

import argparse
import sys

from . import compare, serve, sweep, train
from .common import setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsr-tune", description="Dynamic sparse reparameterization: train, compare, sweep.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    train.add_parsers(sub)    # train, keys
    compare.add_parsers(sub)  # compare, export
    sweep.add_parsers(sub)    # sweep, report, sync
    serve.add_parsers(sub)    # ui, dashboard
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
