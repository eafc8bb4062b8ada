"""A sweep's folder and its MLflow parent: sweep.json made or taken up again,
what --overwrite may delete, and what MLflow missed of the runs in it.

::

    sweep.json      the sweep's identity (id, the space as resolved, where it runs), the phases
                    done, its status, its tracker (store URI without credentials) and the parent
                    run's params (so a parent `dsr-tune sync` creates later gets them too)
    optuna.db       the Optuna studies, one per search phase (SQLite; what --resume continues a search from)
    paired.json     the paired jobs, fixed when the search ends
    runs/<key>/     one per job: config.yaml, metrics.jsonl, checkpoint.pt, tracking.json
    ray_train/      Ray Train checkpoints of multi-worker runs
    tune/<phase>/   Tune's own files of the phase's latest run (its pickles included): never read

--resume reads sweep.json, optuna.db, paired.json and the run folders, nothing Tune pickled.

A comparison without search (``dsr-tune compare``) keeps the same folder, ``kind: compare``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from .. import config as C
from .. import runfolder
from ..records import Status
from ..runfolder import PAIRED, STUDY, SWEEP as SWEEP_FILE
from ..tracking import SweepTracker, store
from ..tracking.mlflow_runs import read_run_file
from ..tracking.sync import SyncError, run_folders, sync_sweep
from .spec import Space, packing
from .terms import Phase

log = logging.getLogger("dsr_tune")


def default_output(space: Space) -> Path:
    return Path("runs") / "sweeps" / space.name


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


# What a sweep folder holds (above): --overwrite deletes a folder only if it holds nothing else
SWEEP_LAYOUT = {SWEEP_FILE, STUDY, f"{STUDY}-journal", f"{STUDY}-wal", f"{STUDY}-shm", PAIRED,
                runfolder.RUNS, runfolder.RAY_TRAIN, runfolder.TUNE}


def _in_layout(name: str) -> bool:
    """A name a sweep folder may hold: its files, its reports, a temporary of the atomic write."""
    stem = name.split(".")[0].split("_")[0].split("-")[0]  # report.md, report_dynamics_s0.9.png, report-<id>.csv
    return name in SWEEP_LAYOUT or stem in runfolder.REPORTS or runfolder.temp_writer(name) is not None


FORMAT = 2  # sweep.json's "format": 2 resumes from the files above; absent: from Tune's pickles (older sweeps)


def searches_left(space: Space, meta: dict, out_dir: Path) -> list[Phase]:
    """The search phases not done yet; none once paired.json exists: the selection
    is made, and a search the plan gained since (the dense search of a sweep
    started before dense was tuned) would change nothing."""
    from .plan import search_phases

    if (out_dir / PAIRED).exists():
        return []
    return [p for p in search_phases(space) if p.name not in meta.get("done", [])]


def _old_search_left(space: Space, meta: dict, out_dir: Path) -> bool:
    """A sweep started before FORMAT 2 with a search not done: its study does not name its trials' run folders."""
    return meta.get("format", 1) < FORMAT and bool(searches_left(space, meta, out_dir))


def prepare(space: Space, out_dir: Path, *, resume: bool, overwrite: bool) -> dict:
    """The sweep's sweep.json: a new one, or the one to resume (same space, same
    place), marked RUNNING again. Raises ConfigError for a folder that cannot
    be used as asked."""
    meta_path = out_dir / SWEEP_FILE
    raw = json.loads(json.dumps(space.raw, default=str))
    if isinstance((raw.get("tracking") or {}).get("uri"), str):  # written down without credentials
        raw["tracking"]["uri"] = store.redact(raw["tracking"]["uri"])
    if out_dir.is_dir() and all(_in_layout(p.name) for p in out_dir.iterdir()):  # a sweep folder (not a stranger's)
        for stale in runfolder.clean_stale(out_dir):  # left by a sweep (or a report) killed while writing
            log.info("removed %s, left by a process killed while writing it", stale.name)
    if resume:
        if not meta_path.exists():
            raise C.ConfigError("--resume", f"{out_dir} holds no sweep to resume (no {SWEEP_FILE})")
        meta = json.loads(meta_path.read_text())
        changed = _diff(meta["space"], raw)
        if changed:
            raise C.ConfigError("--resume", f"the space differs from the sweep's own in {', '.join(changed)}; "
                                "resume with the same file and overrides")
        if meta.get("path", str(out_dir)) != str(out_dir):
            # paired.json's configs (mask_from, dense_from) and Ray Train's storage hold absolute paths
            raise C.ConfigError("--resume", f"the sweep was started in {meta['path']} and has moved to {out_dir}; "
                                "its planned runs point to the old place: move it back (or link it there) "
                                "to resume")
        if _old_search_left(space, meta, out_dir):
            raise C.ConfigError("--resume", f"{out_dir} was started by an older dsr-tune, which resumed a search "
                                "from Tune's pickled state; this one never reads pickles: finish it with the "
                                "version that started it, or start over with --overwrite")
        meta["format"] = FORMAT
        # before anything syncs: a sweep.json still saying KILLED would close the parent run
        meta["status"] = Status.RUNNING
        meta.setdefault("parent_params", _parent_params_json(space))  # a sweep.json from before they were kept
        save(out_dir, meta)
        return meta
    _clear(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_id = f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracker = SweepTracker(store.resolve(space.tracking_uri), space.experiment, sweep_id, store.git_revision())
    meta = {"sweep_id": sweep_id, "space_file": str(space.path), "path": str(out_dir), "space": raw,
            "kind": "compare" if space.sparsities is not None else "sweep", "done": [], "format": FORMAT,
            "status": Status.RUNNING, "tracker": tracker.to_json(),
            # the parent run's params, for a parent that `dsr-tune sync` creates (MLflow down at the start)
            "parent_params": _parent_params_json(space)}
    save(out_dir, meta)
    return meta


def _clear(out_dir: Path, overwrite: bool) -> None:
    """Make room for a new sweep: an empty or missing folder is fine; with
    ``overwrite`` a sweep folder (and nothing else) is deleted."""
    if not (out_dir.exists() and any(out_dir.iterdir())):
        return
    is_sweep = (out_dir / SWEEP_FILE).exists()
    if not overwrite:
        raise C.ConfigError("--output", f"{out_dir} already holds {'a sweep' if is_sweep else 'files'}; pass "
                            "--resume to continue a sweep or --overwrite to start over in a sweep folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if not _in_layout(p.name))
    if foreign or not is_sweep:
        shown = ", ".join(foreign[:5]) or f"no {SWEEP_FILE}"
        raise C.ConfigError("--overwrite", f"{out_dir} is not a sweep folder ({shown}); refusing to delete it: "
                            "pick another --output")
    shutil.rmtree(out_dir)


def save(out_dir: Path, meta: dict) -> None:
    runfolder.write_json(out_dir / SWEEP_FILE, meta)


def parent_params(space: Space) -> dict:
    """The sweep's settings as the parent run's params."""
    out = {"space_file": str(space.path), "methods": ",".join(space.methods), "seeds": space.seeds,
           "baselines": ",".join(space.baselines), "dense": space.dense, "tune_baselines": space.tune_baselines}
    if space.sparsities is not None:
        out["sparsities"] = ",".join(f"{s:g}" for s in space.sparsities)
    out.update({f"search.{k}": v for k, v in space.search.to_dict().items()})
    out["packing"] = packing(space) or "no GPU"
    out.update({f"space.{p.key}": f"{p.kind} {list(p.endpoints())}" for p in space.params})
    out.update({f"base.{k}": v for k, v in space.base.flat().items()})
    return out


def _parent_params_json(space: Space) -> dict[str, str]:
    """:func:`parent_params` as MLflow stores them (strings, as runs.log_params writes them)."""
    return {k: str(v) for k, v in parent_params(space).items()}


# ---------------------------------------------------------------- the MLflow side


def open_tracker(space: Space, out_dir: Path, meta: dict, *, resume: bool) -> SweepTracker:
    """The sweep's tracker, connected (experiment, parent run) if MLflow answers;
    on ``resume`` also logs what MLflow missed of the trials that ended."""
    tracker = new_tracker(space, meta)
    connect(tracker, space, out_dir, meta, resume=resume)
    return tracker


def new_tracker(space: Space, meta: dict) -> SweepTracker:
    """The sweep's tracker, not connected yet (see :func:`connect`)."""
    tracker = SweepTracker.from_json(meta["tracker"])
    tracker.target = store.with_credentials(tracker.target, space.tracking_uri)  # sweep.json keeps none
    return tracker


def connect(tracker: SweepTracker, space: Space, out_dir: Path, meta: dict, *, resume: bool) -> SweepTracker:
    """:func:`open_tracker`'s MLflow part, on ``tracker`` (the driver runs it while Ray starts)."""
    error = tracker.connect(meta.get("parent_params") or parent_params(space))  # what sync logs, too
    if error:
        log.warning("%s\n  the sweep trains anyway and keeps every record in its run folders; "
                    "log them later with: dsr-tune sync %s", error, out_dir)
        return tracker
    where = ("embedded store " if tracker.target.embedded else "") + store.redact(tracker.target.uri)
    log.info("MLflow: experiment %r, parent run %s (%s)", tracker.experiment, meta["sweep_id"], where)
    if resume:
        sync_leftovers(out_dir)
    return tracker


def unsynced(out_dir: Path) -> list[str]:
    return [info["key"] for d in run_folders(out_dir)
            if (info := read_run_file(d)) and "key" in info and not info.get("synced")]


def sync_leftovers(out_dir: Path) -> list[str]:
    """Log what MLflow missed (a server that was down for a while); returns
    the keys of runs it still does not fully hold (unfinished ones included)."""
    if not unsynced(out_dir):
        return []
    try:
        s = sync_sweep(out_dir)
        if s.metrics or s.created:
            log.info("MLflow: logged %d metric values of %d run(s) it had missed (%d run(s) created)",
                     s.metrics, s.runs, s.created)
    except SyncError as exc:
        log.warning("MLflow sync failed: %s", exc)
    return unsynced(out_dir)
