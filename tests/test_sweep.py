"""Sweeps: space files refused before Ray starts, the define-by-run space, the
pairing of baselines, and one real sweep on a local Ray (digits, tiny
budgets) shared by the slow tests: interrupted with Ctrl-C after its first
trial and resumed (every trial exactly once), then end to end (DSR trials,
their baselines at 2x epochs, dense, every run in MLflow, the report).

The sweep runs the CLI in a subprocess (its own Ray, its own MLflow store
under the test's folder); about 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsr_tune import cli, config as C
from dsr_tune.sweep import plan, rows, spec as S
from dsr_tune.sweep.jobs import SweepContext
from dsr_tune.sweep.terms import Phase
from dsr_tune.sweep.study import OptunaSpace
from dsr_tune.tracking import SweepTracker, store

from conftest import DEMO, ROOT
TINY = ["train.epochs=2", "optim.milestones=[1]", "sparsity.stop_epoch=2", "sparsity.period_schedule=[[0, 15]]"]


# ------------------------------------------------------------------ fast checks, no Ray


def test_progress_table_shows_searched_values_and_latest_metrics():
    from dsr_tune.sweep.progress import table as progress_table

    sp = S.load(DEMO)
    search = progress_table(Phase.parse("search-dsr"), sp)
    assert search._parameter_columns == {"sparsity.sparsity": "sparsity", "sparsity.period_scale": "period_scale",
                                         "sparsity.dsr.delta": "delta", "sparsity.dsr.target_pruned": "target_pruned",
                                         "optim.lr": "lr"}
    assert search._metric_columns == {"epochs_done": "epochs", "val_loss": "val_loss", "test_acc": "test_acc",
                                      "nonzero_params": "non-zero"}  # the demo selects on val_loss
    assert progress_table(Phase.parse("paired-0"), sp)._parameter_columns == {"job": "run"}
    assert not progress_table(Phase.parse("search-dsr"), S.load(DEMO, ["search.pareto=true"]))._sort_by_metric


def test_a_trial_trains_on_its_reserved_gpu_or_on_the_cpu(monkeypatch):
    """In-trial jobs see the GPU Ray assigned to their trial and no other; none when
    the trial reserved none (train.device=auto then means the CPU on a GPU node)."""
    import ray

    from dsr_tune.sweep import trial

    assert trial.visible_gpus([], use_gpu=False) == ""
    assert trial.visible_gpus(["3"], use_gpu=True) == "3" and trial.visible_gpus([0, 2], use_gpu=True) == "0,2"
    with pytest.raises(RuntimeError, match="no GPU"):
        trial.visible_gpus([], use_gpu=True)
    sp = S.load(DEMO)
    job = SweepContext("/x", sp.base.to_dict(), 0, None).search_job({"method": "dsr", "job": "search/dsr/t1"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # a GPU node: every GPU visible by default
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    trial._place(job)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # hidden: no GPU nobody reserved
    job.config["train"]["use_gpu"] = True
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["2"])
    trial._place(job)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"  # exactly the reserved one: cuda:0 in this process


def test_a_compare_on_ray_refuses_a_fixed_cuda_device(tmp_path, capsys, monkeypatch):
    import dsr_tune.distributed as distributed

    def no_ray(*a, **k):
        raise AssertionError("Ray started")
    monkeypatch.setattr(distributed, "ray_session", no_ray)
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(ROOT / "configs" / "digits.yaml"), "train.device=cuda:1", "--concurrency", "2",
                     "--output", str(out)]) == 2
    assert "train.device" in capsys.readouterr().err and not out.exists()


def _data_roots(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "imnet" / split).mkdir(parents=True)
    return {"cifar10_wrn28_2": [f"data.root={tmp_path / 'cifar'}"], "imagenet_resnet50": [f"data.root={tmp_path / 'imnet'}"]}


def test_every_space_file_validates_and_opens_with_its_command(tmp_path):
    roots = _data_roots(tmp_path)
    files = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert {f.stem for f in files} >= {"digits_demo", "cifar10_wrn28_2", "imagenet_resnet50"}
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("#"), f
        command = next(line for line in f.read_text().splitlines() if "dsr-tune sweep" in line)
        assert f"search_spaces/{f.name}" in command
        sp = S.load(f, roots.get(f.stem, []))
        keys = {p.key for p in sp.params}
        assert "sparsity.sparsity" in keys and any(k.startswith("sparsity.dsr.") for k in keys), f  # DSR's own keys
        assert keys & {"sparsity.period_scale", "sparsity.period_schedule"}, f
        assert sp.base.train.workers >= 1 and sp.search.samples >= 1
        if sp.base.train.use_gpu:  # a GPU worker reserves its loader processes + itself
            assert sp.base.train.cpus_per_worker >= sp.base.data.loader_workers + 1, f


@pytest.mark.parametrize("override, key", [
    ("space.sparsity.dsr.delta={uniform: [0.05, 1.5]}", "space.sparsity.dsr.delta"),  # out of [0, 1)
    ("space.sparsity.sparsity={choice: [0.8, 1.0]}", "space.sparsity.sparsity"),
    ("space.sparsity.sparsity={uniform: [0.8, 0.9]}", "space.sparsity.sparsity"),  # grouped on: choice only
    ("space.optim.lr={loguniform: [0.0, 0.1]}", "space.optim.lr"),                 # log range from 0
    ("space.sparsity.deltaa={uniform: [0.1, 0.2]}", "space.sparsity.deltaa"),      # no such key
    ("space.train.epochs={uniform: [2, 5]}", "space.train.epochs"),                # a real range for an int
    ("search.sample=3", "search.sample"),
    ("search.metric=accuracy", "search.metric"),
    ("baselines=[gmp_magic]", "baselines"),
    ("search.metric=test_acc", "search.metric"),            # the test split never selects (unless opted in)
    ("seeds=[0, 1]", "seeds"),                              # 0 is the search's trial seed: not a fresh seed
    ("data.val_fraction=0", "search.metric"),               # val_acc needs a validation split
    ("tune_baselines=maybe", "tune_baselines"),
    ("train.epochs=0", "train.epochs"),
    ("bogus=1", "bogus"),
])
def test_bad_space_is_refused_before_ray_starts(override, key, capsys, monkeypatch):
    import dsr_tune.distributed as distributed

    def no_ray(*a, **k):
        raise AssertionError("Ray started for an invalid space")
    monkeypatch.setattr(distributed, "ray_session", no_ray)
    assert cli.main(["sweep", str(DEMO), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err


def test_space_is_define_by_run_and_picklable():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dsr_tune.sweep.spec import params_for

    sp = S.load(DEMO, ["methods=[dsr, set]"])
    assert [Phase.search(m).name for m in plan.tuned_methods(sp)] == ["search-dsr", "search-set"]  # a search each
    for method in ("dsr", "set"):
        fn = pickle.loads(pickle.dumps(OptunaSpace(params_for(sp, method), method)))  # Tune pickles the searcher
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(8):
            t = study.ask()
            assert fn(t) == {"method": method}
            assert ("sparsity.dsr.delta" in t.params) == (method == "dsr")  # DSR-only: never drawn for SET
            assert "sparsity.dsr.target_pruned" in t.params and "sparsity.period_scale" in t.params
            assert 0.02 <= t.params["optim.lr"] <= 0.1 and isinstance(t.params["sparsity.dsr.target_pruned"], int)
            study.tell(t, 0.5)
    # tune_baselines: static and thin dense get their own search, over the keys they read (LR, sparsity);
    # dense too (the demo has dense: true), over the keys every method reads, never a sparsity key
    tuned = S.load(DEMO, ["tune_baselines=true"])
    assert plan.tuned_methods(tuned) == ["dsr", "static", "thin_dense", "dense"]
    assert {p.key for p in params_for(tuned, "static")} == {"sparsity.sparsity", "optim.lr"}
    assert {p.key for p in params_for(tuned, "dense")} == {"optim.lr"}
    with pytest.raises(C.ConfigError, match="space.sparsity.rigl.drop_fraction"):
        S.load(DEMO, ["space.sparsity.rigl.drop_fraction={uniform: [0.1, 0.5]}"])  # only rigl/snfs read it


def test_concurrency_follows_the_cluster():
    from dsr_tune.sweep.tune import concurrency

    sp = S.load(DEMO)
    assert concurrency(sp, {"CPU": 2.0}) == 2            # 0.1 + 0.9 per trial
    assert concurrency(sp, {"CPU": 16.0}) == 16
    assert concurrency(S.load(DEMO, ["train.cpus_per_worker=1"]), {"CPU": 2.0}) == 1
    assert concurrency(S.load(DEMO, ["search.max_concurrent=3"]), {"CPU": 16.0}) == 3
    assert concurrency(S.load(DEMO, ["train.cpus_per_worker=4"]), {"CPU": 2.0}) == 1  # never 0
    # an autoscaling cluster starts without its GPU nodes: max_concurrent wins over what fits now
    gpu = S.load(DEMO, ["search.max_concurrent=4", "train.cpus_per_worker=4"])
    assert concurrency(gpu, {"CPU": 2.0}) == 4


def test_sweep_on_a_cluster_needs_a_shared_output(capsys, monkeypatch):
    import dsr_tune.distributed as distributed

    def no_ray(*a, **k):
        raise AssertionError("Ray started without --output on a cluster")
    monkeypatch.setattr(distributed, "ray_session", no_ray)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as in a Ray job
    assert cli.main(["sweep", str(DEMO)]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "/mnt/shared/sweeps/digits_demo" in err


def test_output_folder_and_resume_rules(tmp_path):
    from dsr_tune.sweep import folder

    sp, out = S.load(DEMO), tmp_path / "sweep"
    meta = folder.prepare(sp, out, resume=False, overwrite=False)
    assert meta["done"] == [] and meta["sweep_id"].startswith("digits_demo-")
    with pytest.raises(C.ConfigError, match="--overwrite"):
        folder.prepare(sp, out, resume=False, overwrite=False)  # never silently over a sweep
    assert folder.prepare(S.load(DEMO), out, resume=True, overwrite=False)["sweep_id"] == meta["sweep_id"]
    with pytest.raises(C.ConfigError, match="search.samples"):
        folder.prepare(S.load(DEMO, ["search.samples=9"]), out, resume=True, overwrite=False)
    with pytest.raises(C.ConfigError, match="no sweep to resume"):
        folder.prepare(sp, tmp_path / "other", resume=True, overwrite=False)
    assert folder.prepare(sp, out, resume=False, overwrite=True)["sweep_id"]  # --overwrite starts over
    # --resume marks the sweep RUNNING again before anything syncs (a KILLED sweep.json closes the parent)
    meta = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({**meta, "status": "KILLED"}))
    assert folder.prepare(sp, out, resume=True, overwrite=False)["status"] == "RUNNING"
    assert json.loads((out / "sweep.json").read_text())["status"] == "RUNNING"
    # a sweep started by a version that resumed through Tune's pickles: its paired phases resume,
    # a search it left unfinished does not (its study does not name its trials' run folders)
    old = {k: v for k, v in json.loads((out / "sweep.json").read_text()).items() if k != "format"}
    (out / "sweep.json").write_text(json.dumps(old))
    with pytest.raises(C.ConfigError, match="older dsr-tune.*never reads pickles"):
        folder.prepare(sp, out, resume=True, overwrite=False)
    (out / "sweep.json").write_text(json.dumps({**old, "done": ["search-dsr-s0.8", "search-dsr-s0.9"]}))
    assert folder.prepare(sp, out, resume=True, overwrite=False)["format"] == folder.FORMAT
    # a moved sweep folder: its planned runs point to the old place
    moved = tmp_path / "moved"
    out.rename(moved)
    with pytest.raises(C.ConfigError, match="has moved"):
        folder.prepare(sp, moved, resume=True, overwrite=False)
    # --overwrite deletes only a sweep folder
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(C.ConfigError, match="--output"):
        folder.prepare(sp, other, resume=False, overwrite=False)
    with pytest.raises(C.ConfigError, match="not a sweep folder.*chapter1.tex"):
        folder.prepare(sp, other, resume=False, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "precious"
    (moved / "notes.txt").write_text("mine")  # a sweep folder with something else in it
    with pytest.raises(C.ConfigError, match="notes.txt"):
        folder.prepare(sp, moved, resume=False, overwrite=True)
    assert (moved / "notes.txt").exists()


def test_pareto_asha_search_builds_without_ray(tmp_path):
    """What Tune gets for a multi-objective space with ASHA (no Ray started)."""
    from ray.tune.schedulers import ASHAScheduler

    from dsr_tune.sweep import tune
    from dsr_tune.sweep.study import StudySearcher

    sp = S.load(DEMO, ["search.pareto=true", "search.asha={grace_period: 2, reduction_factor: 2}",
                       "search.metric=val_acc", "search.mode=max"])
    ctx = SweepContext(str(tmp_path), sp.base.to_dict(), 0, SweepTracker(store.resolve("sqlite:///x.db"), "e", "s-1"))
    tc, param_space = tune.tune_config(Phase.parse("search-dsr"), sp, ctx, 2, None)
    assert param_space is None and tc.num_samples == sp.search.samples and tc.max_concurrent_trials == 2
    assert isinstance(tc.search_alg, StudySearcher) and isinstance(tc.scheduler, ASHAScheduler)
    assert tc.search_alg.metric == ["val_acc", "nonzero_params"] and tc.search_alg.mode == ["max", "min"]
    # ASHA takes one metric (from TuneConfig) and counts the 1-based epochs_done, up to the epochs
    assert (tc.metric, tc.mode) == ("val_acc", "max") and not tc.reuse_actors
    assert tc.scheduler._time_attr == "epochs_done" and tc.scheduler._max_t == sp.base.train.epochs
    assert tc.scheduler.set_search_properties(tc.metric, tc.mode)  # what Tune calls: accepted
    assert (tmp_path / "optuna.db").exists()  # the study is kept in the sweep folder
    pickle.loads(pickle.dumps(tc.search_alg))  # Tune checkpoints the searcher


def test_phase_names_and_job_keys_keep_their_spelling():
    """Phase names are folders under tune/ and entries of sweep.json's done list; job keys
    are run folders and MLflow keys: sweeps already on disk hold them, so they never change."""
    from dsr_tune.sweep import terms

    for name in ("search-dsr", "search-thin_dense-s0.9", "search-set-s0.98", "paired-0", "paired-1"):
        assert Phase.parse(name).name == name and str(Phase.parse(name)) == name
    assert Phase.parse("search-dsr-s0.8") == Phase.search("dsr", 0.8) and Phase.search("dsr", 0.8).cell == "dsr-s0.8"
    assert Phase.parse("paired-1") == Phase.paired(1) and not Phase.paired(1).is_search
    for bad in ("paired-x", "search-", "tune-dsr", "dsr"):
        with pytest.raises(ValueError, match="not a phase name"):
            Phase.parse(bad)
    assert terms.search_key("dsr", "a1b2") == "search/dsr/a1b2" and terms.trial_of("search/dsr/a1b2") == "a1b2"
    assert terms.trial_id(0.9, 3) == "s0.9-t3" and terms.trial_id(None, 0) == "t0"  # fixed when Optuna asks
    assert terms.paired_key("dsr_stop:5", 0.9, 2) == "paired/dsr_stop_5/s0.9/seed2"
    assert terms.paired_key("dense", None, 1) == "paired/dense/seed1"
    runs = plan.plan(rows.rows(["dsr", "gmp", "dense"], 2.0, 10), [0.9], [1])
    assert [(r.key, r.needs) for r in runs] == [("paired/dense/seed1", None), ("paired/dsr/s0.9/seed1", None),
                                                ("paired/gmp/s0.9/seed1", "paired/dense/seed1")]


def test_a_search_resumes_from_its_study_alone(tmp_path):
    """The searcher's whole state is the Optuna study (no Ray started): a new searcher
    (a resumed sweep) proposes the unfinished trial again with its values, key and number,
    then asks the rest; every proposal is a function of search.seed, the cell and the
    trial number, so the interrupted search draws what a straight one draws; errored
    trials are marked FAIL only once the phase has ended."""
    import optuna
    from ray.tune.search import Searcher

    from dsr_tune.sweep.study import StudySearcher

    sp, cell = S.load(DEMO, ["search.samples=3"]), Phase.search("dsr", 0.9)
    for sweep in "abc":
        (tmp_path / sweep).mkdir()
    first = StudySearcher(sp, cell, tmp_path / "a", "s-1")
    assert first.plan() == (0, 0, 3)
    c0, c1 = first.suggest("tune-x"), first.suggest("tune-y")
    assert (c0["job"], c0["trial"], c1["job"], c1["trial"]) == ("search/dsr/s0.9-t0", 0, "search/dsr/s0.9-t1", 1)
    assert c0["method"] == "dsr" and c0["sparsity.sparsity"] == 0.9 and 0.02 <= c0["optim.lr"] <= 0.1
    (tmp_path / "a" / "runs" / c0["job"]).mkdir(parents=True)
    (tmp_path / "a" / "runs" / c0["job"] / "tracking.json").write_text(json.dumps({"run_id": "abc123"}))
    first.on_trial_complete("tune-x", {"val_loss": 0.25, "epochs_done": 10})
    pickle.loads(pickle.dumps(first))  # Tune writes its searcher into tuner.pkl; the study is not in it
    first.save(str(tmp_path / "searcher.pkl"))
    assert not (tmp_path / "searcher.pkl").exists()

    resumed = StudySearcher(sp, cell, tmp_path / "a", "s-1")  # the driver was killed: a new process
    assert resumed.plan() == (1, 1, 1)
    assert resumed.suggest("tune-z") == c1  # the same values, key and trial number
    c2 = resumed.suggest("tune-w")
    assert c2["trial"] == 2 and resumed.suggest("tune-v") == Searcher.FINISHED
    straight = StudySearcher(sp, cell, tmp_path / "b", "s-1")
    assert [straight.suggest(t) for t in ("p", "q", "r")] == [c0, c1, c2]  # as if never interrupted
    other = StudySearcher(sp, Phase.search("dsr", 0.8), tmp_path / "b", "s-1").suggest("o")
    assert other["optim.lr"] != c0["optim.lr"] and other["job"] == "search/dsr/s0.8-t0"  # each cell its own seed

    resumed.on_trial_complete("tune-z", error=True)
    assert not resumed.close()  # trial 2 still runs: the errored one stays RUNNING, for --resume
    resumed.on_trial_complete("tune-w", {"val_loss": 0.5, "epochs_done": 10})
    assert resumed.close()
    study = optuna.load_study(study_name="s-1-dsr-s0.9", storage=f"sqlite:///{tmp_path / 'a' / 'optuna.db'}")
    assert study.metric_names == ["val_loss"] and study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    t0 = study.trials[0]
    assert t0.value == 0.25 and t0.user_attrs == {"job_key": "search/dsr/s0.9-t0", "mlflow_run_id": "abc123",
                                                  "run_folder": str(tmp_path / "a" / "runs" / c0["job"])}
    pareto = StudySearcher(S.load(DEMO, ["search.pareto=true"]), cell, tmp_path / "c", "s-1")
    pareto.suggest("t")
    assert pareto.study.metric_names == ["val_loss", "nonzero_params"]


def test_a_trial_lost_while_starting_runs_again_and_one_that_used_its_restarts_fails(tmp_path):
    """Tune restarts only a RUNNING trial: one whose process died while it started is errored
    with restarts left. The phase's next round proposes it again with its values; a trial
    that errored after its restarts is FAIL at once and not proposed again."""
    import optuna
    from types import SimpleNamespace

    from dsr_tune.sweep.study import StudySearcher
    from dsr_tune.sweep.tune import Lost

    def errored(failures, config):
        return SimpleNamespace(run_metadata=SimpleNamespace(num_failures=failures), config=config)

    sp, cell = S.load(DEMO, ["search.samples=3"]), Phase.search("dsr", 0.9)
    first = StudySearcher(sp, cell, tmp_path, "s-1")
    c = [first.suggest(t) for t in ("a", "b", "c")]
    lost = Lost(max_failures=1)
    lost.on_trial_error(0, [], errored(1, c[0]))  # died while PENDING: Tune did not use its restart
    lost.on_trial_error(0, [], errored(2, c[1]))  # failed, restarted, failed again: done with
    assert lost.trials == [c[0]]
    unlimited = Lost(max_failures=-1)
    unlimited.on_trial_error(0, [], errored(9, c[1]))
    assert unlimited.trials == [c[1]]
    first.on_trial_complete("a", error=True)
    first.on_trial_complete("b", error=True)
    first.on_trial_complete("c", {"val_loss": 0.5, "epochs_done": 10})
    first.fail_now(exclude={t["trial"] for t in lost.trials})
    again = StudySearcher(sp, cell, tmp_path, "s-1")
    assert again.plan() == (2, 1, 0) and again.suggest("d") == c[0]  # the same values, key and number
    again.on_trial_complete("d", {"val_loss": 0.25, "epochs_done": 10})
    assert again.close()
    study = optuna.load_study(study_name="s-1-dsr-s0.9", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_a_sparsity_choice_is_a_grid_of_searches_of_equal_size(tmp_path):
    import optuna

    from dsr_tune.sweep import tune

    sp = S.load(DEMO, ["tune_baselines=true"])
    cells = [(p.method, p.sparsity) for p in plan.search_phases(sp)]
    # dense has no sparsity: one search of the same size, whose selection serves every sparsity
    assert cells == [(m, s) for m in ("dsr", "static", "thin_dense") for s in (0.8, 0.9)] + [("dense", None)]
    parsed = [Phase.parse(Phase.search(*c).name) for c in cells]
    assert [(p.method, p.sparsity) for p in parsed] == cells and Phase.parse("search-dsr") == Phase.search("dsr")
    assert "sparsity.sparsity" in [p.key for p in S.params_for(sp, "dsr")]
    held = [p.key for p in S.params_for(sp, "dsr", 0.9)]
    assert "sparsity.sparsity" not in held and "sparsity.dsr.delta" in held
    ctx = SweepContext(str(tmp_path), sp.base.to_dict(), 0, SweepTracker(store.resolve("sqlite:///x.db"), "e", "s-1"))
    tc, _ = tune.tune_config(Phase.parse("search-static-s0.9"), sp, ctx, 2, None)
    assert tc.num_samples == sp.search.samples  # per cell: the same budget at every sparsity
    assert tc.search_alg.study_name == "s-1-static-s0.9"
    # the define-by-run space draws the cell's own keys and holds its sparsity
    study = optuna.create_study(direction="maximize")
    drawn = OptunaSpace(S.params_for(sp, "static", 0.9), "static", {"sparsity.sparsity": 0.9})(study.ask())
    assert drawn == {"method": "static", "sparsity.sparsity": 0.9}
    job = ctx.search_job({**drawn, "optim.lr": 0.05, "job": "search/static/s0.9-t1", "trial": 1})
    assert job.sparsity == 0.9 and job.config["optim"]["lr"] == 0.05 and job.method == "static"
    # without a sparsity choice: one search per method, named after the method alone
    text = Path(DEMO).read_text().replace("  sparsity.sparsity: {choice: [0.8, 0.9]}\n", "")
    assert text != Path(DEMO).read_text()
    (tmp_path / "one.yaml").write_text(text.replace("base: ../configs/", f"base: {Path(DEMO).parent.parent}/configs/"))
    assert [p.name for p in plan.search_phases(S.load(tmp_path / "one.yaml"))] == ["search-dsr"]


def _fake_search_run(sweep: Path, key: str, cfg: C.Config, acc: float) -> None:
    run = sweep / "runs" / key
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(C.dump(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": cfg.train.epochs - 1, "val_acc": acc,
                                                   "test_acc": 1 - acc, "nonzero_params": 100}) + "\n")
    (run / "tracking.json").write_text(json.dumps({"key": key, "run_name": key, "status": "FINISHED", "tags": {
        "method": cfg.sparsity.method, "role": "search", "seed": 0, "sparsity": f"{cfg.sparsity.sparsity:g}"}}))


def test_selection_on_validation_plans_every_row_on_fresh_seeds(tmp_path):
    from dsr_tune.sweep.report.gather import load_local
    from dsr_tune.sweep.select import paired_jobs

    sp = S.load(DEMO, ["seeds=[1, 2]", "optim.milestones=[4, 8]", "baselines=[static, thin_dense, gmp, final_reinit]",
                       "search.metric=val_acc", "search.mode=max"])
    ctx = SweepContext(str(tmp_path), sp.base.to_dict(), 0, SweepTracker(store.resolve("sqlite:///x.db"), "e", "s"))
    # val_acc decides: b (0.95) at 0.8 and e (0.85) at 0.9, though their test_acc is the lowest
    accs = {("a", 0.8): 0.9, ("b", 0.8): 0.95, ("c", 0.9): 0.8, ("d", 0.9): 0.7, ("e", 0.9): 0.85}
    for (name, s), acc in accs.items():
        data = sp.base.to_dict()
        data["sparsity"]["sparsity"] = s
        _fake_search_run(tmp_path, f"search/dsr/{name}", C.from_dict(data), acc)
    jobs = {j.key: j for j in paired_jobs(sp, ctx, load_local(tmp_path))}
    rows = [f"{m}_{f}" for m in ("thin_dense", "static") for f in ("1x", "2x")] + ["dsr", "gmp", "final_reinit"]
    expect = {f"paired/{r}/s{s}/seed{k}" for r in rows for s in ("0.8", "0.9") for k in (1, 2)}
    expect |= {"paired/dense/seed1", "paired/dense/seed2"}
    assert set(jobs) == expect  # 5 search trials, but each row once per (sparsity, seed); dense once per seed
    assert all(j.seed in (1, 2) for j in jobs.values())  # the trial seed 0 selected; fresh seeds report
    dsr = jobs["paired/dsr/s0.8/seed1"]
    assert dsr.role == "selected" and dsr.selected_from == "search/dsr/b" and dsr.group == "s0.8"
    assert dsr.tuned and dsr.identity()["tags"]["tuned"] == "true"  # its configuration came from the search
    assert dsr.config["train"]["seed"] == 1 and dsr.config["train"]["epochs"] == sp.base.train.epochs
    st = jobs["paired/static_2x/s0.9/seed1"]
    assert st.selected_from == "search/dsr/e" and st.role == "baseline" and not st.tuned
    assert st.config["train"]["epochs"] == 2 * sp.base.train.epochs and st.config["optim"]["milestones"] == [8, 16]
    assert st.config["sparsity"]["method"] == "static" and st.config["sparsity"]["sparsity"] == 0.9
    for control in ("static_1x", "thin_dense_1x"):  # 1x: DSR's epochs and LR milestones, unchanged
        one = jobs[f"paired/{control}/s0.9/seed1"].config
        assert one["train"]["epochs"] == sp.base.train.epochs and one["optim"]["milestones"] == [4, 8]
        assert one["sparsity"]["period_schedule"] == sp.base.to_dict()["sparsity"]["period_schedule"]
    two = jobs["paired/thin_dense_2x/s0.8/seed2"].config
    assert two["train"]["epochs"] == 2 * sp.base.train.epochs and two["optim"]["milestones"] == [8, 16]
    # stage 1: gmp after the dense run of its seed, the ablation after the DSR run of its sparsity and seed
    gmp, abl = jobs["paired/gmp/s0.9/seed2"], jobs["paired/final_reinit/s0.8/seed1"]
    assert gmp.stage == abl.stage == 1 and gmp.needs == "paired/dense/seed2" and abl.needs == "paired/dsr/s0.8/seed1"
    assert gmp.config["sparsity"]["gmp"]["dense_from"] == str(ctx.run_dir("paired/dense/seed2"))
    assert abl.config["sparsity"]["mask_from"] == str(ctx.run_dir("paired/dsr/s0.8/seed1"))
    dense = jobs["paired/dense/seed1"]
    assert dense.sparsity is None and dense.config["sparsity"]["method"] == "dense" and dense.stage == 0


def test_the_test_split_cannot_reach_selection(tmp_path, monkeypatch):
    """Real search trials (digits, 2 epochs, in this process, through the trial's own
    run_job) trained twice: with the true test labels, then with every test label
    shifted by one. Each epoch's val_acc and the selection made from the run folders
    are the same; test_acc is not. Computing the search metric from the test split
    (or letting a test label reach training) fails this test."""
    from torch.utils.data import Dataset

    from dsr_tune.data import tensors as loaders  # what the digits data set reads its splits from
    from dsr_tune.runfolder import read_records
    from dsr_tune.sweep.report.gather import load_local
    from dsr_tune.sweep.select import paired_jobs
    from dsr_tune.sweep.trial import run_job

    class Shifted(Dataset):  # the same test images, every label wrong
        def __init__(self, base, classes):
            self.base, self.classes = base, classes

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y = self.base[i]
            return x, (y + 1) % self.classes

    real = loaders.digits

    def corrupted(test_fraction):  # at the source: whatever reads the test split sees the wrong labels
        full, test, classes, channels = real(test_fraction)
        return full, Shifted(test, classes), classes, channels

    sp = S.load(DEMO, TINY + ["seeds=[1]", "baselines=[]", "dense=false", "model.width=0.25", "data.batch_size=128"])
    trials = {"a": {"optim.lr": 0.1, "sparsity.sparsity": 0.9}, "b": {"optim.lr": 0.005, "sparsity.sparsity": 0.9}}
    seen = {}
    for variant in ("clean", "corrupted"):
        if variant == "corrupted":
            monkeypatch.setattr(loaders, "digits", corrupted)
        ctx = SweepContext(str(tmp_path / variant), sp.base.to_dict(), 0,
                           SweepTracker(store.resolve(f"sqlite:///{tmp_path / 'none.db'}"), "e", variant))
        for trial_id, values in trials.items():
            run_job(ctx, ctx.search_job({"method": "dsr", **values, "job": f"search/dsr/{trial_id}"}))
        epochs = {t: [r for r in read_records(ctx.run_dir(f"search/dsr/{t}") / "metrics.jsonl")
                      if r["kind"] == "epoch"] for t in trials}
        jobs = paired_jobs(sp, ctx, load_local(ctx.sweep_dir))
        seen[variant] = epochs, {j.key: j.selected_from for j in jobs}
    (clean, chose), (bad, chose_bad) = seen["clean"], seen["corrupted"]
    for t in trials:
        assert len(clean[t]) == len(bad[t]) == 2
        assert [r["val_acc"] for r in clean[t]] == [r["val_acc"] for r in bad[t]]  # every epoch, exactly
        assert [r["train_loss"] for r in clean[t]] == [r["train_loss"] for r in bad[t]]
        assert all(c["test_acc"] != b["test_acc"] for c, b in zip(clean[t], bad[t]))  # the test split did change
    assert chose == chose_bad and chose["paired/dsr/s0.9/seed1"] in ("search/dsr/a", "search/dsr/b")


def _epoch(e: int, acc: float) -> dict:
    return {"kind": "epoch", "epoch": e, "step": 10 * (e + 1), "test_acc": acc, "train_loss": 1.0 - acc,
            "nonzero_params": 100, "lr": 0.1, "density": {"fc1.weight": 0.1, "fc2.weight": 0.2}}


def test_stopped_trial_is_replayed_and_resume_keeps_the_parent_running(tmp_path):
    """Without Ray: the Finalizer closes a trial ASHA stopped (its logger had sent
    one epoch of two) and --resume's sync of what MLflow missed leaves the
    parent RUNNING and a cut-off (still RUNNING) run alone."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from dsr_tune.sweep import folder as driver
    from dsr_tune.sweep.folder import open_tracker
    from dsr_tune.sweep.tune import Finalizer
    from dsr_tune.tracking import mlflow_runs as runs
    from dsr_tune.tracking.tracker import read_run_file, update_run_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sp, out = S.load(DEMO, [f"tracking.uri={uri}"]), tmp_path / "sweep"
    meta = driver.prepare(sp, out, resume=False, overwrite=False)
    tracker = open_tracker(sp, out, meta, resume=False)
    ctx = SweepContext(str(out), sp.base.to_dict(), 0, tracker)
    client = MlflowClient(uri)

    def trial_folder(name: str, records: list[dict]) -> tuple[Path, str]:
        run_dir = ctx.run_dir(f"search/dsr/{name}")
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(C.dump(sp.base))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        identity = {"key": f"search/dsr/{name}", "run_name": f"dsr s0.9 seed0 {name}",
                    "tags": {"method": "dsr", "role": "search", "seed": 0, "sparsity": "0.9"}}
        return run_dir, tracker.child(run_dir, identity)

    stopped, rid = trial_folder("t1", [_epoch(0, 0.5), _epoch(1, 0.6)])
    runs.log_metrics(client, rid, runs.record_metrics(_epoch(0, 0.5)))  # the live logger got epoch 1 only
    Finalizer(ctx)._close(SimpleNamespace(config={"method": "dsr", "job": "search/dsr/t1"}, trial_id="t1",
                                          last_result=None), "KILLED")
    run = client.get_run(rid)
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(rid, "epoch/test_acc")) == [1, 2]  # epoch 2 replayed
    assert {"config.yaml", "density.png"} <= {a.path for a in client.list_artifacts(rid)}
    assert not client.list_artifacts(rid, "export")  # a stopped trial's model is not a result
    assert read_run_file(stopped)["synced"] is True and read_run_file(stopped)["status"] == "KILLED"

    # the sweep is interrupted: t2 ended but MLflow missed it, t3 was cut off mid-training
    ended, rid2 = trial_folder("t2", [_epoch(0, 0.7), _epoch(1, 0.8)])
    update_run_file(ended, status="FINISHED")
    cut, rid3 = trial_folder("t3", [_epoch(0, 0.4)])
    tracker.close_parent("KILLED")
    driver.save(out, {**meta, "status": "KILLED"})

    meta = driver.prepare(sp, out, resume=True, overwrite=False)
    resumed = open_tracker(sp, out, meta, resume=True)
    assert resumed.parent_id == tracker.parent_id
    assert client.get_run(tracker.parent_id).info.status == "RUNNING"  # the resumed sweep runs
    assert client.get_run(rid2).info.status == "FINISHED" and read_run_file(ended)["synced"] is True
    assert sorted(m.step for m in client.get_metric_history(rid2, "epoch/test_acc")) == [1, 2]
    assert client.get_run(rid3).info.status == "RUNNING" and not client.get_metric_history(rid3, "epoch/test_acc")
    assert read_run_file(cut)["synced"] is False  # left to its trial, which --resume continues


# ------------------------------------------------------------------ real sweeps on a local Ray


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (started with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_in_group(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own; the whole group is killed afterwards
    (on a timeout too, which subprocess.run would leave to the driver alone)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dsr_tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsr_tune.cli", "sweep", str(DEMO), *args]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _mlflow(cwd: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")


def _children(client, sweep_id: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.sweep = '{sweep_id}'")
    parent = [r for r in runs if r.data.tags["role"] == "parent"]
    assert len(parent) == 1
    return parent[0], [r for r in runs if r.data.tags["role"] != "parent"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One sweep shared by the slow tests: 3 DSR trials at sparsity 0.9 (3 epochs),
    interrupted with Ctrl-C (SIGINT to the process group, as a terminal sends it)
    once the first trial has finished, then resumed with --resume: the rest of
    the search, static and thin dense (6 epochs) and dense (3)."""
    cwd = tmp_path_factory.mktemp("e2e")
    sweep = cwd / "sweep"
    args = [*TINY, "train.epochs=3", "optim.milestones=[2]", "search.samples=3", "seeds=[1]",
            "space.sparsity.sparsity=0.9", "--output", str(sweep)]
    log = open(cwd / "first.log", "w")
    # each sweep in a session of its own: whatever happens, its whole process group (the
    # driver and the Ray it started) is killed before the next test runs
    proc = subprocess.Popen(dsr_tune_cmd(*args), cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    interrupted = {"first": None, "log": cwd / "first.log"}
    try:
        first, deadline = None, time.time() + 600
        while first is None and time.time() < deadline and proc.poll() is None:
            for f in (sweep / "runs" / "search" / "dsr").glob("*/tracking.json"):
                if json.loads(f.read_text()).get("status") == "FINISHED":
                    first = f.parent
            time.sleep(0.3)
        interrupted["first"] = first
        if first is not None:
            os.killpg(proc.pid, signal.SIGINT)
            interrupted["rc"] = proc.wait(timeout=120)
            interrupted["metrics"] = (first / "metrics.jsonl").read_bytes()
            interrupted["checkpoint"] = (first / "checkpoint.pt").stat().st_mtime_ns
    finally:
        kill_group(proc)
    resumed = run_in_group(dsr_tune_cmd(*args, "--resume"), cwd=cwd, env=_env(), timeout=900)
    meta = json.loads((sweep / "sweep.json").read_text()) if (sweep / "sweep.json").exists() else {}
    return dict(cwd=cwd, sweep=sweep, interrupted=interrupted, proc=resumed, meta=meta)


@pytest.mark.slow
def test_interrupted_sweep_resumes_every_trial_exactly_once(e2e):
    i, sweep = e2e["interrupted"], e2e["sweep"]
    assert i["first"] is not None, i["log"].read_text()[-3000:]
    assert i["rc"] == 130 and "--resume" in i["log"].read_text(), i["log"].read_text()[-3000:]
    proc = e2e["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[search-dsr-s0.9 3/3 done]" in proc.stderr and "resuming from the study" in proc.stderr  # progress: stderr
    runs = sorted((sweep / "runs" / "search" / "dsr").iterdir())
    assert len(runs) == 3
    for run in runs:
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"kind": "epoch"' in line]
        assert epochs == [0, 1, 2], run  # each epoch recorded once, cut-off runs continued
    assert (i["first"] / "metrics.jsonl").read_bytes() == i["metrics"]  # the finished trial did not train again
    assert (i["first"] / "checkpoint.pt").stat().st_mtime_ns == i["checkpoint"]  # not written again
    assert not (sweep / "ray_train").exists()  # single-worker trials: no Ray Train worker group at all
    client = _mlflow(e2e["cwd"])
    _, children = _children(client, e2e["meta"]["sweep_id"])
    search = [r for r in children if r.data.tags["role"] == "search"]
    assert len(search) == 3  # one MLflow run per trial, restarts included
    for r in search:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "epoch/test_acc")) == [1, 2, 3]
    import optuna

    study = optuna.load_study(study_name=f"{e2e['meta']['sweep_id']}-dsr-s0.9", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3


@pytest.mark.slow
def test_sweep_end_to_end_in_mlflow(e2e):
    proc, cwd = e2e["proc"], e2e["cwd"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout  # the report; progress lines go to stderr
    assert "[paired-0 6/6 done]" in proc.stderr, proc.stderr
    for needle in ("sparsity 0.9", "thin_dense", "dense", "http://127.0.0.1:5000"):
        assert needle in out, out
    text = proc.stdout + proc.stderr + e2e["interrupted"]["log"].read_text()
    assert "Failed to query Ray Train Controller" not in text
    # readable: two lines per trial, the table, no screens of warnings
    assert len((proc.stdout + proc.stderr).splitlines()) < 55 and "WARNING" not in proc.stderr.upper()

    client = _mlflow(cwd)
    parent, children = _children(client, e2e["meta"]["sweep_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/report.md", "report/report.png", "report/report.csv", "report/report_dynamics_s0.9.png"}
    assert "s0.9/static_2x/mean" in parent.data.metrics  # the table's numbers on the parent run
    by_role = {}
    for r in children:
        by_role.setdefault(r.data.tags["role"], []).append(r)
    assert len(by_role["search"]) == 3 and len(by_role["baseline"]) == 4 and len(by_role["dense"]) == 1
    assert len(by_role["selected"]) == 1 and by_role["selected"][0].data.tags["seed"] == "1"  # a fresh seed
    search_keys = {r.data.tags["dsr_tune.run"].split("/", 1)[1] for r in by_role["search"]}
    git = store.git_revision()
    for r in children:
        tags, epochs = r.data.tags, int(r.data.params["train.epochs"])
        assert r.info.status == "FINISHED" and tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep"] == e2e["meta"]["sweep_id"] and tags["method"] in r.info.run_name
        assert tags["git_revision"] == git and f"seed{tags['seed']}" in r.info.run_name
        assert len(r.data.params) > 50 and tags["method"].startswith(r.data.params["sparsity.method"])  # a row label: static_2x trains static
        hist = client.get_metric_history(r.info.run_id, "epoch/test_acc")
        assert sorted(m.step for m in hist) == list(range(1, epochs + 1))  # every epoch, once
        for key in ("epoch/train_loss", "epoch/val_acc", "epoch/nonzero_params", "epoch/lr", "epoch/samples_per_s"):
            assert len(client.get_metric_history(r.info.run_id, key)) == epochs
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.yaml", "export"} <= arts  # the sparse export; the MLflow model is the run's logged model
    for r in by_role["search"]:
        assert r.data.tags["method"] == "dsr" and "s0.9" in r.info.run_name
        assert client.get_metric_history(r.info.run_id, "realloc/threshold")  # per reallocation
        assert "density.png" in {a.path for a in client.list_artifacts(r.info.run_id)}
    dsr_epochs = int(by_role["search"][0].data.params["train.epochs"])
    dsr_nonzero = by_role["search"][0].data.metrics["epoch/nonzero_params"]
    for r in by_role["baseline"]:
        label = r.data.tags["method"]
        assert label in ("static_1x", "static_2x", "thin_dense_1x", "thin_dense_2x")
        assert r.data.tags["selected_from"] in search_keys and r.data.tags["group"] == "s0.9"
        assert r.data.tags["dsr_run_id"] == by_role["selected"][0].info.run_id  # its DSR run, by MLflow run id
        assert r.data.tags["selected_from_run_id"] in {s.info.run_id for s in by_role["search"]}
        factor = 2 if label.endswith("_2x") else 1  # the paper's 2x control, and the 1x one
        assert int(r.data.params["train.epochs"]) == factor * dsr_epochs
        assert abs(r.data.metrics["epoch/nonzero_params"] - dsr_nonzero) <= 0.05 * dsr_nonzero  # same parameter count
    assert int(by_role["dense"][0].data.params["train.epochs"]) == dsr_epochs
    assert (cwd / "sweep" / "report.png").exists() and (cwd / "sweep" / "optuna.db").exists()
    exp = client.get_experiment(parent.info.experiment_id)  # opens on its runs table, says what it holds
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development" and exp.tags["mlflow.note.content"]
    assert all(r.data.tags["mlflow.note.content"] for r in children)  # every run's description
    assert by_role["dense"][0].data.tags["sparsity"] == "0"


@pytest.mark.slow
def test_the_logged_mlflow_model_predicts_like_the_checkpoint(e2e):
    import mlflow
    import mlflow.pytorch
    import torch

    from dsr_tune import checkpoint as ckpt
    from dsr_tune.tracking.mlflow_runs import read_run_file
    from dsr_tune.train.setup import build_run_model

    run_dir = e2e["sweep"] / "runs" / "paired" / "static_2x" / "s0.9" / "seed1"
    info = read_run_file(run_dir)
    mlflow.set_tracking_uri(f"sqlite:///{e2e['cwd'] / 'mlruns' / 'mlflow.db'}")
    logged = mlflow.pytorch.load_model(info["mlflow_model"])
    state = ckpt.load(run_dir)
    cfg = C.from_dict(state["config"])
    model = build_run_model(cfg, 10, 1, resuming=True)
    model.load_state_dict(state["model"])
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(logged(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    sig = mlflow.models.get_model_info(info["mlflow_model"]).signature
    assert list(sig.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 8, 8]


@pytest.mark.slow
def test_report_command_on_the_sweep_folder(e2e, capsys):
    assert e2e["proc"].returncode == 0
    assert cli.main(["report", str(e2e["sweep"])]) == 0
    out = capsys.readouterr().out
    assert "sparsity 0.9" in out and "static_2x" in out and "± 0.00" in out and "n < 3" in out  # one seed
    assert "selection run, not in the means: search/dsr/" in out and "selected on val_loss" in out  # the demo's metric


@pytest.mark.slow
def test_a_trial_in_the_trials_process_resumes_from_its_checkpoint_after_the_driver_is_killed(tmp_path):
    """SIGKILL the driver and its Ray mid-trial; --resume continues the cut-off run from
    its last checkpoint (its earlier epochs are not trained again) to the same end."""
    sweep = tmp_path / "sweep"
    args = ["train.epochs=8", "optim.milestones=[6]", "sparsity.stop_epoch=8", "sparsity.period_schedule=[[0, 15]]",
            "search.samples=1", "seeds=[1]", "baselines=[]", "dense=false", "space.sparsity.sparsity=0.9",
            "--output", str(sweep)]
    proc = subprocess.Popen(dsr_tune_cmd(*args), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    run = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            found = list((sweep / "runs" / "search" / "dsr").glob("*/checkpoint.pt"))
            lines = (found[0].parent / "metrics.jsonl").read_text().splitlines() if found else []
            if sum('"kind": "epoch"' in ln for ln in lines) >= 3:
                run = found[0].parent
                break
            time.sleep(0.2)
    finally:
        kill_group(proc)  # SIGKILL: the driver and the Ray it started, trial included
    assert run is not None, "the trial never reached its third epoch"
    from dsr_tune import checkpoint as ckpt

    done = ckpt.load(run)["epoch"]
    assert 2 <= done < 8
    init = (run / "init.pt").stat().st_mtime_ns
    resumed = run_in_group(dsr_tune_cmd(*args, "--resume"), cwd=tmp_path, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    assert epochs == list(range(8))  # every epoch once: the cut-off one again, none of the finished ones
    assert (run / "init.pt").stat().st_mtime_ns == init  # continued, not started over
    assert ckpt.load(run)["epoch"] == 8


@pytest.mark.slow
def test_asha_stops_trials_in_the_trials_process_and_the_sweep_selects_a_full_one(tmp_path):
    """ASHA with single-worker trials in Tune's own process: weak trials end at a rung
    (fewer epochs in their folder, KILLED in MLflow, not left RUNNING), and the selected
    configuration is one that trained every epoch."""
    sweep = tmp_path / "sweep"
    args = ["train.epochs=6", "optim.milestones=[4]", "sparsity.stop_epoch=5", "sparsity.period_schedule=[[0, 15]]",
            "search.samples=4", "search.asha={grace_period: 1, reduction_factor: 2}", "seeds=[1]", "baselines=[]",
            "dense=false", "space.sparsity.sparsity=0.9", "--output", str(sweep)]
    proc = run_in_group(dsr_tune_cmd(*args), cwd=tmp_path, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    epochs = {}
    for run in (sweep / "runs" / "search" / "dsr").iterdir():
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        epochs[run.name] = sum(r["kind"] == "epoch" for r in records)
    assert len(epochs) == 4 and min(epochs.values()) < 6 and max(epochs.values()) == 6, epochs
    client = _mlflow(tmp_path)
    _, children = _children(client, json.loads((sweep / "sweep.json").read_text())["sweep_id"])
    status = {r.data.tags["dsr_tune.run"].rsplit("/", 1)[1]: r.info.status for r in children
              if r.data.tags["role"] == "search"}
    assert {k: v == "FINISHED" for k, v in status.items()} == {k: n == 6 for k, n in epochs.items()}
    assert set(status.values()) <= {"FINISHED", "KILLED"}
    selected = [r for r in children if r.data.tags["role"] == "selected"]
    assert len(selected) == 1
    chosen = selected[0].data.tags.get("selected_from_run_id")
    assert chosen and client.get_run(chosen).info.status == "FINISHED"


def test_relative_paths_of_a_space_are_read_from_where_the_sweep_runs(tmp_path, monkeypatch):
    """Trials run in other working directories (and on other nodes): a relative data.root,
    mask_from, ... is made absolute against the directory the sweep is started from."""
    monkeypatch.chdir(tmp_path)
    sp = S.load(ROOT / "search_spaces" / "mnist5k.yaml")
    assert sp.base.data.root == str(tmp_path / "data" / "mnist5k")
    data = S.absolute_paths({"sparsity": {"mask_from": "runs/a", "gmp": {"dense_from": "/abs/b"}},
                             "train": {"storage_path": "s3://bucket/x"}, "data": {"root": None}})
    assert data["sparsity"]["mask_from"] == str(tmp_path / "runs" / "a")
    assert data["sparsity"]["gmp"]["dense_from"] == "/abs/b" and data["train"]["storage_path"] == "s3://bucket/x"
