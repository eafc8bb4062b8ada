"""The progress lines of a sweep: the best so far and every ETA, from Tune's callback
(fake trials, a fake clock) and from the planned epochs of the phases still to come."""

from __future__ import annotations

import pickle
from pathlib import Path

from dsr_tune.sweep import plan, progress as P, spec, tune
from dsr_tune.sweep.jobs import Job, SweepContext, write_paired
from dsr_tune.sweep.progress import epochs_after
from dsr_tune.sweep.terms import Phase

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_demo.yaml"


def test_progress_lines_carry_the_best_so_far_and_the_phase_eta(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    ctx = SimpleNamespace(run_dir_of=lambda config: tmp_path / config["job"])
    progress = tune.Progress(Phase.parse("search-dsr"), 4, ctx, "val_acc", "max")
    clock = iter([1000.0, 1060.0, 1090.0])  # the first start, then ends 60 s and 90 s in
    monkeypatch.setattr(P, "_now", lambda: next(clock))
    trials = [SimpleNamespace(trial_id=f"t{i}", status="PENDING", config={"method": "dsr", "job": f"t{i}"},
                              last_result={}) for i in range(4)]
    caplog.set_level("INFO", logger="dsr_tune")
    for t in trials[:2]:
        t.status = "RUNNING"
        progress.on_trial_start(0, trials, t)
    trials[0].last_result = {"val_acc": 0.9, "test_acc": 0.8, "epochs_done": 3, "nonzero_params": 10}
    progress.on_trial_complete(0, trials, trials[0])
    trials[0].status = "TERMINATED"
    first = caplog.records[-1].getMessage()
    # 1 of 4 ended 60 s after the first start: 3 left at 60 s each
    assert "best val_acc so far 90.00% (t0)" in first and first.endswith("phase ETA 3m00s"), first
    trials[1].last_result = {"val_acc": 0.95, "test_acc": 0.9, "epochs_done": 3, "nonzero_params": 10}
    progress.on_trial_complete(0, trials, trials[1])
    second = caplog.records[-1].getMessage()
    assert "best val_acc so far 95.00% (t1)" in second and second.endswith("phase ETA 1m30s"), second  # 45 s each
    # Tune writes its callbacks into tuner.pkl (never read back): without the context and its tracking URI
    assert pickle.loads(pickle.dumps(progress)).ctx is None


def test_progress_lines_carry_the_sweeps_eta_and_the_best_per_sparsity(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    caplog.set_level("INFO", logger="dsr_tune")
    clock = iter([1000.0, 1060.0, 1090.0])
    monkeypatch.setattr(P, "_now", lambda: next(clock))
    ctx = SimpleNamespace(run_dir_of=lambda config: tmp_path / config["job"])
    # a search over two sparsities: 4 trials of 10 epochs, then 60 epochs planned in later phases
    progress = tune.Progress(Phase.parse("search-dsr"), 4, ctx, "val_acc", "max", planned=10, later=60)
    trials = [SimpleNamespace(trial_id=f"t{i}", status="RUNNING", last_result={},
                              config={"method": "dsr", "job": f"t{i}", "sparsity.sparsity": (0.9, 0.98)[i % 2]})
              for i in range(4)]
    for t in trials[:2]:
        progress.on_trial_start(0, trials, t)
    trials[0].last_result = {"val_acc": 0.9, "test_acc": 0.8, "epochs_done": 10}
    progress.on_trial_complete(0, trials, trials[0])
    trials[0].status = "TERMINATED"
    first = caplog.records[-1].getMessage()
    # 10 epochs in 60 s: 30 left in this phase + 60 later = 90 epochs at 6 s; the phase: 3 trials at 60 s
    assert first.endswith("best val_acc so far: s0.9 90.00% (t0); total ETA 9m00s, phase ETA 3m00s"), first
    trials[1].last_result = {"val_acc": 0.95, "test_acc": 0.9, "epochs_done": 10}
    progress.on_trial_complete(0, trials, trials[1])
    second = caplog.records[-1].getMessage()  # per sparsity: 95% at 0.98 is not the best at 0.9
    assert "best val_acc so far: s0.9 90.00% (t0), s0.98 95.00% (t1); total ETA 6m00s, phase ETA 1m30s" in second

    # a paired phase: DSR's and the leading row's test mean at the ending trial's sparsity
    def job(key, method, seed):
        return Job(key, "selected" if method == "dsr" else "baseline", method, 0.9, seed,
                   {"train": {"epochs": 20 if method.endswith("_2x") else 10}})
    jobs = {j.key: j for j in (job("paired/dsr/s0.9/seed1", "dsr", 1), job("paired/dsr/s0.9/seed2", "dsr", 2),
                               job("paired/static_2x/s0.9/seed1", "static_2x", 1))}
    ctx.paired_jobs = lambda: jobs
    monkeypatch.setattr(P, "_now", lambda: 2000.0)
    paired = tune.Progress(Phase.parse("paired-0"), 3, ctx, "val_acc", "max", planned={k: j.config["train"]["epochs"]
                                                                                for k, j in jobs.items()}, later=0)
    trials = [SimpleNamespace(trial_id=k, status="RUNNING", config={"job": k}, last_result={}) for k in jobs]
    for t, acc in zip(trials, (0.90, 0.86, 0.95)):
        t.last_result = {"test_acc": acc, "epochs_done": 10}
        paired.on_trial_complete(0, trials, t)
        t.status = "TERMINATED"
    lines = [r.getMessage() for r in caplog.records[-3:]]
    assert "s0.9 so far (test mean over the seeds ended): dsr 90.00% (n 1), the best" in lines[0], lines[0]
    assert "dsr 88.00% (n 2), best static_2x 95.00% (n 1)" in lines[2], lines[2]


def test_the_sweeps_eta_counts_the_phases_still_to_come(tmp_path):
    sp = spec.load(DEMO)  # 2 sparsities x 2 seeds x (dsr 10 + static 10, 20 + thin dense 10, 20) + dense 2 x 10
    ctx = SweepContext(str(tmp_path), sp.base.to_dict(), 0, None)
    # one search of 2 trials x 10 epochs per sparsity: search-dsr-s0.8, then search-dsr-s0.9
    assert [p.name for p in plan.search_phases(sp)] == ["search-dsr-s0.8", "search-dsr-s0.9"]
    assert epochs_after(sp, ctx, Phase.parse("search-dsr-s0.8")) == 2 * 10 + 2 * 2 * 70 + 20
    assert epochs_after(sp, ctx, Phase.parse("search-dsr-s0.9")) == 300
    # static and thin dense: two more searches per sparsity; dense: one more (it has no sparsity), last
    tuned = spec.load(DEMO, ["tune_baselines=true"])
    assert epochs_after(tuned, ctx, Phase.parse("search-dsr-s0.8")) == 5 * 2 * 10 + 2 * 10 + 300
    assert epochs_after(tuned, ctx, Phase.parse("search-thin_dense-s0.9")) == 2 * 10 + 300
    assert epochs_after(tuned, ctx, Phase.parse("search-dense")) == 300
    write_paired(tmp_path, [Job("paired/dense/seed1", "dense", "dense", None, 1, {"train": {"epochs": 10}}),
                            Job("paired/gmp/s0.9/seed1", "baseline", "gmp", 0.9, 1, {"train": {"epochs": 20}}, stage=1)])
    assert epochs_after(sp, ctx, Phase.paired(0)) == 20 and epochs_after(sp, ctx, Phase.paired(1)) == 0


def test_a_resumed_phase_counts_the_trials_that_ended_before_it(tmp_path, caplog):
    """A resumed search runs only what its study still needs: the count and the ETA include
    the trials that ended in the earlier run."""
    from types import SimpleNamespace

    caplog.set_level("INFO", logger="dsr_tune")
    ctx = SimpleNamespace(run_dir_of=lambda config: tmp_path / config["job"])
    progress = tune.Progress(Phase.parse("search-dsr"), 4, ctx, "val_acc", "max", planned=10, later=0, before=2)
    trials = [SimpleNamespace(trial_id=f"x{i}", status="RUNNING", last_result={},
                              config={"method": "dsr", "job": f"search/dsr/t{i + 2}", "optim.lr": 0.05})
              for i in range(2)]
    progress.on_trial_start(0, trials, trials[0])
    assert caplog.records[-1].getMessage().startswith("[search-dsr 2/4 done] start search/dsr/t2  lr=0.05")
    trials[0].last_result = {"val_acc": 0.9, "test_acc": 0.8, "epochs_done": 10}
    progress.on_trial_complete(0, trials, trials[0])
    assert "[search-dsr 3/4 done] end" in caplog.records[-1].getMessage()
    assert progress.epochs_left == 10  # one trial of 10 epochs to go
