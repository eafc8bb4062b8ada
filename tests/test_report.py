"""``dsr-tune report``: the right means and spreads from a store the test fills,
the best trial per sparsity, the Pareto front, the figure logged to the parent."""

from __future__ import annotations

import statistics

import pytest

from dsr_tune import cli
from dsr_tune.sweep import report
from dsr_tune.sweep.report import RunRow

SWEEP = "toy-20260101-000000"


def _run(client, exp, parent, key, role, method, sparsity, seed, acc, nonzero, epochs, **tags):
    tags = {"sweep": SWEEP, "role": role, "method": method, "seed": str(seed), "dsr_tune.run": f"{SWEEP}/{key}",
            "mlflow.parentRunId": parent, **({"sparsity": f"{sparsity:g}"} if sparsity is not None else {}), **tags}
    run = client.create_run(exp, run_name=key, tags=tags)
    rid = run.info.run_id
    client.log_param(rid, "train.epochs", str(epochs))
    for step, a in enumerate([acc - 0.1, acc], start=epochs - 1):  # the last value is the final one
        client.log_metric(rid, "test_acc", a, step=step)
        client.log_metric(rid, "epoch", step, step=step)
    client.log_metric(rid, "nonzero_params", nonzero, step=epochs)
    client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("toy", artifact_location=(root / "artifacts").as_uri())
    parent = c.create_run(exp, run_name=SWEEP, tags={"sweep": SWEEP, "role": "parent",
                                                     "dsr_tune.run": f"{SWEEP}/parent"}).info.run_id
    c.log_param(parent, "search.metric", "test_acc")
    c.log_param(parent, "search.pareto", "True")
    r = lambda *a, **k: _run(c, exp, parent, *a, **k)  # noqa: E731
    # sparsity 0.9: trial b is best (0.93); repeated on seed 1 (0.91)
    r("search/a", "search", "dsr", 0.9, 0, 0.90, 5000, 10)
    r("search/b", "search", "dsr", 0.9, 0, 0.93, 5000, 10)
    r("paired/dsr_s0.9_seed1", "seed", "dsr", 0.9, 1, 0.91, 5000, 10, repeat_of="search/b")
    for seed, acc in ((0, 0.85), (1, 0.87)):
        r(f"paired/static_s0.9_seed{seed}", "baseline", "static", 0.9, seed, acc, 5000, 20, baseline_for="search/b")
        r(f"paired/thin_dense_s0.9_seed{seed}", "baseline", "thin_dense", 0.9, seed, acc + 0.04, 4990, 20,
          baseline_for="search/b")
    # sparsity 0.8: one trial, no repeat
    r("search/c", "search", "dsr", 0.8, 0, 0.95, 10000, 10)
    r("paired/static_s0.8_seed0", "baseline", "static", 0.8, 0, 0.94, 10000, 20, baseline_for="search/c")
    for seed, acc in ((0, 0.97), (1, 0.96)):
        r(f"paired/dense_seed{seed}", "dense", "dense", None, seed, acc, 50000, 10)
    return uri, c, parent


def _lines(rep, s):
    return {ln.method: ln for ln in rep.sections[s]}


def test_report_means_from_the_store(store, tmp_path):
    uri, client, parent = store
    rep, files, source = report.build(SWEEP, uri, out_dir=tmp_path)
    assert source == uri and rep.searched == 3
    s9 = _lines(rep, 0.9)
    assert list(s9) == ["dsr", "static", "thin_dense", "dense"]
    assert s9["dsr"].acc == [0.93, 0.91]  # the best trial (b, not a) plus its repeat
    assert s9["dsr"].mean == pytest.approx(0.92) and s9["dsr"].std == pytest.approx(statistics.stdev([0.93, 0.91]))
    assert s9["static"].mean == pytest.approx(0.86) and s9["static"].epochs == 20
    assert s9["thin_dense"].mean == pytest.approx(0.90) and s9["thin_dense"].nonzero == 4990
    assert s9["dense"].mean == pytest.approx(0.965) and s9["dense"].nonzero == 50000
    s8 = _lines(rep, 0.8)
    assert s8["dsr"].acc == [0.95] and s8["dsr"].std == 0.0 and s8["static"].acc == [0.94]
    # the Pareto front of the search trials: c (more params, better) and b (fewer); a is dominated by b
    assert [r.key for r in rep.pareto] == ["search/b", "search/c"]
    text = rep.text()
    assert "92.00 ± 1.41" in text and "best of 2: search/b" in text and "sparsity 0.8" in text
    assert files["png"].stat().st_size > 10_000 and files["png"].read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/report-{SWEEP}.md", f"report/report-{SWEEP}.png"}


def test_report_cli_by_experiment_name(store, tmp_path, capsys, monkeypatch):
    uri, _, _ = store
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "toy", "--tracking-uri", uri]) == 0  # the experiment's newest sweep
    out = capsys.readouterr().out
    assert f"sweep {SWEEP}" in out and "thin_dense" in out and "Pareto front" in out
    assert (tmp_path / f"report-{SWEEP}.png").exists()


def test_best_trial_prefers_finished_runs_and_is_order_free():
    mk = lambda key, acc, status="FINISHED", done=10: RunRow(key, "search", "dsr", 0.9, 0, status,  # noqa: E731
                                                             {"test_acc": acc, "epochs_done": done}, 10)
    rows = [mk("search/x", 0.99, "KILLED", 3), mk("search/y", 0.95), mk("search/z", 0.95)]
    for order in (rows, rows[::-1]):
        assert report.best_per_cell(order, "test_acc", "max")[("dsr", 0.9)].key == "search/y"
    assert report.best_per_cell(rows, "test_acc", "min")[("dsr", 0.9)].key == "search/y"


def test_report_falls_back_to_the_run_folders_when_mlflow_has_none(store, tmp_path):
    """A sweep folder whose store answers but holds none of its runs (it ran offline,
    or the store was replaced): the numbers come from the run folders."""
    import json

    uri, _, _ = store
    sweep = tmp_path / "sweep"
    for key, acc in (("search/a", 0.91), ("search/b", 0.94)):
        run = sweep / "runs" / key
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("train: {epochs: 3}\n")
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 2, "test_acc": acc,
                                                       "nonzero_params": 700, "mask_hash": "abc"}) + "\n")
        (run / "tracking.json").write_text(json.dumps({"key": key, "status": "FINISHED", "synced": False, "tags": {
            "method": "dsr", "role": "search", "seed": 0, "sparsity": "0.9"}}))
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "offline-1", "space": {}, "tracker": {
        "target": {"uri": uri, "artifact_root": None}}}))
    rep, files, source = report.build(str(sweep))
    assert "run folders" in source and "holds no run of offline-1" in source
    dsr = _lines(rep, 0.9)["dsr"]
    assert dsr.acc == [0.94] and dsr.epochs == 3 and rep.searched == 2
    assert files["md"] == sweep / "report.md" and files["md"].exists()
