"""``dsr-tune report SWEEP``: gather a sweep's (or comparison's) runs, build
its table (:mod:`.stats`), write it (:mod:`.render`, :mod:`.dynamics`) and
log it to the parent run with the table's numbers as its metrics. Reporting
again changes MLflow only where the table did: the numbers that changed (more
runs ended) at the next step (the parent's ``report_step`` tag), the files
written over.

The runs come from MLflow (the sweep's child runs, by its ``sweep`` tag) or,
when MLflow is out of reach or holds nothing of it, from the sweep folder's
run folders (:func:`load_local`): both hold the same records.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from ... import runfolder
from ...records import Role
from ..terms import DENSE, REFERENCE, slug, sparsity_tag
from . import render
from .stats import RunRow, Table, pareto_front, summarize

log = logging.getLogger("dsr_tune")


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _row(key: str, tags: dict, status: str, metrics: dict, epochs: int, device: str | None = None) -> RunRow:
    sparsity, role = _float(tags.get("sparsity")), tags.get("role", "")
    # a re-trained selection came from a search: tuned (older sweeps tagged it "false")
    tuned = str(tags.get("tuned")).lower() == "true" or (role == Role.SELECTED and bool(tags.get("selected_from")))
    method = tags.get("method", "?")
    if role == Role.DENSE or method == DENSE:  # dense, its search trials too, has no sparsity
        sparsity = None
    return RunRow(key=key, role=role, method=method, sparsity=sparsity, seed=int(tags.get("seed", 0)),
                  status=status, metrics=metrics, epochs=epochs, tuned=tuned, selected_from=tags.get("selected_from"),
                  device=device,
                  trial=int(trial) if (trial := str(tags.get("optuna_trial", ""))).isdigit() else None)


def row_from_mlflow(run) -> RunRow:
    from ...tracking.mlflow_runs import EPOCH

    tags, params = run.data.tags, run.data.params
    metrics = {k.removeprefix(EPOCH): v for k, v in run.data.metrics.items()}  # epoch/test_acc -> test_acc
    metrics["epochs_done"] = int(run.data.metrics.get("epoch", 0))
    key = tags.get("dsr_tune.run", run.info.run_id).split("/", 1)[-1]
    return _row(key, tags, run.info.status, metrics, int(_float(params.get("train.epochs")) or 0), params.get("device"))


def load_mlflow(client, sweep_id: str, link: bool = False) -> tuple[list[RunRow], object]:
    """The child runs and the parent run of ``sweep_id`` (searching every experiment);
    with ``link`` the reported runs get their link tags first (:func:`link_runs`)."""
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = client.search_runs(exps, filter_string=f"tags.sweep = '{sweep_id}'", max_results=50000)
    if link:
        try:
            link_runs(client, runs)
        except Exception as exc:  # noqa: BLE001 (a store that refuses tags still reports)
            log.warning("MLflow: the runs' link tags were not set: %s", str(exc).splitlines()[0] if str(exc) else exc)
    parent = next((r for r in runs if r.data.tags.get("role") == Role.PARENT), None)
    return [row_from_mlflow(r) for r in runs if r.data.tags.get("role") != Role.PARENT], parent


# the MLflow run ids a reported run is linked to (beside the group tag and selected_from's job key)
LINK_DSR, LINK_SELECTED = "dsr_run_id", "selected_from_run_id"


def link_runs(client, runs) -> int:
    """Tag each reported run with the MLflow run ids it belongs with: ``selected_from_run_id``
    (the search trial its configuration was selected as, or derived from; dense's, when
    it was tuned) and, on every sparse row but DSR's own, ``dsr_run_id`` (the DSR run of
    the same sparsity and seed). Set
    once every run exists (the report runs when the sweep ends; a run may start before
    the DSR run it is compared with). Idempotent; returns how many tags it set."""
    by_key = {r.data.tags.get("dsr_tune.run", "").split("/", 1)[-1]: r for r in runs}
    reported = [r for r in runs if r.data.tags.get("role") in (Role.SELECTED, Role.BASELINE, Role.DENSE)]
    dsr = {(r.data.tags.get("sparsity"), r.data.tags.get("seed")): r for r in reported
           if r.data.tags.get("method") == REFERENCE}
    n = 0
    for r in reported:
        tags = r.data.tags
        source = by_key.get(tags.get("selected_from") or "")
        ref = dsr.get((tags.get("sparsity"), tags.get("seed"))) if tags.get("method") != REFERENCE else None
        want = {LINK_SELECTED: source.info.run_id if source is not None else None,
                LINK_DSR: ref.info.run_id if ref is not None else None}
        for name, value in want.items():
            if value and tags.get(name) != value:
                client.set_tag(r.info.run_id, name, value)
                tags[name] = value
                n += 1
    return n


def latest_sweep(client, name: str) -> str | None:
    """The newest sweep id of experiment ``name``, or None."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.role = '{Role.PARENT}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    return parents[0].data.tags.get("sweep") if parents else None


def load_local(sweep_dir: str | Path) -> list[RunRow]:
    """The same rows from a sweep folder's run folders (no MLflow)."""
    import yaml

    from ...tracking.mlflow_runs import last_epoch, read_run_file
    from ...tracking.sync import run_folders

    rows = []
    for run_dir in run_folders(sweep_dir):
        info, last = read_run_file(run_dir) or {}, last_epoch(run_dir)
        if last is None or "key" not in info:
            continue
        cfg = yaml.safe_load((run_dir / runfolder.CONFIG).read_text())
        rows.append(_row(info["key"], info.get("tags", {}), info.get("status", ""), last, cfg["train"]["epochs"],
                         last.get("device")))
    return rows


# ---------------------------------------------------------------- the command


def _settings(meta: dict | None, params: dict | None) -> tuple[str, str, bool]:
    if meta is not None:
        s = meta["space"].get("search") or {}
        kind = meta.get("kind", "sweep")
        metric = s.get("metric", "val_acc") if kind == "sweep" else "val_acc"
        return metric, s.get("mode", "max"), bool(s.get("pareto", False))
    params = params or {}
    return (params.get("search.metric", "val_acc"), params.get("search.mode", "max"),
            str(params.get("search.pareto", "False")).lower() == "true")


def _find(sweep: str, uri: str | None):
    """(sweep id, target, sweep.json or None, folder or None) for a folder, an id or a name.
    A name or id on an embedded store that does not exist is refused without creating it."""
    from ...tracking import store

    folder = Path(sweep) if (Path(sweep) / runfolder.SWEEP).is_file() else None
    if folder is not None:
        meta = json.loads((folder / runfolder.SWEEP).read_text())
        tgt = store.resolve(uri) if uri else store.with_credentials(store.Target(**meta["tracker"]["target"]))
        return meta["sweep_id"], tgt, meta, folder
    if Path(sweep).is_dir():
        raise LookupError(f"{sweep} is a folder but not a sweep folder (no {runfolder.SWEEP})")
    tgt = store.resolve(uri)
    if tgt.uri.startswith("sqlite:///") and not Path(tgt.uri[len("sqlite:///"):]).is_file():
        raise LookupError(f"no sweep {sweep!r}: it is not a sweep folder, and there is no MLflow store at "
                          f"{tgt.uri[len('sqlite:///'):]} to look it up in (give a sweep folder, or --tracking-uri)")
    return sweep, tgt, None, None


def _gather(sweep: str, uri: str | None):
    from ...tracking import store

    sweep_id, tgt, meta, folder = _find(sweep, uri)
    rows, parent, client, source = [], None, None, store.redact(tgt.uri)
    try:
        error = store.probe(tgt)
        if error:
            raise RuntimeError(error)
        client = store.client(tgt)
        if meta is None and not client.search_runs([e.experiment_id for e in client.search_experiments()],
                                                   filter_string=f"tags.sweep = '{sweep}'", max_results=1):
            sweep_id = latest_sweep(client, sweep) or sweep
        rows, parent = load_mlflow(client, sweep_id, link=True)
    except Exception as exc:  # noqa: BLE001 (MLflow out of reach: the run folders hold the same records)
        if folder is None:
            raise LookupError(f"no sweep {sweep!r}: {store.redact(str(exc).splitlines()[0])}") from None
        why = f"MLflow: {store.redact(str(exc).splitlines()[0])}"
    else:  # MLflow answers; it may still hold nothing of this sweep (another store, or it ran offline)
        why = f"{source} holds no run of {sweep_id}"
    if not rows and folder is not None:
        rows, source = load_local(folder), f"the run folders in {folder} ({why})"
    if not rows:
        raise LookupError(f"no runs of sweep {sweep!r} in {source}")
    return sweep_id, meta, folder, rows, parent, client, source


def build(sweep: str, uri: str | None = None, out_dir: str | Path | None = None) -> tuple[Table, dict[str, Path], str]:
    """The report of ``sweep`` (a sweep folder, a sweep id, or an experiment
    name: its newest sweep). Writes report.md, report.png and results.csv (into
    the sweep folder, else ``out_dir`` or the working directory) and logs them
    to the parent run. Returns the table, the files and where the numbers came from.
    Raises LookupError (nothing written) when there is no such sweep."""
    sweep_id, meta, folder, rows, parent, client, source = _gather(sweep, uri)
    metric, mode, pareto = _settings(meta, parent.data.params if parent is not None else None)
    table = summarize(sweep_id, rows, metric, mode)
    if pareto:
        table.pareto = pareto_front(rows, metric)
    from ..select import tie_breaks

    table.ties = [line for _, line in sorted(tie_breaks(rows, metric, mode).items(), key=str)]
    where = folder or Path(out_dir or ".")
    stem = "report" if folder else f"report-{sweep_id}"
    files = {"md": where / f"{stem}.md", "png": where / f"{stem}.png", "csv": where / f"{stem}.csv"}
    runfolder.atomic_write(files["md"], render.markdown(table))
    render.plot(table, files["png"])
    render.write_csv(table, files["csv"])
    if folder is not None:  # what explains the numbers: how each dynamic method moved its budget
        from . import dynamics

        for path in dynamics.plot(folder, table):
            files[path.stem] = path
    if parent is not None:
        _log_to_parent(client, parent.info.run_id, table, files)
    return table, files, source


REPORT_STEP, TIE_TAG = "report_step", "selection_tie_broken"  # parent-run tags


def parent_metrics(table: Table) -> dict[str, float]:
    """The table's numbers as the parent's metrics (``s0.9/static_2x/mean`` ...: :func:`line_metrics`)."""
    return {f"{sparsity_tag(s)}/{slug(ln.method)}/{k}": float(v)
            for s, lines in table.sections.items() for ln in lines for k, v in line_metrics(ln).items()}


def _same(logged, value: float) -> bool:
    return logged is not None and (logged == value or (math.isnan(logged) and math.isnan(value)))


def _log_to_parent(client, run_id: str, table: Table, files: dict[str, Path]) -> None:
    """The report's files as artifacts (written over), its numbers as metrics: the ones
    the parent lacks or holds another value of, at the step after the last report's."""
    from mlflow.entities import Metric

    try:
        for path in files.values():
            client.log_artifact(run_id, str(path), artifact_path="report")
        run = client.get_run(run_id)
        have, tags = run.data.metrics, run.data.tags
        changed = {k: v for k, v in parent_metrics(table).items() if not _same(have.get(k), v)}
        if changed:
            step = int(tags[REPORT_STEP]) + 1 if tags.get(REPORT_STEP, "").isdigit() else 0
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v in changed.items()]
            for i in range(0, len(metrics), 900):
                client.log_batch(run_id, metrics=metrics[i:i + 900])
            client.set_tag(run_id, REPORT_STEP, str(step))
        ties = "; ".join(table.ties) or "no"
        if tags.get(TIE_TAG) != ties:
            client.set_tag(run_id, TIE_TAG, ties)
    except Exception:  # noqa: BLE001 (the files are on disk anyway)
        pass


def line_metrics(ln) -> dict[str, float]:
    """One row's numbers as the parent run's metrics: the mean, its spread and
    interval (n >= 3), the seed-paired difference to DSR with its interval,
    p-value and whether it excludes 0, and what the row cost."""
    values = {"mean": ln.mean, "std": ln.std, "n": ln.n}
    if ln.ci:
        values.update(ci_low=ln.ci[0], ci_high=ln.ci[1], ci_clipped=int(ln.clipped))
    if ln.diff:
        d = ln.diff
        values.update(diff_to_dsr=d.mean, diff_n=d.n, resolved=int(d.resolved))
        if d.ci:
            values.update(diff_ci_low=d.ci[0], diff_ci_high=d.ci[1], diff_p=d.p)
    c = ln.cost
    cost = {"train_flops": c.train_flops, "train_flops_x": c.train_x, "parent_train_flops_x": c.parent_x,
            "infer_flops": c.infer_flops, "infer_flops_x": c.infer_x, "train_time": c.train_time}
    return values | {k: v for k, v in cost.items() if v is not None}
