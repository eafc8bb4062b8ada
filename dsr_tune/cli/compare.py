"""The ``compare`` and ``export`` subcommands of ``dsr-tune``.

Registered by :func:`dsr_tune.cli.build_parser` through :func:`add_parsers`.
Like every subcommand they validate all input before any work starts; a bad
config key or value exits with status 2 and one line naming it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import config as C
from .. import runfolder
from .common import command, fail, joining_cluster, starting, store_error
from .sweep import add_plan_args, finish, plan_args_error, show_plan


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.8,0.9") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every sparsity must be in [0, 1)")
    return values


def _bad_numbers(args) -> str | None:
    """What is wrong with the command line's numbers, checked before the config is read."""
    if args.seeds < 1:
        return f"--seeds {args.seeds}: need at least 1"
    if args.concurrency < 0:
        return f"--concurrency {args.concurrency}: must be >= 0 (0: one run at a time, in this process)"
    return plan_args_error(args)


def cmd_compare(args) -> int:
    """Run the comparison for CONFIG.yaml (the DSR run's config, as the selected configuration): every
    row at every sparsity and seed, static sparse and thin dense at 1x and sparsity.epoch_factor x the
    epochs, GMP after its dense run, the ablations after their DSR run. Every run is an MLflow child run
    under one parent; the report (mean, std, n, 95% CI, paired difference to DSR, training and
    inference FLOPs against the dense run's, time) is written to --output as report.md, report.png
    and report.csv. Run it again to continue; --plan prices it without running anything."""
    bad = _bad_numbers(args)
    if bad:
        return fail(bad)
    try:
        cfg = C.load(args.config, args.overrides)
        if args.epoch_factor is not None:
            cfg = C.replace(cfg, **{"sparsity.epoch_factor": args.epoch_factor})
        if not joining_cluster(args.address) and not args.plan:  # a plan reads no data file
            C.check_paths(cfg)
    except C.ConfigError as exc:
        return fail(f"config {exc}")
    error = store_error(args.tracking_uri)
    if error:
        return fail(error)
    out = Path(args.output or Path("runs") / f"compare_{Path(args.config).stem}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    from ..sweep import rows

    try:
        rows.rows(methods or rows.default_labels(), cfg.sparsity.epoch_factor, cfg.train.epochs)
    except C.ConfigError as exc:
        return fail(str(exc))
    if args.plan:
        from ..sweep.spec import for_compare

        space = for_compare(cfg, name=out.name, sparsities=args.sparsity, seeds=[cfg.train.seed + i for i in
                            range(args.seeds)], labels=methods or rows.default_labels())
        space.search.max_concurrent = args.concurrency
        return show_plan(space, args.throughput)
    if (out / runfolder.SWEEP).exists() is False and out.exists() and any(out.iterdir()):
        return fail(f"--output {out} already holds files that are not a comparison; pick another folder")
    if not args.verbose:  # the per-epoch lines of every run would drown the progress lines
        for name in ("dsr_tune.train", "dsr_tune.data"):
            logging.getLogger(name).setLevel(logging.WARNING)

    starting(f"compare {', '.join(methods or rows.default_labels())} at sparsity "
             f"{', '.join(f'{x:g}' for x in args.sparsity)} on {args.seeds} seed(s) -> {out}")
    from ..sweep.driver import compare  # torch, mlflow: import after validation

    argv = ["dsr-tune", "compare", args.config, *args.overrides, "--output", str(out)]
    try:
        outcome = compare(cfg, out, sparsities=args.sparsity, seeds=args.seeds, methods=methods,
                          address=args.address, concurrency=args.concurrency, tracking_uri=args.tracking_uri,
                          verbose=args.verbose)
    except C.ConfigError as exc:
        return fail(str(exc) if exc.key.startswith("--") else f"config {exc}")
    except KeyboardInterrupt:
        print("\ninterrupted; finished runs are kept. Run the same command again to continue "
              "(it skips them and resumes the cut-off one from its checkpoint).", file=sys.stderr)
        return 130
    return finish(outcome, argv)


def cmd_export(args) -> int:
    """Write RUN_DIR's final model as its non-zero values and their positions (int32 indices or a
    bitmask, whichever is smaller) plus the dense tensors. dsr_tune.train.export.load_exported(FILE)
    restores a dense model with the same outputs."""
    run = Path(args.run_dir)
    if not runfolder.has_run(run):
        return fail(f"{run} holds no {runfolder.CHECKPOINT} (not a finished run folder)")
    from ..train.export import export_run

    try:
        info = export_run(run, args.output)
    except ValueError as exc:  # a checkpoint this loader cannot read back, or not one of ours (ConfigError)
        return fail(str(exc))
    ratio = info["bytes"] / info["dense_bytes"]
    print(f"wrote {info['path']}: {info['bytes']:,} bytes, {ratio:.3f} of the dense checkpoint "
          f"({info['dense_bytes']:,} bytes); {info['sparse_tensors']} sparse tensors, "
          f"{info['nonzero']:,} active sparse weights")
    return 0


def _methods_help() -> str:
    """``--methods``' help: the registry's rows and the planner's labels (no name is written here)."""
    from .. import methods
    from ..sweep import rows

    labels = rows.known_labels()
    rows = [n for n in methods.names() if methods.get(n).kind != "ablation"]
    controls = methods.names(controls=True)
    variants = [x for x in labels if x not in rows and x.rpartition("_")[0] in controls]
    ablations = [x for x in labels if x.partition(":")[0] in methods.names(kind="ablation")]
    groups = [x for x in labels if x not in {*rows, *variants, *ablations}]
    return (f"comma-separated rows: any method ({', '.join(rows)}; {' and '.join(controls)} give their controls at "
            f"1x and sparsity.epoch_factor x, {', '.join(variants)} just one; _cm: compute-matched, the epochs "
            f"the DSR run's training FLOPs buy), {', '.join(ablations)}, or "
            f"{' / '.join(repr(g) for g in groups)} (the workshop paper's ablations; default: every method, "
            "no ablations)")


def add_parsers(sub) -> None:
    c = command(sub, "compare", cmd_compare, "run every baseline against DSR and tabulate")
    c.add_argument("config", help="YAML config of the DSR run (see configs/)")
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=20")
    c.add_argument("--sparsity", type=_floats, default=[0.9], help="comma-separated sparsities (default 0.9)")
    c.add_argument("--seeds", type=int, default=3, help="seeds per cell: train.seed, +1, ... (default 3)")
    c.add_argument("--methods", help=_methods_help())
    c.add_argument("--epoch-factor", type=float, help="the controls' long budget (default: sparsity.epoch_factor)")
    c.add_argument("--output", "-o", help="output folder (default: runs/compare_<config name>)")
    c.add_argument("--address", help="run on this Ray cluster through Tune (default: in this process, one run at "
                   "a time)")
    c.add_argument("--concurrency", type=int, default=0, help="runs at once on a local Ray (0: one at a time, in "
                   "this process, no Ray)")
    c.add_argument("--tracking-uri", help="MLflow store: a path to an mlflow.db or a folder holding one, "
                   "sqlite:///PATH, http(s)://HOST:PORT (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    add_plan_args(c)

    e = command(sub, "export", cmd_export, "write a trained sparse model in compressed form")
    e.add_argument("run_dir", help="a run folder holding checkpoint.pt")
    e.add_argument("--output", "-o", help="output file (default: RUN_DIR/model.sparse.pt)")
