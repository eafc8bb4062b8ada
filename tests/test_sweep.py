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
from dsr_tune.sweep import space as S
from dsr_tune.sweep.jobs import SweepContext
from dsr_tune.sweep.search import OptunaSpace
from dsr_tune.tracking import SweepTracker, store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "digits_demo.yaml"
TINY = ["train.epochs=2", "optim.milestones=[1]", "sparsity.stop_epoch=2", "sparsity.period_schedule=[[0, 15]]"]


# ------------------------------------------------------------------ fast checks, no Ray


def test_progress_table_shows_searched_values_and_latest_metrics():
    from dsr_tune.sweep.driver import progress_table

    sp = S.load(DEMO)
    search = progress_table("search", sp)
    assert search._parameter_columns == {"sparsity.sparsity": "sparsity", "sparsity.period_scale": "period_scale",
                                         "sparsity.dsr.delta": "delta", "sparsity.dsr.target_pruned": "target_pruned",
                                         "optim.lr": "lr"}
    assert search._metric_columns == {"epochs_done": "epochs", "test_acc": "test_acc", "nonzero_params": "non-zero"}
    assert progress_table("paired", sp)._parameter_columns == {"job": "run"}
    assert not progress_table("search", S.load(DEMO, ["search.pareto=true"]))._sort_by_metric


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
        assert {"sparsity.dsr.delta", "sparsity.sparsity"} <= keys and keys & {"sparsity.period_scale", "sparsity.period_schedule"}
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
    ("baselines=[gmp]", "baselines"),
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
    sp = S.load(DEMO, ["methods=[dsr, set]"])
    fn = OptunaSpace(sp.params, sp.methods)
    fn2 = pickle.loads(pickle.dumps(fn))  # plain pickle: Tune checkpoints the searcher with it
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(16):
        t = study.ask()
        fixed = fn2(t)
        method = t.params.get("method", fixed.get("method"))
        seen.add(method)
        assert ("sparsity.dsr.delta" in t.params) == (method == "dsr")  # DSR-only: never drawn for SET
        assert "sparsity.dsr.target_pruned" in t.params and "sparsity.period_scale" in t.params
        assert 0.02 <= t.params["optim.lr"] <= 0.1 and isinstance(t.params["sparsity.dsr.target_pruned"], int)
        study.tell(t, 0.5)
    assert seen == {"dsr", "set"}
    with pytest.raises(C.ConfigError, match="space.sparsity.rigl.drop_fraction"):
        S.load(DEMO, ["space.sparsity.rigl.drop_fraction={uniform: [0.1, 0.5]}"])  # only rigl/snfs read it


def test_concurrency_follows_the_cluster():
    sp = S.load(DEMO)
    assert S.concurrency(sp, {"CPU": 2.0}) == 2            # 0.1 + 0.9 per trial
    assert S.concurrency(sp, {"CPU": 16.0}) == 16
    assert S.concurrency(S.load(DEMO, ["train.cpus_per_worker=1"]), {"CPU": 2.0}) == 1
    assert S.concurrency(S.load(DEMO, ["search.max_concurrent=3"]), {"CPU": 16.0}) == 3
    assert S.concurrency(S.load(DEMO, ["train.cpus_per_worker=4"]), {"CPU": 2.0}) == 1  # never 0
    # an autoscaling cluster starts without its GPU nodes: max_concurrent wins over what fits now
    gpu = S.load(DEMO, ["search.max_concurrent=4", "train.cpus_per_worker=4"])
    assert S.concurrency(gpu, {"CPU": 2.0}) == 4


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
    from dsr_tune.sweep import driver

    sp, out = S.load(DEMO), tmp_path / "sweep"
    meta = driver.prepare(sp, out, resume=False, overwrite=False)
    assert meta["phase"] == "search" and meta["sweep_id"].startswith("digits_demo-")
    with pytest.raises(C.ConfigError, match="--overwrite"):
        driver.prepare(sp, out, resume=False, overwrite=False)  # never silently over a sweep
    assert driver.prepare(S.load(DEMO), out, resume=True, overwrite=False)["sweep_id"] == meta["sweep_id"]
    with pytest.raises(C.ConfigError, match="search.samples"):
        driver.prepare(S.load(DEMO, ["search.samples=9"]), out, resume=True, overwrite=False)
    with pytest.raises(C.ConfigError, match="no sweep to resume"):
        driver.prepare(sp, tmp_path / "other", resume=True, overwrite=False)
    assert driver.prepare(sp, out, resume=False, overwrite=True)["sweep_id"]  # --overwrite starts over
    # --resume marks the sweep RUNNING again before anything syncs (a KILLED sweep.json closes the parent)
    meta = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({**meta, "status": "KILLED"}))
    assert driver.prepare(sp, out, resume=True, overwrite=False)["status"] == "RUNNING"
    assert json.loads((out / "sweep.json").read_text())["status"] == "RUNNING"
    # a moved sweep folder: Tune's state points to the old place
    moved = tmp_path / "moved"
    out.rename(moved)
    with pytest.raises(C.ConfigError, match="has moved"):
        driver.prepare(sp, moved, resume=True, overwrite=False)
    # --overwrite deletes only a sweep folder
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(C.ConfigError, match="--output"):
        driver.prepare(sp, other, resume=False, overwrite=False)
    with pytest.raises(C.ConfigError, match="not a sweep folder.*chapter1.tex"):
        driver.prepare(sp, other, resume=False, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "precious"
    (moved / "notes.txt").write_text("mine")  # a sweep folder with something else in it
    with pytest.raises(C.ConfigError, match="notes.txt"):
        driver.prepare(sp, moved, resume=False, overwrite=True)
    assert (moved / "notes.txt").exists()


def test_pareto_asha_search_builds_without_ray(tmp_path):
    """What Tune gets for a multi-objective space with ASHA (no Ray started)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from dsr_tune.sweep import driver

    sp = S.load(DEMO, ["search.pareto=true", "search.asha={grace_period: 2, reduction_factor: 2}"])
    ctx = SweepContext(str(tmp_path), sp.base.to_dict(), 0, SweepTracker(store.resolve("sqlite:///x.db"), "e", "s-1"))
    tc, param_space = driver.tune_config("search", sp, ctx, n_concurrent=2)
    assert param_space is None and tc.num_samples == sp.search.samples and tc.max_concurrent_trials == 2
    assert isinstance(tc.search_alg, OptunaSearch) and isinstance(tc.scheduler, ASHAScheduler)
    assert tc.search_alg.metric == ["test_acc", "nonzero_params"] and tc.search_alg.mode == ["max", "min"]
    # ASHA takes one metric (from TuneConfig) and counts the 1-based epochs_done, up to the epochs
    assert (tc.metric, tc.mode) == ("test_acc", "max") and not tc.reuse_actors
    assert tc.scheduler._time_attr == "epochs_done" and tc.scheduler._max_t == sp.base.train.epochs
    assert tc.scheduler.set_search_properties(tc.metric, tc.mode)  # what Tune calls: accepted
    assert (tmp_path / "optuna.db").exists()  # the study is kept in the sweep folder
    pickle.loads(pickle.dumps(tc.search_alg))  # Tune checkpoints the searcher


def _fake_search_run(sweep: Path, key: str, cfg: C.Config, acc: float) -> None:
    run = sweep / "runs" / key
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(C.dump(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": cfg.train.epochs - 1, "test_acc": acc,
                                                   "nonzero_params": 100}) + "\n")
    (run / "tracking.json").write_text(json.dumps({"key": key, "run_name": key, "status": "FINISHED", "tags": {
        "method": cfg.sparsity.method, "role": "search", "seed": 0, "sparsity": f"{cfg.sparsity.sparsity:g}"}}))


def test_pairing_trains_each_baseline_once_per_sparsity_and_seed(tmp_path):
    from dsr_tune.sweep.pairing import paired_jobs

    sp = S.load(DEMO, ["seeds=[0, 1]", "optim.milestones=[4, 8]"])
    ctx = SweepContext(str(tmp_path), sp.base.to_dict(), 0, SweepTracker(store.resolve("sqlite:///x.db"), "e", "s"))
    accs = {("a", 0.8): 0.9, ("b", 0.8): 0.95, ("c", 0.9): 0.8, ("d", 0.9): 0.7, ("e", 0.9): 0.85}
    for (name, s), acc in accs.items():
        data = sp.base.to_dict()
        data["sparsity"]["sparsity"] = s
        _fake_search_run(tmp_path, f"search/{name}", C.from_dict(data), acc)
    jobs = {j.key: j for j in paired_jobs(sp, ctx)}
    expect = {f"paired/{m}_{f}_s{s}_seed{k}" for m in ("static", "thin_dense") for f in ("1x", "2x")
              for s in ("0.8", "0.9") for k in (0, 1)}  # the controls at 1x and 2x the epochs
    expect |= {"paired/dsr_s0.8_seed1", "paired/dsr_s0.9_seed1", "paired/dense_seed0", "paired/dense_seed1"}
    assert set(jobs) == expect  # 5 search trials, but each baseline once per (sparsity, seed)
    st = jobs["paired/static_2x_s0.9_seed1"]
    assert st.baseline_for == "search/e" and st.role == "baseline" and st.seed == 1
    assert st.config["train"]["epochs"] == 2 * sp.base.train.epochs and st.config["optim"]["milestones"] == [8, 16]
    assert st.config["sparsity"]["method"] == "static" and st.config["sparsity"]["sparsity"] == 0.9
    assert jobs["paired/static_1x_s0.9_seed1"].config["train"]["epochs"] == sp.base.train.epochs
    assert jobs["paired/thin_dense_2x_s0.8_seed0"].baseline_for == "search/b"
    rep = jobs["paired/dsr_s0.8_seed1"]
    assert rep.repeat_of == "search/b" and rep.config["train"]["epochs"] == sp.base.train.epochs
    dense = jobs["paired/dense_seed1"]
    assert dense.sparsity is None and dense.config["sparsity"]["method"] == "dense" and dense.config["train"]["seed"] == 1


def _epoch(e: int, acc: float) -> dict:
    return {"kind": "epoch", "epoch": e, "step": 10 * (e + 1), "test_acc": acc, "train_loss": 1.0 - acc,
            "nonzero_params": 100, "lr": 0.1, "density": {"fc1.weight": 0.1, "fc2.weight": 0.2}}


def test_stopped_trial_is_replayed_and_resume_keeps_the_parent_running(tmp_path):
    """Without Ray: the Finalizer closes a trial ASHA stopped (its logger had sent
    one epoch of two) and --resume's sync of what MLflow missed leaves the
    parent RUNNING and a cut-off (still RUNNING) run alone."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from dsr_tune.sweep import driver
    from dsr_tune.sweep.callbacks import Finalizer
    from dsr_tune.tracking import runs
    from dsr_tune.tracking.tracker import read_run_file, update_run_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sp, out = S.load(DEMO, [f"tracking.uri={uri}"]), tmp_path / "sweep"
    meta = driver.prepare(sp, out, resume=False, overwrite=False)
    tracker = driver.open_tracker(sp, out, meta, resume=False)
    ctx = SweepContext(str(out), sp.base.to_dict(), 0, tracker)
    client = MlflowClient(uri)

    def trial_folder(name: str, records: list[dict]) -> tuple[Path, str]:
        run_dir = ctx.run_dir(f"search/{name}")
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(C.dump(sp.base))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        identity = {"key": f"search/{name}", "run_name": f"dsr s0.9 seed0 {name}",
                    "tags": {"method": "dsr", "role": "search", "seed": 0, "sparsity": "0.9"}}
        return run_dir, tracker.child(run_dir, identity)

    stopped, rid = trial_folder("t1", [_epoch(0, 0.5), _epoch(1, 0.6)])
    runs.log_metrics(client, rid, runs.record_metrics(_epoch(0, 0.5)))  # the live logger got epoch 1 only
    Finalizer(ctx)._close(SimpleNamespace(config={"method": "dsr"}, trial_id="t1"), "KILLED")
    run = client.get_run(rid)
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(rid, "test_acc")) == [1, 2]  # epoch 2 replayed
    assert {"config.yaml", "density.png"} <= {a.path for a in client.list_artifacts(rid)}
    assert not client.list_artifacts(rid, "model")  # a stopped trial's model is not a result
    assert read_run_file(stopped)["synced"] is True and read_run_file(stopped)["status"] == "KILLED"

    # the sweep is interrupted: t2 ended but MLflow missed it, t3 was cut off mid-training
    ended, rid2 = trial_folder("t2", [_epoch(0, 0.7), _epoch(1, 0.8)])
    update_run_file(ended, status="FINISHED")
    cut, rid3 = trial_folder("t3", [_epoch(0, 0.4)])
    tracker.close_parent("KILLED")
    driver._save(out, {**meta, "status": "KILLED"})

    meta = driver.prepare(sp, out, resume=True, overwrite=False)
    resumed = driver.open_tracker(sp, out, meta, resume=True)
    assert resumed.parent_id == tracker.parent_id
    assert client.get_run(tracker.parent_id).info.status == "RUNNING"  # the resumed sweep runs
    assert client.get_run(rid2).info.status == "FINISHED" and read_run_file(ended)["synced"] is True
    assert sorted(m.step for m in client.get_metric_history(rid2, "test_acc")) == [1, 2]
    assert client.get_run(rid3).info.status == "RUNNING" and not client.get_metric_history(rid3, "test_acc")
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
    args = [*TINY, "train.epochs=3", "optim.milestones=[2]", "search.samples=3", "seeds=[0]",
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
            for f in (sweep / "runs" / "search").glob("*/tracking.json"):
                if json.loads(f.read_text()).get("status") == "FINISHED":
                    first = f.parent
            time.sleep(0.3)
        interrupted["first"] = first
        if first is not None:
            os.killpg(proc.pid, signal.SIGINT)
            interrupted["rc"] = proc.wait(timeout=120)
            interrupted["metrics"] = (first / "metrics.jsonl").read_bytes()
            interrupted["checkpoints"] = sorted(p.name for p in (sweep / "ray_train").glob(f"*{first.name}/epoch_*"))
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
    assert "[search 3/3 done]" in proc.stderr and "restoring Tune's state" in proc.stderr  # progress: stderr
    runs = sorted((sweep / "runs" / "search").iterdir())
    assert len(runs) == 3
    for run in runs:
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"kind": "epoch"' in line]
        assert epochs == [0, 1, 2], run  # each epoch recorded once, cut-off runs continued
    assert (i["first"] / "metrics.jsonl").read_bytes() == i["metrics"]  # the finished trial did not train again
    assert sorted(p.name for p in (sweep / "ray_train").glob(f"*{i['first'].name}/epoch_*")) == i["checkpoints"]
    client = _mlflow(e2e["cwd"])
    _, children = _children(client, e2e["meta"]["sweep_id"])
    search = [r for r in children if r.data.tags["role"] == "search"]
    assert len(search) == 3  # one MLflow run per trial, restarts included
    for r in search:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "test_acc")) == [1, 2, 3]
    import optuna

    study = optuna.load_study(study_name=e2e["meta"]["sweep_id"], storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3


@pytest.mark.slow
def test_sweep_end_to_end_in_mlflow(e2e):
    proc, cwd = e2e["proc"], e2e["cwd"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout  # the report; progress lines go to stderr
    assert "[paired 5/5 done]" in proc.stderr, proc.stderr
    for needle in ("sparsity 0.9", "thin_dense", "dense", "http://127.0.0.1:5000"):
        assert needle in out, out
    text = proc.stdout + proc.stderr + e2e["interrupted"]["log"].read_text()
    assert "Failed to query Ray Train Controller" not in text
    assert len((proc.stdout + proc.stderr).splitlines()) < 40  # readable: no screens of warnings

    client = _mlflow(cwd)
    parent, children = _children(client, e2e["meta"]["sweep_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {"report/report.md", "report/report.png"}
    by_role = {}
    for r in children:
        by_role.setdefault(r.data.tags["role"], []).append(r)
    assert len(by_role["search"]) == 3 and len(by_role["baseline"]) == 4 and len(by_role["dense"]) == 1
    search_keys = {r.data.tags["dsr_tune.run"].split("/", 1)[1] for r in by_role["search"]}
    git = store.git_revision()
    for r in children:
        tags, epochs = r.data.tags, int(r.data.params["train.epochs"])
        assert r.info.status == "FINISHED" and tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep"] == e2e["meta"]["sweep_id"] and tags["method"] in r.info.run_name
        assert tags["git_revision"] == git and f"seed{tags['seed']}" in r.info.run_name
        assert len(r.data.params) > 50 and tags["method"].startswith(r.data.params["sparsity.method"])  # a row label: static_2x trains static
        hist = client.get_metric_history(r.info.run_id, "test_acc")
        assert sorted(m.step for m in hist) == list(range(1, epochs + 1))  # every epoch, once
        for key in ("train_loss", "nonzero_params", "lr", "samples_per_s"):
            assert len(client.get_metric_history(r.info.run_id, key)) == epochs
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.yaml", "model"} <= arts
    for r in by_role["search"]:
        assert r.data.tags["method"] == "dsr" and "s0.9" in r.info.run_name
        assert client.get_metric_history(r.info.run_id, "threshold")  # per reallocation
        assert "density.png" in {a.path for a in client.list_artifacts(r.info.run_id)}
    dsr_epochs = int(by_role["search"][0].data.params["train.epochs"])
    dsr_nonzero = by_role["search"][0].data.metrics["nonzero_params"]
    for r in by_role["baseline"]:
        label = r.data.tags["method"]
        assert label in ("static_1x", "static_2x", "thin_dense_1x", "thin_dense_2x")
        assert r.data.tags["baseline_for"] in search_keys
        factor = 2 if label.endswith("_2x") else 1  # the paper's 2x control, and the 1x one
        assert int(r.data.params["train.epochs"]) == factor * dsr_epochs
        assert abs(r.data.metrics["nonzero_params"] - dsr_nonzero) <= 0.05 * dsr_nonzero  # same parameter count
    assert int(by_role["dense"][0].data.params["train.epochs"]) == dsr_epochs
    assert (cwd / "sweep" / "report.png").exists() and (cwd / "sweep" / "optuna.db").exists()


@pytest.mark.slow
def test_report_command_on_the_sweep_folder(e2e, capsys):
    assert e2e["proc"].returncode == 0
    assert cli.main(["report", str(e2e["sweep"])]) == 0
    out = capsys.readouterr().out
    assert "sparsity 0.9" in out and "static" in out and "± 0.00" in out and "best of 3" in out
