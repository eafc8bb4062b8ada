"""``dsr-tune train`` (one process, or Ray Train with train.workers >= 2) and ``dsr-tune keys``."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import config as C
from .. import runfolder
from ..records import Status
from .common import fail, fault, interrupted, joining_cluster, ray_host_error, starting, storage_fault


def _changed_keys(saved: C.Config, cfg: C.Config) -> list[str]:
    """The keys ``cfg`` changes that a resume may not, each with the run's value and the new one.
    Schedules derived from train.epochs compare as written: left null on both
    sides, they follow the new train.epochs and are no change."""
    fa, fb = saved.flat(), cfg.flat()
    follow = C.follows_epochs(saved) & C.follows_epochs(cfg)
    return [f"{k} ({fa[k]!r} in the run, {fb.get(k)!r} now)" for k in fa
            if fa[k] != fb.get(k) and k not in RESUMABLE_KEYS and k not in follow]


def cmd_train(args) -> int:
    from ..tracking import store  # no mlflow import: that waits for the run's logger thread

    try:
        cfg = C.load(args.config, args.overrides)
        if not joining_cluster(args.address):  # on a cluster the data lives on the nodes that train
            C.check_paths(cfg)
        target = None if args.no_mlflow else store.resolve(args.tracking_uri)
    except C.ConfigError as exc:
        return fail(str(exc) if exc.key.startswith(("--", "MLFLOW")) else f"config {exc}")
    out = Path(args.output or Path("runs") / Path(args.config).stem)
    latest = out / runfolder.CHECKPOINT
    ray_run = (out / runfolder.RAY_RUN).exists()  # a Ray Train run: its checkpoints may be in remote storage
    if args.resume and (latest.exists() or ray_run):
        try:
            saved = C.load(out / runfolder.CONFIG) if (out / runfolder.CONFIG).exists() else cfg
        except C.ConfigError as exc:
            return fail(f"--resume: the run's own config {out / runfolder.CONFIG} no longer validates: {exc}")
        changed = _changed_keys(saved, cfg)
        if changed:
            return fail(f"--resume: the config differs from the run's own ({out / runfolder.CONFIG}) in "
                        f"{'; '.join(changed)}; set it back to resume (a resume may change train.epochs, whose "
                        "null schedules follow it, train.stop_after and the Ray worker settings), or start over "
                        "with --overwrite")
    elif (latest.exists() or ray_run) and not args.overwrite:
        return fail(f"--output {out} already holds a run; pass --resume to continue it or --overwrite to start over")
    try:
        runfolder.writable(out)
    except runfolder.StorageError as exc:
        return fail(f"--output {out}: {exc}; give a folder that can be written (nothing was started)")

    if cfg.train.workers >= 2 and (host_error := ray_host_error(args.address)):
        return fail(host_error)
    starting(f"train {cfg.sparsity.method} at sparsity {cfg.sparsity.sparsity:g}, {cfg.model.name} on "
             f"{cfg.data.name}, {cfg.train.epochs} epochs -> {out}")
    tracker = None
    if target is not None:
        from ..tracking.trainrun import TrainTracker

        tracker = TrainTracker.start(target, Path(args.config).stem, out, cfg, _command(args, out), args.resume)
    if cfg.train.workers >= 2:  # Ray Train: N DDP workers (dsr_tune/distributed); one worker trains here
        return _train_ray(args, cfg, out, tracker)
    return _train_here(args, cfg, out, tracker)


def _train_here(args, cfg: C.Config, out: Path, tracker) -> int:
    from ..train import train  # torch is heavy: import after validation

    from ..data import DataError

    try:
        record = train(cfg, out, resume=args.resume, loggers=[tracker.logger()] if tracker else [])
    except KeyboardInterrupt:
        _close(tracker, Status.KILLED, out)
        return interrupted("the last finished epoch is saved", _resume_argv(args, out))
    except C.ConfigError as exc:
        _close(tracker, Status.FAILED, out)
        return fail(str(exc) if exc.key.startswith("--") else f"config {exc}")
    except DataError as exc:  # found only while training: the last finished epoch's checkpoint is intact
        _close(tracker, Status.FAILED, out)
        return fault(f"{exc} (set data.skip_bad_images=true to skip such files; the last finished epoch is "
                     f"saved in {out})")
    except runfolder.StorageError as exc:  # disk full, folder gone read-only: the last checkpoint is intact
        _close(tracker, Status.FAILED, out)
        return storage_fault(exc, _resume_argv(args, out))
    except BaseException:
        _close(tracker, Status.FAILED, out)
        raise
    # a run cut short by train.stop_after is KILLED in MLflow until --resume finishes it
    status = Status.FINISHED if not record or record["epoch"] + 1 >= cfg.train.epochs else Status.KILLED
    summary = (f"test accuracy {100 * record['test_acc']:.2f}%{_cost(record)}" if record
               else "nothing left to train")
    if record and record["epoch"] + 1 < cfg.train.epochs:  # train.stop_after cut it: say how to go on
        summary += (f" after epoch {record['epoch'] + 1} of {cfg.train.epochs} (train.stop_after); "
                    f"continue with: {' '.join(a for a in _resume_argv(args, out) if not a.startswith('train.stop_after='))}")
    print(f"done: {summary}; run folder {out}{_close(tracker, status, out, quiet=True)}")
    return 0


def _close(tracker, status: str, out: Path, quiet: bool = False) -> str:
    """The MLflow run's end (records, artifacts, model, status); what the done line says about it (printed
    as its own line unless ``quiet``)."""
    try:
        error = tracker.close(status) if tracker is not None else None
    except KeyboardInterrupt:  # a second Ctrl-C: the folder keeps everything, sync logs it
        error = "interrupted"
    if tracker is None or not tracker.begun:  # no run, or refused before it trained: nothing in MLflow
        return ""
    if error:
        note = f"; MLflow does not hold it ({error}): dsr-tune sync {out} logs it when MLflow is back"
    else:
        note = f"; MLflow: run {out.resolve().name!r} in experiment {tracker.experiment!r} (dsr-tune ui shows it)"
    if not quiet:
        print(note.removeprefix("; "), file=sys.stderr)
    return note


def _command(args, out: Path) -> str:
    return " ".join(["dsr-tune train", args.config, *args.overrides, "--output", str(out)])


# -- Ray Train (train.workers >= 2) ------------------------------------------
# Keys a resumed run may change: the global batch stays, so the math does too.
RESUMABLE_RAY_KEYS = {"train.workers", "train.use_gpu", "train.cpus_per_worker", "train.max_failures",
                      "train.keep_checkpoints", "train.storage_path"}
# ... and its length (README, "Resume"): schedules left null follow train.epochs from the resumed epoch on
RESUMABLE_KEYS = {"train.epochs", "train.stop_after"} | RESUMABLE_RAY_KEYS


def _cost(record: dict) -> str:
    """The run's cost as the done line says it (nothing for records without it)."""
    if record.get("train_flops") is None:
        return ""
    return (f", {record['train_flops']:.3g} training FLOPs, {record['infer_flops']:,} FLOPs per image at "
            f"inference, {record['train_time']:.1f} s on {record['device']}")


def _train_ray(args, cfg: C.Config, out: Path, tracker) -> int:
    from ..distributed import launch  # ray and torch are heavy: import after validation

    # live metrics from rank 0 where it reaches the store: not a local sqlite file from another node
    live = tracker is not None and not (joining_cluster(args.address) and tracker.target.embedded)
    specs = [spec for spec in [tracker.logger_spec()] if spec is not None] if live else []
    try:
        summary = launch(cfg, out, resume=args.resume, address=args.address, logger_specs=specs)
    except KeyboardInterrupt:
        _trained(tracker)
        _close(tracker, Status.KILLED, out)
        return interrupted("the last checkpointed epoch is saved", _resume_argv(args, out))
    except C.ConfigError as exc:
        _close(tracker, Status.FAILED, out)
        return fail(f"config {exc}")
    except runfolder.StorageError as exc:  # the driver's own files (ray_run.json, the run record)
        _trained(tracker)
        _close(tracker, Status.FAILED, out)
        return storage_fault(exc, _resume_argv(args, out))
    except Exception as exc:  # ray.train.TrainingFailedError and friends: one line, details above
        _trained(tracker)
        _close(tracker, Status.FAILED, out)
        if type(exc).__module__.split(".")[0] != "ray":
            raise
        print(f"dsr-tune: training failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    _trained(tracker)
    m = summary.metrics
    status = Status.FINISHED if m.get("epoch", cfg.train.epochs) + 1 >= cfg.train.epochs else Status.KILLED
    done = f"test accuracy {100 * m['test_acc']:.2f}% after {m['epoch'] + 1} epochs" if "test_acc" in m else "nothing left to train"
    done += _cost(m) if "test_acc" in m else ""
    print(f"done: {done} on {m.get('workers', cfg.train.workers)} workers; run folder {out}; checkpoints "
          f"{summary.storage}{_close(tracker, status, out, quiet=True)}")
    return 0


def _trained(tracker) -> None:
    """After Ray Train ran: the run is MLflow's business now, also when no live logger opened it (on a
    cluster with the embedded store, it is logged from the run folder by :func:`_close`)."""
    if tracker is not None:
        tracker.begin()


def _resume_argv(args, out: Path) -> list[str]:
    argv = ["dsr-tune", "train", args.config, *args.overrides, "--output", str(out), "--resume"]
    return argv + (["--address", args.address] if args.address else [])


def cmd_keys(args) -> int:
    from ..sweep.spec import Search  # a space file's own section: the search, its budget, how trials are packed

    try:
        print(C.describe(args.section, more={"search": Search}))
    except C.ConfigError as exc:
        return fail(str(exc))
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train one configuration", description=(
        "Train CONFIG.yaml with optional section.key=value overrides. Writes config.yaml, "
        "metrics.jsonl and checkpoints to --output, and logs the run to MLflow (the embedded ./mlruns store "
        "unless --tracking-uri or --no-mlflow says otherwise): experiment <config name>, run <output folder "
        "name>; --resume continues the same MLflow run."))
    t.add_argument("config", help="YAML config (see configs/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sparsity.sparsity=0.8")
    t.add_argument("--output", "-o", help="run folder (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    t.add_argument("--overwrite", action="store_true", help="start over in an --output that already holds a run")
    t.add_argument("--tracking-uri", help="the MLflow store the run is logged to: a path to an mlflow.db or a folder "
                   "holding one, sqlite:///PATH, http(s)://HOST:PORT (default: $MLFLOW_TRACKING_URI, else "
                   "./mlruns/mlflow.db, as for sweeps); the experiment is named after the config file, the run "
                   "after the --output folder")
    t.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow (its folder holds "
                   "everything anyway)")
    t.add_argument("--address", help="with train.workers >= 2 (Ray Train; 0 or 1 worker trains in this process, "
                   "without Ray): join this Ray cluster (default: $RAY_ADDRESS, else a local Ray started and "
                   "stopped with the command)")
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("keys", help="list every config key with its default and meaning", description=(
        "Print every config key (or one section's) with its default and what it means; method-specific "
        "keys are nested under the method, e.g. sparsity.dsr.delta."))
    k.add_argument("section", nargs="?", help="only this section (model, data, optim, sparsity, train; search: a "
                   "space file's)")
    k.set_defaults(func=cmd_keys)
