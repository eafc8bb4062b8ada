"""Dense gets the tuning budget of the other rows (issue 21, item 7): with
``tune_baselines`` and ``dense: true`` one search of ``search.samples`` trials,
``search-dense``, over the keys dense reads (never a sparsity key), whose
selection the dense run of every sparsity trains on the fresh seeds; GMP keeps
deriving from DSR's selection. Fast checks of the plan, the study, the
selection, the price and the report; one tiny sweep on a local Ray (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dsr_tune import cli, config as C
from dsr_tune.sweep import plan, price, spec as S
from dsr_tune.sweep.jobs import SweepContext, write_paired
from dsr_tune.sweep.terms import Phase
from dsr_tune.tracking import SweepTracker, store

from conftest import DEMO
from test_sweep import TINY, _children, _env, _mlflow, dsr_tune_cmd, run_in_group

TUNED = ["tune_baselines=true"]


def _ctx(tmp_path: Path, sp: S.Space) -> SweepContext:
    return SweepContext(str(tmp_path), sp.base.to_dict(), sp.search.trial_seed,
                        SweepTracker(store.resolve(f"sqlite:///{tmp_path / 'none.db'}"), "e", "s-1"))


def test_dense_gets_one_search_only_when_tuned_and_a_row():
    names = lambda over: [p.name for p in plan.search_phases(S.load(DEMO, over))]  # noqa: E731
    assert names([]) == ["search-dsr-s0.8", "search-dsr-s0.9"]  # tune_baselines: false, as before
    assert names(TUNED) == [f"search-{m}-s{s}" for m in ("dsr", "static", "thin_dense") for s in (0.8, 0.9)] + [
        "search-dense"]  # one: dense has no sparsity
    assert "search-dense" not in names([*TUNED, "dense=false"])  # no dense row, no dense search
    assert "search-dense" not in names([*TUNED, "dense=false", "baselines=[gmp]"])  # gmp's dense parent: untuned
    # a space that searches no key dense reads gives dense nothing to tune
    assert "search-dense" not in names([*TUNED, "space.optim.lr={loguniform: [0.02, 0.1], methods: [dsr]}"])
    phase = Phase.parse("search-dense")
    assert phase == Phase.search("dense") and phase.sparsity is None and phase.name == "search-dense"
    # the keys dense reads: every method's, never a sparsity key (even one whose methods name dense)
    sp = S.load(DEMO, [*TUNED, "space.optim.weight_decay={loguniform: [1e-5, 1e-3]}",
                       "space.sparsity.distribution={choice: [uniform, erk], methods: [dsr, dense]}"])
    assert [p.key for p in S.params_for(sp, "dense")] == ["optim.lr", "optim.weight_decay"]


def test_the_dense_study_draws_no_sparsity_key_and_resumes_by_its_name(tmp_path):
    import optuna

    from dsr_tune.sweep import tune
    from dsr_tune.sweep.study import StudySearcher

    sp = S.load(DEMO, [*TUNED, "search.samples=3"])
    ctx = _ctx(tmp_path, sp)
    tc, _ = tune.tune_config(Phase.parse("search-dense"), sp, ctx, 2, None)
    assert tc.num_samples == 3 and tc.search_alg.study_name == "s-1-dense"  # the budget of every other cell
    first = StudySearcher(sp, Phase.search("dense"), tmp_path, "s-1")
    c0, c1 = first.suggest("x"), first.suggest("y")
    for c, n in ((c0, 0), (c1, 1)):
        assert c["method"] == "dense" and c["job"] == f"search/dense/t{n}" and c["trial"] == n
        drawn = {k for k in c if "." in k}
        assert drawn == {"optim.lr"} and not any(k.startswith("sparsity.") for k in c)
        job = ctx.search_job(c)
        assert job.sparsity is None and job.config["sparsity"]["method"] == "dense" and job.seed == 0
        assert job.config["optim"]["lr"] == c["optim.lr"] and job.identity()["tags"]["sparsity"] == "0"
    first.on_trial_complete("x", {"val_loss": 0.3, "epochs_done": 10})
    resumed = StudySearcher(sp, Phase.search("dense"), tmp_path, "s-1")  # --resume: a new process
    assert resumed.plan() == (1, 1, 1) and resumed.suggest("z") == c1
    study = optuna.load_study(study_name="s-1-dense", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]


def _search_run(ctx: SweepContext, method: str, values: dict, number: int, val_acc: float) -> str:
    """A finished search trial's run folder as a trial leaves it (its job's config and tags)."""
    from dsr_tune.sweep.terms import search_key, trial_id

    key = search_key(method, trial_id(values.get("sparsity.sparsity"), number))
    job = ctx.search_job({"method": method, **values, "job": key, "trial": number})
    run = ctx.run_dir(key)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(C.dump(C.from_dict(job.config)))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 9, "epochs_done": 10, "val_acc": val_acc,
                                                   "val_loss": 1 - val_acc, "test_acc": 0.5, "nonzero_params": 100})
                                       + "\n")
    (run / "tracking.json").write_text(json.dumps({"key": key, "run_name": job.run_name, "status": "FINISHED",
                                                   "tags": job.identity()["tags"]}))
    return key


def _searched(tmp_path: Path, over: list[str]):
    """A sweep folder after its search: DSR trials at 0.8 and 0.9, and (tuned) two dense trials."""
    from dsr_tune.sweep.report.gather import load_local

    sp = S.load(DEMO, ["seeds=[1, 2]", "baselines=[static, gmp]", "search.metric=val_acc", "search.mode=max", *over])
    tmp_path.mkdir(exist_ok=True)
    ctx = _ctx(tmp_path, sp)
    for n, (s, lr, acc) in enumerate(((0.8, 0.05, 0.9), (0.9, 0.04, 0.8))):
        _search_run(ctx, "dsr", {"sparsity.sparsity": s, "optim.lr": lr}, n, acc)
    if sp.tune_baselines:
        _search_run(ctx, "dense", {"optim.lr": 0.03}, 0, 0.91)
        _search_run(ctx, "dense", {"optim.lr": 0.07}, 1, 0.97)  # the best dense trial
    return sp, ctx, load_local(tmp_path)


def test_the_dense_rows_train_the_selected_dense_config(tmp_path):
    from dsr_tune.sweep.select import paired_jobs

    sp, ctx, rows = _searched(tmp_path, TUNED)
    assert {r.key: r.sparsity for r in rows if r.method == "dense"} == {"search/dense/t0": None,
                                                                        "search/dense/t1": None}
    jobs = {j.key: j for j in paired_jobs(sp, ctx, rows)}
    dense_keys = sorted(k for k in jobs if k.startswith("paired/dense/"))
    assert dense_keys == ["paired/dense/seed1", "paired/dense/seed2"]  # once per seed, for every sparsity
    for seed in (1, 2):
        dense = jobs[f"paired/dense/seed{seed}"]
        assert dense.config["optim"]["lr"] == 0.07 and dense.config["train"]["seed"] == seed  # the best trial's LR
        assert dense.tuned and dense.selected_from == "search/dense/t1" and dense.role == "dense"
        tags = dense.identity()["tags"]
        assert tags["tuned"] == "true" and tags["selected_from"] == "search/dense/t1" and tags["sparsity"] == "0"
        assert "tuned hyperparameters" in dense.description()
        # gmp prunes that dense run, at DSR's selected LR x gamma (not dense's): it derives from DSR's selection
        gmp = jobs[f"paired/gmp/s0.9/seed{seed}"]
        assert gmp.config["sparsity"]["gmp"]["dense_from"] == str(ctx.run_dir(f"paired/dense/seed{seed}"))
        assert gmp.config["optim"]["lr"] == pytest.approx(0.04 * sp.base.optim.gamma) and not gmp.tuned
        assert gmp.selected_from == "search/dsr/s0.9-t1"
    assert jobs["paired/dsr/s0.8/seed1"].config["optim"]["lr"] == 0.05  # DSR's own selection, untouched

    # tune_baselines: false: no dense search, dense keeps the base config, untuned, as before
    sp, ctx, rows = _searched(tmp_path / "plain", [])
    dense = {j.key: j for j in paired_jobs(sp, ctx, rows)}["paired/dense/seed1"]
    assert dense.config["optim"]["lr"] == sp.base.optim.lr and not dense.tuned and dense.selected_from is None
    assert dense.identity()["tags"]["tuned"] == "false"


def test_the_report_says_dense_was_tuned_and_lists_its_selection_at_every_sparsity(tmp_path):
    from dsr_tune.sweep.report import render, stats
    from dsr_tune.sweep.report.stats import RunRow
    from dsr_tune.sweep.select import paired_jobs

    sp, ctx, rows = _searched(tmp_path, TUNED)
    report = [RunRow(j.key, j.role, j.method, j.sparsity, j.seed, "FINISHED", {"test_acc": 0.9, "nonzero_params": 9},
                     10, tuned=j.tuned, selected_from=j.selected_from) for j in paired_jobs(sp, ctx, rows)]
    table = stats.summarize("t", rows + report, "val_acc", "max")
    md = render.markdown(table)
    assert md.count("| dense | 10 | yes |") == 2  # its line in both sections
    for s in (0.8, 0.9):
        assert [r.key for r in table.selection[s] if r.method == "dense"] == ["search/dense/t1"]
    assert md.count("selection run, not in the means: search/dense/t1") == 2


def test_the_plan_prices_the_dense_search(capsys):
    p = price.price(S.load(DEMO, TUNED))
    dense = [r for r in p.items if r.phase == "search-dense"]
    assert len(dense) == 1 and (dense[0].label, dense[0].sparsity, dense[0].runs, dense[0].epochs) == (
        "dense", None, 2, 10)
    assert dense[0].flops == p.dense_run  # a dense run at the base epochs: 1x, each
    assert p.phases[-2:] == ["search-dense", "paired-0"]  # after the other searches, before the paired runs
    assert "search-dense" not in price.price(S.load(DEMO)).phases
    assert cli.main(["sweep", str(DEMO), "tune_baselines=true", "--plan", "--throughput", "1000"]) == 0
    phase, row = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("search-dense ")]
    assert phase[:3] == ["search-dense", "2", "20"]  # the phase table: its runs and epochs
    assert row[:5] == ["search-dense", "dense", "-", "2", "10"] and row[-1] == "1.00x"  # the row table


def test_a_sweep_selected_before_dense_was_tuned_runs_no_dense_search(tmp_path):
    from dsr_tune.sweep.folder import searches_left

    sp = S.load(DEMO, TUNED)
    done = [p.name for p in plan.search_phases(sp) if p.name != "search-dense"]
    assert [p.name for p in searches_left(sp, {"done": done}, tmp_path)] == ["search-dense"]
    write_paired(tmp_path, [])  # the selection is made: a search the plan gained since would change nothing
    assert searches_left(sp, {"done": done}, tmp_path) == []


@pytest.mark.slow
def test_a_sweep_tunes_dense_and_reports_it_tuned(tmp_path):
    """2 DSR trials and 2 dense trials (2 epochs), then DSR and dense on one fresh seed."""
    import optuna

    sweep = tmp_path / "sweep"
    args = [*TINY, "search.samples=2", "seeds=[1]", "baselines=[]", "tune_baselines=true",
            "space.sparsity.sparsity=0.9", "data.batch_size=128", "model.width=0.25", "--output", str(sweep)]
    proc = run_in_group(dsr_tune_cmd(*args), cwd=tmp_path, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[search-dense 2/2 done]" in proc.stderr, proc.stderr
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["done"] == ["search-dsr-s0.9", "search-dense", "paired-0"]
    study = optuna.load_study(study_name=f"{meta['sweep_id']}-dense", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(set(t.params) == {"optim.lr"} for t in study.trials)  # no sparsity key drawn
    paired = {j["key"]: j for j in json.loads((sweep / "paired.json").read_text())}
    dense = paired["paired/dense/seed1"]
    chosen = next(t for t in study.trials if t.user_attrs["job_key"] == dense["selected_from"])
    assert dense["tuned"] and dense["config"]["optim"]["lr"] == chosen.params["optim.lr"]
    with open(sweep / "report.csv") as f:
        tuned = {r["method"]: r["tuned"] for r in csv.DictReader(f)}
    assert tuned == {"dsr": "True", "dense": "True"}
    assert "| dense | 2 | yes |" in (sweep / "report.md").read_text()
    _, children = _children(_mlflow(tmp_path), meta["sweep_id"])
    run = next(r for r in children if r.data.tags["role"] == "dense")
    assert run.data.tags["tuned"] == "true" and run.data.tags["selected_from"] == dense["selected_from"]
    assert run.data.tags["selected_from_run_id"] == chosen.user_attrs["mlflow_run_id"]
