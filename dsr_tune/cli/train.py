"""``dsr-tune train`` (one process, or Ray Train with train.workers >= 2) and ``dsr-tune keys``."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import config as C
from .. import runfolder
from .common import fail, interrupted, joining_cluster, ray_host_error, starting


def _changed_keys(a: C.Config, b: C.Config, allowed: set[str]) -> list[str]:
    fa, fb = a.flat(), b.flat()
    return [k for k in fa if fa[k] != fb[k] and k not in allowed]


def cmd_train(args) -> int:
    try:
        cfg = C.load(args.config, args.overrides)
        if not joining_cluster(args.address):  # on a cluster the data lives on the nodes that train
            C.check_paths(cfg)
    except C.ConfigError as exc:
        return fail(f"config {exc}")
    out = Path(args.output or Path("runs") / Path(args.config).stem)
    latest = out / runfolder.CHECKPOINT
    ray_run = (out / runfolder.RAY_RUN).exists()  # a Ray Train run: its checkpoints may be in remote storage
    if args.resume and (latest.exists() or ray_run):
        try:
            saved = C.load(out / runfolder.CONFIG) if (out / runfolder.CONFIG).exists() else cfg
        except C.ConfigError as exc:
            return fail(f"--resume: the run's own config {out / runfolder.CONFIG} no longer validates: {exc}")
        changed = _changed_keys(saved, cfg, {"train.epochs", "train.stop_after"} | RESUMABLE_RAY_KEYS)
        if changed:
            return fail(f"--resume: the config differs from the run's own in {', '.join(changed)}; "
                         "only train.epochs, train.stop_after and the Ray worker settings may change on resume")
    elif (latest.exists() or ray_run) and not args.overwrite:
        return fail(f"--output {out} already holds a run; pass --resume to continue it or --overwrite to start over")

    starting(f"train {cfg.sparsity.method} at sparsity {cfg.sparsity.sparsity:g}, {cfg.model.name} on "
             f"{cfg.data.name}, {cfg.train.epochs} epochs -> {out}")
    if cfg.train.workers >= 2:  # Ray Train: N DDP workers (dsr_tune/distributed); one worker trains here
        return _train_ray(args, cfg, out)

    from ..train import train  # torch is heavy: import after validation

    from ..data import DataError

    try:
        record = train(cfg, out, resume=args.resume)
    except KeyboardInterrupt:
        return interrupted("the last finished epoch is saved", _resume_argv(args, out))
    except C.ConfigError as exc:
        return fail(str(exc) if exc.key.startswith("--") else f"config {exc}")
    except DataError as exc:  # found only while training: the last finished epoch's checkpoint is intact
        print(f"dsr-tune: error: {exc} (set data.skip_bad_images=true to skip such files; the last finished "
              f"epoch is saved in {out})", file=sys.stderr)
        return 1
    summary = (f"test accuracy {100 * record['test_acc']:.2f}%{_cost(record)}" if record
               else "nothing left to train")
    if record and record["epoch"] + 1 < cfg.train.epochs:  # train.stop_after cut it: say how to go on
        summary += (f" after epoch {record['epoch'] + 1} of {cfg.train.epochs} (train.stop_after); "
                    f"continue with: {' '.join(a for a in _resume_argv(args, out) if not a.startswith('train.stop_after='))}")
    print(f"done: {summary}; run folder {out}")
    return 0


# -- Ray Train (train.workers >= 2) ------------------------------------------
# Keys a resumed run may change: the global batch stays, so the math does too.
RESUMABLE_RAY_KEYS = {"train.workers", "train.use_gpu", "train.cpus_per_worker", "train.max_failures",
                      "train.keep_checkpoints", "train.storage_path"}


def _cost(record: dict) -> str:
    """The run's cost as the done line says it (nothing for records without it)."""
    if record.get("train_flops") is None:
        return ""
    return (f", {record['train_flops']:.3g} training FLOPs, {record['infer_flops']:,} FLOPs per image at "
            f"inference, {record['train_time']:.1f} s on {record['device']}")


def _train_ray(args, cfg: C.Config, out: Path) -> int:
    host_error = ray_host_error(args.address)
    if host_error:
        return fail(host_error)
    from ..distributed import launch  # ray and torch are heavy: import after validation

    try:
        summary = launch(cfg, out, resume=args.resume, address=args.address)
    except KeyboardInterrupt:
        return interrupted("the last checkpointed epoch is saved", _resume_argv(args, out))
    except C.ConfigError as exc:
        return fail(f"config {exc}")
    except Exception as exc:  # ray.train.TrainingFailedError and friends: one line, details above
        if type(exc).__module__.split(".")[0] != "ray":
            raise
        print(f"dsr-tune: training failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    m = summary.metrics
    done = f"test accuracy {100 * m['test_acc']:.2f}% after {m['epoch'] + 1} epochs" if "test_acc" in m else "nothing left to train"
    done += _cost(m) if "test_acc" in m else ""
    print(f"done: {done} on {m.get('workers', cfg.train.workers)} workers; run folder {out}; checkpoints {summary.storage}")
    return 0


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
        "metrics.jsonl and checkpoints to --output."))
    t.add_argument("config", help="YAML config (see configs/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sparsity.sparsity=0.8")
    t.add_argument("--output", "-o", help="run folder (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    t.add_argument("--overwrite", action="store_true", help="start over in an --output that already holds a run")
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
