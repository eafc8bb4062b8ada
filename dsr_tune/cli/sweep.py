"""The ``sweep``, ``report`` and ``sync`` subcommands of ``dsr-tune`` (``ui``: :mod:`.serve`).

Registered by :func:`dsr_tune.cli.build_parser` through :func:`add_parsers`.
The whole search space is validated before Ray starts: a bad key or range
exits with status 2 and one line naming it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from .. import config as C
from ..records import Status
from .common import fail, interrupted, joining_cluster, ray_host_error, starting, store_error
from .serve import RUNS_TABLE, UI_PORT


def _resume_argv(args, out: Path) -> list[str]:
    argv = ["dsr-tune", "sweep", args.space, *args.overrides, "--output", str(out), "--resume"]
    return argv + (["--address", args.address] if args.address else [])


def cmd_sweep(args) -> int:
    from ..sweep import plan, spec

    on_cluster = joining_cluster(args.address)  # before validation: data paths are the workers' business
    bad = plan_args_error(args)
    if bad:
        return fail(bad)
    try:
        space = spec.load(args.space, args.overrides)
    except C.ConfigError as exc:
        return fail(f"search space {exc}")
    if args.plan:
        return show_plan(space, args.throughput)
    host_error = ray_host_error(args.address) or store_error(space.tracking_uri, "tracking.uri")
    if host_error:
        return fail(host_error)
    searches = plan.search_phases(space)
    starting(f"sweep {space.name}: {len(searches)} search(es) of {space.search.samples} trials "
             f"({', '.join(p.cell for p in searches)}), then "
             f"{', '.join(space.baselines) or 'no baselines'} on seeds {space.seeds}")
    from ..sweep import driver
    from ..sweep.folder import default_output

    if not args.output and on_cluster:
        return fail(f"--output: on a Ray cluster give a sweep folder every node shares, e.g. --output "
                     f"/mnt/shared/sweeps/{space.name} (the default, {default_output(space)}, is on this "
                     "node only)")
    out = Path(args.output or default_output(space))
    try:
        outcome = driver.run(space, out, resume=args.resume, overwrite=args.overwrite, address=args.address,
                             verbose=args.verbose, table=args.table)
    except C.ConfigError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return interrupted("finished trials are kept", _resume_argv(args, out))
    return finish(outcome, _resume_argv(args, out))


def plan_args_error(args) -> str | None:
    """The one-line error of a bad ``--plan`` / ``--throughput``, else None."""
    if args.throughput is not None and not args.plan:
        return "--throughput is read only with --plan (it prices the plan's time)"
    if args.throughput is not None and not args.throughput > 0:
        return f"--throughput {args.throughput:g}: training images per second must be > 0"
    return None


def show_plan(space, throughput: float | None) -> int:
    """Print the price of ``space`` (:mod:`dsr_tune.sweep.price`): no training, no Ray, no MLflow, no file."""
    import logging

    from ..sweep import price

    logging.getLogger("dsr_tune").setLevel(logging.WARNING)  # thin dense's solved widths: the plan has them
    try:
        p = price.price(space)
    except (OSError, ValueError) as exc:  # a folder data set whose files are not here
        return fail(f"--plan: the sizes of data set {space.base.data.name!r} come from its files: "
                    f"{str(exc).splitlines()[0]}")
    if throughput is None:
        from ..train.speed import throughput as measure

        rate, device, batch = measure(space.base, p.data.classes, p.data.channels, p.data.image_size)
        workers = space.base.train.workers
        how = (f"measured here in a few timed steps of a batch of {batch} of the base config on {device}"
               + (f", times its {workers} workers" if workers > 1 else "") + "; a short measurement: give "
               "--throughput for the machine the sweep will run on")
        rate *= max(1, workers)
    else:
        rate, how = throughput, "given with --throughput"
    print("\n".join(price.text(p, rate, how)))
    return 0


def add_plan_args(p) -> None:
    p.add_argument("--plan", action="store_true", help="print the phases, runs, epochs, training FLOPs and an "
                   "estimated time, without training, starting Ray or MLflow, or writing anything")
    p.add_argument("--throughput", type=float, metavar="IMAGES_PER_S", help="with --plan: training images per "
                   "second of one run (default: measured in a few timed steps of the base config here)")


def finish(outcome, resume_argv: list[str]) -> int:
    """After a sweep or comparison: the report, what MLflow lacks, where to browse it."""
    if outcome.error:  # a storage fault stopped it: one line
        outcome.tracker.close_parent(Status.KILLED)
        print(f"dsr-tune: error: stopped, a run folder could not be written: {outcome.error}; finished runs are "
              f"kept; once there is room (or the folder can be written), continue with: "
              f"{' '.join(shlex.quote(a) for a in resume_argv)}", file=sys.stderr)
        return 1
    if outcome.status == Status.KILLED:
        outcome.tracker.close_parent(Status.KILLED)
        return interrupted("finished runs are kept, cut-off ones continue from their checkpoints", resume_argv)
    code = _print_report(str(outcome.sweep_dir), outcome)
    target, prog = outcome.tracker.target, _program()
    uri = _redact(target.uri)
    if outcome.unsynced:
        keys = outcome.unsynced
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        print(f"\nwarning: MLflow ({uri}) does not hold {len(keys)} run(s) fully: {shown}; their records are in "
              f"the run folders. When it is back: {prog} sync {outcome.sweep_dir}")
    if target.embedded:
        page = RUNS_TABLE.format(outcome.tracker.experiment_id) if outcome.tracker.experiment_id else ""
        print(f"\nBrowse every run in MLflow: {prog} ui{_ui_store_arg(target)}   (it prints the URL to open: "
              f"http://127.0.0.1:{UI_PORT}{page})")
    elif not outcome.unsynced:
        print(f"\nEvery run is in MLflow at {uri} (experiment {outcome.tracker.experiment!r})")
    return code if outcome.status == Status.FINISHED else 1


def _redact(uri: str) -> str:
    from ..tracking import store

    return store.redact(uri)


def _program() -> str:
    """How this shell runs dsr-tune: by name on PATH, else the environment's script."""
    if shutil.which("dsr-tune"):
        return "dsr-tune"
    script = Path(sys.executable).parent / "dsr-tune"
    if not script.exists():
        return f"{sys.executable} -m dsr_tune.cli"
    rel = os.path.relpath(script)
    return rel if not rel.startswith("..") else str(script)


def _ui_store_arg(target) -> str:
    """`` --tracking-uri URI`` when ``dsr-tune ui`` would not find this store by itself."""
    from ..tracking import store

    return "" if store.resolve(None).uri == target.uri else f" --tracking-uri {shlex.quote(_redact(target.uri))}"


def _print_report(sweep: str, outcome=None, uri: str | None = None) -> int:
    from ..sweep.report import render
    from ..sweep.report.gather import build

    try:
        try:
            table, files, source = build(sweep, uri)
        except (LookupError, RuntimeError) as exc:
            if outcome is None:  # `dsr-tune report` of something that is not a sweep: bad input
                return fail(f"report: {exc}")
            print(f"dsr-tune: no report: {exc}", file=sys.stderr)
            return 1
        print()
        print(render.text(table), end="")
        print(f"\nreport: {files['md']}, {files['png']} and {files['csv']} (from {source})")
        return 0
    finally:  # the sweep's parent run is closed whatever the report does
        if outcome is not None and outcome.tracker.parent_id:  # else sync has closed it, or MLflow is down
            err = outcome.tracker.close_parent(outcome.status)
            if err:
                print(f"WARNING: could not close the parent run: {err}", file=sys.stderr)


def cmd_report(args) -> int:
    error = args.tracking_uri and store_error(args.tracking_uri)
    if error:
        return fail(error)
    return _print_report(args.sweep, uri=args.tracking_uri)


def cmd_sync(args) -> int:
    from ..tracking.sync import SyncError, sync_sweep

    error = args.tracking_uri and store_error(args.tracking_uri)
    if error:
        return fail(error)
    try:
        s = sync_sweep(args.sweep_dir, args.tracking_uri, everything=args.all)
    except SyncError as exc:
        return fail(str(exc))
    print(f"synced {s.runs} run folder(s): {s.created} MLflow run(s) created, {s.params} params, "
          f"{s.metrics} metric values, {s.artifacts} artifacts logged")
    if s.running:
        print(f"left {s.running} run(s) still marked RUNNING alone (their trial may be logging them); "
              "--all syncs them too")
    if s.failed:
        print(f"still failing: {', '.join(s.failed)}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="search hyperparameters with Ray Tune + Optuna, baselines paired, MLflow",
                       description=(
        "Run the sweep of SPACE.yaml (see search_spaces/): for each searched method (and each searched "
        "sparsity), Optuna proposes search.samples trials on search.trial_seed, selected on the validation split; then at every "
        "sparsity the selection is re-trained on the fresh seeds beside every baseline (static and thin "
        "dense at 1x and 2x the epochs, GMP, ablations...) and the dense reference. Every run goes to "
        "MLflow (default: ./mlruns). Ends with the comparison table (n, 95% CI, paired differences)."))
    s.add_argument("space", help="search-space YAML (see search_spaces/)")
    s.add_argument("overrides", nargs="*", help="dotted overrides: config keys (train.epochs=3) or the space "
                   "file's own (search.samples=4, seeds=[0], space.optim.lr={loguniform: [0.01, 0.1]})")
    s.add_argument("--output", "-o", help="sweep folder (default: runs/sweeps/<name>; on a Ray cluster required, "
                   "on a folder every node shares)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --output")
    s.add_argument("--overwrite", action="store_true", help="start over in an --output that holds a sweep")
    s.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--table", action="store_true", help="also print Tune's trial table (at most every 30 s) "
                   "beside the one-line events")
    add_plan_args(s)
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="table and figure of a sweep from MLflow", description=(
        "Per sparsity: each row's test accuracy over the report's seeds (mean, std, n, 95% CI from n = 3, "
        "clipped to [0, 100], the seed-paired difference to DSR with its CI), the selection runs apart, "
        "epochs, non-zero params, training FLOPs (x the dense run's), inference FLOPs (x dense), time and "
        "device; written as report.md, report.png (accuracy vs parameters and vs training FLOPs with the "
        "intervals, and the paired differences to DSR) and report.csv, and logged to the sweep's parent run."))
    r.add_argument("sweep", help="a sweep folder, a sweep id, or an experiment name (its newest sweep)")
    r.add_argument("--tracking-uri", help="MLflow store (default: the sweep's own, else $MLFLOW_TRACKING_URI "
                   "or ./mlruns)")
    r.set_defaults(func=cmd_report)

    y = sub.add_parser("sync", help="log to MLflow what a sweep's run folders hold and MLflow missed", description=(
        "Make MLflow hold every run of SWEEP_DIR: find each run by its key (or create it, and the parent, "
        "with the params and tags a live sweep gives them), log the params, metric steps and artifacts it "
        "lacks and its final status. Running it twice logs nothing the second time. The run folder of "
        "dsr-tune train is synced the same way."))
    y.add_argument("sweep_dir", help="a sweep folder, or the run folder of dsr-tune train")
    y.add_argument("--tracking-uri", help="log into this store instead of the sweep's own")
    y.add_argument("--all", action="store_true", help="check every run, not only the ended ones marked unsynced")
    y.set_defaults(func=cmd_sync)
