"""``dsr-tune report`` and the results module: the right means, spreads, intervals
and paired differences from a store the test fills, the selection runs kept
out of the means, the Pareto front, the files logged to the parent, and a
sweep that does not exist refused without side effects."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest

from dsr_tune import cli
from dsr_tune.sweep.report import gather, render, stats
from dsr_tune.sweep.report.stats import RunRow
from dsr_tune.sweep.select import best_per_cell

SWEEP = "toy-20260101-000000"


def _run(client, exp, parent, key, role, method, sparsity, seed, acc, nonzero, epochs, val=None, **tags):
    tags = {"sweep": SWEEP, "role": role, "method": method, "seed": str(seed), "dsr_tune.run": f"{SWEEP}/{key}",
            "mlflow.parentRunId": parent, "sparsity": "0" if sparsity is None else f"{sparsity:g}", **tags}
    run = client.create_run(exp, run_name=key, tags=tags)
    rid = run.info.run_id
    client.log_param(rid, "train.epochs", str(epochs))
    for step, a in enumerate([acc - 0.1, acc], start=epochs - 1):  # the last value is the final one
        client.log_metric(rid, "epoch/test_acc", a, step=step)
        client.log_metric(rid, "epoch", step, step=step)
    if val is not None:
        client.log_metric(rid, "epoch/val_acc", val, step=epochs)
    client.log_metric(rid, "epoch/nonzero_params", nonzero, step=epochs)
    client.set_terminated(rid, "FINISHED")


def _toy_sweep(root):
    """A sqlite store under ``root`` with experiment "toy" and the parent run of sweep SWEEP
    (selected on val_acc): (uri, client, experiment id, parent run id)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("toy", artifact_location=(root / "artifacts").as_uri())
    parent = c.create_run(exp, run_name=SWEEP, tags={"sweep": SWEEP, "role": "parent",
                                                     "dsr_tune.run": f"{SWEEP}/parent"}).info.run_id
    c.log_param(parent, "search.metric", "val_acc")
    return uri, c, exp, parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    uri, c, exp, parent = _toy_sweep(root)
    c.log_param(parent, "search.pareto", "True")
    r = lambda *a, **k: _run(c, exp, parent, *a, **k)  # noqa: E731
    # sparsity 0.9: trial b is selected (val 0.93), then re-trained on the fresh seeds 1 and 2
    r("search/dsr/a", "search", "dsr", 0.9, 0, 0.90, 5000, 10, val=0.90)
    r("search/dsr/b", "search", "dsr", 0.9, 0, 0.99, 5000, 10, val=0.93)
    for seed, acc in ((1, 0.91), (2, 0.93)):
        r(f"paired/dsr/s0.9/seed{seed}", "selected", "dsr", 0.9, seed, acc, 5000, 10, selected_from="search/dsr/b")
    for seed, acc in ((1, 0.85), (2, 0.89)):
        r(f"paired/static_2x/s0.9/seed{seed}", "baseline", "static_2x", 0.9, seed, acc, 5000, 20,
          selected_from="search/dsr/b", group="s0.9")
        r(f"paired/thin_dense_1x/s0.9/seed{seed}", "baseline", "thin_dense_1x", 0.9, seed, acc + 0.04, 4990, 10,
          selected_from="search/dsr/b")
    # sparsity 0.8: one trial, one report seed
    r("search/dsr/c", "search", "dsr", 0.8, 0, 0.95, 10000, 10, val=0.96)
    r("paired/dsr/s0.8/seed1", "selected", "dsr", 0.8, 1, 0.95, 10000, 10, selected_from="search/dsr/c")
    r("paired/static_2x/s0.8/seed1", "baseline", "static_2x", 0.8, 1, 0.94, 10000, 20, selected_from="search/dsr/c")
    for seed, acc in ((1, 0.97), (2, 0.96)):
        r(f"paired/dense/seed{seed}", "dense", "dense", None, seed, acc, 50000, 10)
    return uri, c, parent


def _lines(rep, s):
    return {ln.method: ln for ln in rep.sections[s]}


def test_report_means_intervals_and_paired_differences_from_the_store(store, tmp_path):
    uri, client, parent = store
    rep, files, source = gather.build(SWEEP, uri, out_dir=tmp_path)
    assert source == uri and rep.searched == 3 and rep.seeds == [1, 2] and rep.metric == "val_acc"
    s9 = _lines(rep, 0.9)
    assert list(s9) == ["dsr", "thin_dense_1x", "static_2x", "dense"]
    assert s9["dsr"].acc == [0.91, 0.93] and s9["dsr"].n == 2  # the selection run (0.99) is not in the mean
    assert [r.key for r in rep.selection[0.9]] == ["search/dsr/b"]
    # by hand: mean 0.92, std sqrt(2) * 0.01, t(0.975, 1) = 12.706: half width 12.706 * 0.01
    assert s9["dsr"].mean == pytest.approx(0.92) and s9["dsr"].std == pytest.approx(statistics.stdev([0.91, 0.93]))
    lo, hi = stats.t_interval(s9["dsr"].acc)
    assert hi - 0.92 == pytest.approx(12.7062 * 0.01, rel=1e-4) and lo == pytest.approx(0.92 - (hi - 0.92))
    assert s9["dsr"].ci is None and hi > 1  # n = 2: no interval is reported (this one would pass 100%)
    # paired: static_2x - dsr = (-0.06, -0.04) over seeds 1, 2: mean -0.05, std 0.01*sqrt(2), same t
    d = s9["static_2x"].diff
    dlo, dhi = stats.t_interval([-0.06, -0.04])
    assert d.n == 2 and d.mean == pytest.approx(-0.05) and dhi - d.mean == pytest.approx(12.7062 * 0.01, rel=1e-4)
    assert d.ci is None and d.p is None and not d.resolved  # n < 3: no interval, nothing resolved
    assert s9["static_2x"].epochs == 20 and s9["thin_dense_1x"].nonzero == 4990
    assert s9["dense"].mean == pytest.approx(0.965) and s9["dense"].nonzero == 50000
    s8 = _lines(rep, 0.8)
    assert s8["dsr"].acc == [0.95] and s8["dsr"].ci is None and s8["static_2x"].diff.ci is None
    # the Pareto front of the search trials on val_acc: c (more params, better) and b (fewer); a is dominated
    assert [r.key for r in rep.pareto] == ["search/dsr/b", "search/dsr/c"]
    md = files["md"].read_text()
    assert "| method | epochs | tuned | n | mean ± std | 95% CI |" in md and "|---|" in md
    assert "| static_2x | 20 | no | 2 | 87.00 ± 2.83 | n < 3 | -5.00 (n < 3) |" in md and "selected on val_acc" in md
    assert "of the validation split" in md and "| dsr | 10 | yes | 2 |" in md  # the selection was searched
    assert "selection run, not in the means: search/dsr/b" in md
    assert files["png"].stat().st_size > 10_000 and files["png"].read_bytes()[:4] == b"\x89PNG"
    assert files["csv"].read_text().splitlines()[0].startswith("sparsity,method,epochs,tuned,n,mean,std,ci_low")
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/report-{SWEEP}.md", f"report/report-{SWEEP}.png", f"report/report-{SWEEP}.csv"}
    metrics = client.get_run(parent).data.metrics
    assert metrics["s0.9/static_2x/n"] == 2 and metrics["s0.9/static_2x/diff_to_dsr"] == pytest.approx(-0.05)
    # the paired difference's n, and whether it is resolved; no interval at n = 2 (by hand: [-0.177, 0.077])
    assert dlo < -0.17 and dhi > 0.07 and "s0.9/static_2x/diff_ci_low" not in metrics
    assert "s0.9/static_2x/ci_low" not in metrics and "s0.9/static_2x/diff_p" not in metrics
    assert metrics["s0.9/static_2x/diff_n"] == 2 and metrics["s0.9/static_2x/resolved"] == 0
    assert metrics["s0.8/static_2x/diff_n"] == 1 and "s0.8/static_2x/diff_ci_low" not in metrics  # n = 1: no interval
    assert "s0.9/dsr/diff_n" not in metrics  # the reference has no difference to itself
    # every reported run links to MLflow run ids: the search trial it was selected as, and (baselines) the
    # DSR run of its sparsity and seed; the group tag stays
    by_key = {r.data.tags["dsr_tune.run"].split("/", 1)[1]: r for r in client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.sweep = '{SWEEP}'")}
    rid = lambda key: by_key[key].info.run_id  # noqa: E731
    for seed in (1, 2):
        dsr, static = by_key[f"paired/dsr/s0.9/seed{seed}"].data.tags, by_key[f"paired/static_2x/s0.9/seed{seed}"].data.tags
        assert dsr["selected_from_run_id"] == rid("search/dsr/b") and "dsr_run_id" not in dsr
        assert static["dsr_run_id"] == rid(f"paired/dsr/s0.9/seed{seed}") and static["group"] == "s0.9"
        assert static["selected_from_run_id"] == rid("search/dsr/b")
    assert by_key["paired/static_2x/s0.8/seed1"].data.tags["dsr_run_id"] == rid("paired/dsr/s0.8/seed1")
    assert "dsr_run_id" not in by_key["paired/dense/seed1"].data.tags
    assert gather.link_runs(client, list(by_key.values())) == 0  # idempotent: a second report sets nothing


def test_t_interval_and_paired_difference_by_hand():
    values = [0.80, 0.84, 0.83, 0.81, 0.82]
    s = statistics.stdev(values)
    lo, hi = stats.t_interval(values)
    assert (hi - lo) / 2 == pytest.approx(2.7764451 * s / math.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert stats.t_interval([0.5]) is None
    d = stats.paired({1: 0.9, 2: 0.8, 3: 0.7}, {1: 0.8, 2: 0.7, 3: 0.6, 4: 0.0})  # seed 4 has no partner
    # three equal differences: a zero-width t interval, which says nothing; the sign test needs n >= 6
    assert d.n == 3 and d.mean == pytest.approx(0.1) and d.ci == pytest.approx((0.1, 0.1)) and d.degenerate
    assert not d.resolved and "+10.00 [+10.00, +10.00] ~0 (no spread)" in render._diff(
        stats.Line("static_2x", 0.9, {1: 0.9, 2: 0.8, 3: 0.7}, 100, 20, diff=d))
    six = stats.paired({k: 0.5 for k in range(6)}, {k: 0.4 for k in range(6)})
    assert six.degenerate and six.resolved  # 2 * 0.5**6 = 0.031 < 0.05
    spread = stats.paired({1: 0.9, 2: 0.85, 3: 0.7}, {1: 0.8, 2: 0.7, 3: 0.6})
    assert not spread.degenerate and spread.resolved  # [0.03, 0.20] excludes 0


def test_a_test_metric_selection_is_flagged_in_the_header():
    rows = [RunRow("search/dsr/a", "search", "dsr", 0.9, 0, "FINISHED", {"test_acc": 0.95, "val_acc": 0.9}, 10),
            RunRow("paired/dsr/s0.9/seed1", "selected", "dsr", 0.9, 1, "FINISHED", {"test_acc": 0.9}, 10)]
    t = stats.summarize("x", rows, metric="test_acc")
    assert any("test metric" in w for w in t.warnings) and "WARNING" in render.text(t)
    head = render.header(t)[0]  # worded from the metric's own split
    assert "selected on test_acc (max) of the test split" in head and "validation" not in head, head
    assert not stats.summarize("x", rows, metric="val_acc").warnings
    assert "of the validation split" in render.header(stats.summarize("x", rows, metric="val_acc"))[0]


def test_a_row_that_starts_from_another_run_names_it_and_its_epochs():
    def row(key, role, method, sparsity, epochs):
        return RunRow(key, role, method, sparsity, 1, "FINISHED", {"test_acc": 0.9}, epochs)

    rows = [row("paired/dsr/s0.9/seed1", "selected", "dsr", 0.9, 10),
            row("paired/gmp/s0.9/seed1", "baseline", "gmp", 0.9, 10),
            row("paired/final_init/s0.9/seed1", "baseline", "final_init", 0.9, 10),
            row("paired/static_2x/s0.9/seed1", "baseline", "static_2x", 0.9, 20),
            row("paired/dense/seed1", "dense", "dense", None, 12)]
    notes = {ln.method: ln.note for ln in stats.summarize("x", rows).sections[0.9]}
    assert notes["gmp"] == "starts from the trained dense run of its seed, which trained 12 epochs first"
    assert notes["final_init"] == "starts from the trained dsr run of its seed, which trained 10 epochs first"
    assert notes["static_2x"] == notes["dsr"] == notes["dense"] == ""
    # a compute-matched row trains, per seed, the epochs that seed's DSR run's FLOPs buy
    rows += [RunRow(f"paired/static_cm/s0.9/seed{k}", "baseline", "static_cm", 0.9, k, "FINISHED",
                    {"test_acc": 0.9}, e) for k, e in ((1, 11), (2, 10), (3, 11))]
    cm = next(ln for ln in stats.summarize("x", rows).sections[0.9] if ln.method == "static_cm")
    assert cm.epochs == 11 and cm.note == "epochs 10-11 by seed (the column: the most)"


def test_report_cli_by_experiment_name(store, tmp_path, capsys, monkeypatch):
    uri, _, _ = store
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "toy", "--tracking-uri", uri]) == 0  # the experiment's newest sweep
    out = capsys.readouterr().out
    assert f"{SWEEP}: 3 search trials" in out and "thin_dense_1x" in out and "Pareto front" in out
    assert (tmp_path / f"report-{SWEEP}.png").exists()


def test_report_of_a_sweep_that_does_not_exist_is_refused_without_side_effects(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dsr_tune.cli", "report", "no_such_sweep"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no_such_sweep" in proc.stderr
    assert not any(tmp_path.iterdir())  # no ./mlruns made as a side effect


def test_best_trial_prefers_finished_runs_and_is_order_free():
    mk = lambda key, acc, status="FINISHED", done=10: RunRow(key, "search", "dsr", 0.9, 0, status,  # noqa: E731
                                                             {"val_acc": acc, "epochs_done": done}, 10)
    rows = [mk("search/x", 0.99, "KILLED", 3), mk("search/y", 0.95), mk("search/z", 0.95)]
    for order in (rows, rows[::-1]):
        assert best_per_cell(order, "val_acc", "max")[("dsr", 0.9)].key == "search/y"
    assert best_per_cell(rows, "val_acc", "min")[("dsr", 0.9)].key == "search/y"


def test_report_falls_back_to_the_run_folders_when_mlflow_has_none(store, tmp_path):
    """A sweep folder whose store answers but holds none of its runs (it ran offline,
    or the store was replaced): the numbers come from the run folders."""
    uri, _, _ = store
    sweep = tmp_path / "sweep"
    runs = (("search/dsr/a", "search", 0, 0.91), ("search/dsr/b", "search", 0, 0.94),
            ("paired/dsr/s0.9/seed1", "selected", 1, 0.92))
    for key, role, seed, acc in runs:
        run = sweep / "runs" / key
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("train: {epochs: 3}\n")
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 2, "test_acc": acc, "val_acc": acc,
                                                       "nonzero_params": 700, "mask_hash": "abc"}) + "\n")
        (run / "tracking.json").write_text(json.dumps({"key": key, "status": "FINISHED", "synced": False, "tags": {
            "method": "dsr", "role": role, "seed": seed, "sparsity": "0.9",
            "selected_from": "search/dsr/b" if role == "selected" else None}}))
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "offline-1", "space": {}, "tracker": {
        "target": {"uri": uri, "artifact_root": None}}}))
    rep, files, source = gather.build(str(sweep))
    assert "run folders" in source and "holds no run of offline-1" in source
    dsr = _lines(rep, 0.9)["dsr"]
    assert dsr.acc == [0.92] and dsr.epochs == 3 and rep.searched == 2
    assert files["md"] == sweep / "report.md" and files["md"].exists()


def test_the_figure_gives_every_method_its_own_look_and_draws_the_paired_differences(tmp_path):
    from dsr_tune.methods import names as registered  # every row name a report can hold
    names = ["dsr", "dense", "static_1x", "static_2x", "thin_dense_1x", "thin_dense_2x", "gmp", "final_reinit",
             "final_init", "random_control", "dsr_stop:2", "dsr_stop:5"] + [m for m in registered()
                                                                           if m not in ("dsr", "dense")]
    look = render.styles(names)
    assert len({(tuple(v["color"]) if not isinstance(v["color"], str) else v["color"], v["marker"])
                for v in look.values()}) == len(look)  # no two rows drawn alike
    assert look["dsr"]["color"] == "k" and look["dsr"]["lw"] > max(v["lw"] for k, v in look.items() if k != "dsr")

    rows = []
    for seed, (d, s, g) in enumerate([(0.90, 0.88, 0.93), (0.91, 0.88, 0.95), (0.92, 0.91, 0.955)], start=1):
        for method, acc in (("dsr", d), ("static_1x", s), ("gmp", g)):
            rows.append(RunRow(f"paired/{method}/s0.9/seed{seed}", "selected" if method == "dsr" else "baseline",
                               method, 0.9, seed, "FINISHED", {"test_acc": acc, "nonzero_params": 700.0}, 10))
    t = stats.summarize("x", rows)
    out = render.plot(t, tmp_path / "r.png")
    import matplotlib.image
    h, w = matplotlib.image.imread(out).shape[:2]
    assert w > 1.8 * h  # the accuracy panel and one panel of paired differences beside it
    diffs = {ln.method: ln.diff for ln in t.sections[0.9] if ln.diff}
    assert set(diffs) == {"static_1x", "gmp"} and diffs["gmp"].resolved


def test_ties_are_broken_by_validation_loss_then_the_trial_number_and_said():
    """Equal search.metric: the lower validation loss decides, then the lower Optuna trial
    number (never Tune's random trial id); the report's header names the tie and what broke it."""
    from dsr_tune.sweep.select import tie_breaks

    def trial(key, number, acc, loss):
        return RunRow(key, "search", "dsr", 0.9, 0, "FINISHED", {"val_acc": acc, "val_loss": loss,
                                                                 "epochs_done": 10, "test_acc": 0.9}, 10, trial=number)

    by_loss = [trial("search/dsr/s0.9-t0", 0, 0.9931, 0.05), trial("search/dsr/s0.9-t1", 1, 0.9931, 0.04),
               trial("search/dsr/s0.9-t2", 2, 0.98, 0.01)]
    for order in (by_loss, by_loss[::-1]):
        assert best_per_cell(order, "val_acc", "max")[("dsr", 0.9)].key == "search/dsr/s0.9-t1"
    assert tie_breaks(by_loss, "val_acc", "max") == {
        ("dsr", 0.9): "s0.9 dsr: 2 trials tied at val_acc 0.9931; val_loss chose search/dsr/s0.9-t1"}
    # the keys sort the other way round: the trial number decides, not the key
    by_number = [trial("search/dsr/zz", 3, 1.0, 0.05), trial("search/dsr/aa", 7, 1.0, 0.05)]
    assert best_per_cell(by_number, "val_acc", "max")[("dsr", 0.9)].key == "search/dsr/zz"
    assert "the Optuna trial number chose search/dsr/zz" in tie_breaks(by_number, "val_acc", "max")[("dsr", 0.9)]
    # selecting on the loss: accuracy breaks its ties
    on_loss = [trial("search/dsr/a", 0, 0.97, 0.05), trial("search/dsr/b", 1, 0.99, 0.05)]
    assert best_per_cell(on_loss, "val_loss", "min")[("dsr", 0.9)].key == "search/dsr/b"
    assert "val_acc chose search/dsr/b" in tie_breaks(on_loss, "val_loss", "min")[("dsr", 0.9)]
    assert tie_breaks(by_loss[1:], "val_acc", "max") == {}  # no tie, nothing said
    report = [*by_loss, RunRow("paired/dsr/s0.9/seed1", "selected", "dsr", 0.9, 1, "FINISHED", {"test_acc": 0.9}, 10,
                               selected_from="search/dsr/s0.9-t1")]
    table = stats.summarize("x", report)
    table.ties = list(tie_breaks(report, "val_acc", "max").values())
    assert "Ties in the selection" in render.text(table) and "val_loss chose search/dsr/s0.9-t1" in render.markdown(table)
    assert "Ties in the selection" not in render.text(stats.summarize("x", report[1:]))


def _parent_state(client, run_id: str) -> dict:
    run = client.get_run(run_id)
    history = {k: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, k))
               for k in run.data.metrics}

    def files(path=None):
        return sorted(x for a in client.list_artifacts(run_id, path) for x in (files(a.path) if a.is_dir else [a.path]))

    return {"metrics": history, "params": run.data.params, "tags": run.data.tags, "artifacts": files(),
            "status": run.info.status, "end": run.info.end_time}


def test_reporting_again_leaves_the_parent_as_it_was(tmp_path, monkeypatch):
    """`dsr-tune report`, run three times, leaves the parent run's metric histories, params,
    tags and artifacts as the first left them; when more runs have ended, only the numbers
    that changed get a point, at the next step."""
    uri, c, exp, parent = _toy_sweep(tmp_path)
    r = lambda *a, **k: _run(c, exp, parent, *a, **k)  # noqa: E731
    r("search/dsr/a", "search", "dsr", 0.9, 0, 0.95, 5000, 10, val=0.93)
    r("search/dsr/b", "search", "dsr", 0.9, 0, 0.96, 5000, 10, val=0.93)  # a tie on val_acc: the key decides
    r("paired/dsr/s0.9/seed1", "selected", "dsr", 0.9, 1, 0.91, 5000, 10, selected_from="search/dsr/a")
    r("paired/static_2x/s0.9/seed1", "baseline", "static_2x", 0.9, 1, 0.89, 5000, 20, selected_from="search/dsr/a")
    gather.build(SWEEP, uri, out_dir=tmp_path)
    first = _parent_state(c, parent)
    assert first["metrics"]["s0.9/dsr/mean"] == [(0, 0.91, first["metrics"]["s0.9/dsr/mean"][0][2])]
    assert first["tags"]["report_step"] == "0" and "the job key chose search/dsr/a" in first["tags"][
        "selection_tie_broken"]
    assert {f"report/report-{SWEEP}.md", f"report/report-{SWEEP}.csv"} <= set(first["artifacts"])
    for _ in range(2):
        gather.build(SWEEP, uri, out_dir=tmp_path)
        assert _parent_state(c, parent) == first
    monkeypatch.chdir(tmp_path)  # the command writes its files here
    assert cli.main(["report", SWEEP, "--tracking-uri", uri]) == 0 and _parent_state(c, parent) == first
    r("paired/dsr/s0.9/seed2", "selected", "dsr", 0.9, 2, 0.95, 5000, 10, selected_from="search/dsr/a")  # one more
    gather.build(SWEEP, uri, out_dir=tmp_path)
    later = _parent_state(c, parent)
    assert [(s, v) for s, v, _ in later["metrics"]["s0.9/dsr/mean"]] == [(0, 0.91), (1, pytest.approx(0.93))]
    assert later["metrics"]["s0.9/static_2x/mean"] == first["metrics"]["s0.9/static_2x/mean"]  # unchanged
    assert later["tags"]["report_step"] == "1" and later["artifacts"] == first["artifacts"]


def test_a_difference_that_rounds_to_zero_prints_without_a_minus_sign():
    """Two rows with equal means differ by a float's last bit: "+0.00", never "-0.00"."""
    from dsr_tune.sweep.report.render import _points

    assert [_points(x) for x in (-1e-17, -0.000049, 0.0028, -0.0356)] == ["+0.00", "+0.00", "+0.28", "-3.56"]
