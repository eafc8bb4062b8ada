"""search.trials_per_gpu: packed single-worker trials, checked through Ray's own
resource accounting on the CPU (a local Ray that declares GPUs it does not have),
so the scheduling is known to be right before a GPU sees it."""

import json
import os
import time
from pathlib import Path

import pytest

from dsr_tune import cli, config as C
from dsr_tune.sweep import spec as S
from dsr_tune.sweep.jobs import SweepContext

from conftest import DEMO

PACKED = ["train.use_gpu=true", "search.trials_per_gpu=4", "train.cpus_per_worker=0.1", "search.trial_cpus=0.1"]


def test_packed_trials_hold_a_share_of_a_gpu():
    from dsr_tune.sweep.folder import parent_params
    from dsr_tune.sweep.tune import concurrency, trial_resources

    sp = S.load(DEMO, PACKED)
    assert trial_resources(sp, on_cluster=False) == {"cpu": pytest.approx(0.2), "gpu": 0.25}
    assert concurrency(sp, {"CPU": 16.0, "GPU": 2.0}) == 8      # 4 on each GPU
    assert concurrency(sp, {"CPU": 1.0, "GPU": 2.0}) == 5       # the CPUs bind first
    one = S.load(DEMO, ["train.use_gpu=true", "train.cpus_per_worker=0.1", "search.trial_cpus=0.1"])
    assert trial_resources(one, False)["gpu"] == 1 and concurrency(one, {"CPU": 16.0, "GPU": 2.0}) == 2
    params = parent_params(sp)
    assert params["search.trials_per_gpu"] == 4
    assert params["packing"] == "4 trials per GPU: each holds 1/4 of a GPU and at most 1/4 of its memory"
    assert parent_params(S.load(DEMO))["packing"] == "no GPU"


def test_keys_documents_trials_per_gpu(capsys):
    assert cli.main(["keys", "search"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("search:") and "trials_per_gpu = 1" in out and "1/N of its memory" in out
    assert cli.main(["keys"]) == 0 and "search:" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["train.use_gpu=false", "search.in_trial=false", "train.workers=2"])
def test_packing_needs_gpu_trials_in_their_own_process(override, capsys):
    with pytest.raises(C.ConfigError, match="^search.trials_per_gpu: 4 packs trials"):
        S.load(DEMO, [*PACKED, override])
    assert cli.main(["sweep", DEMO, *PACKED, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.trials_per_gpu" in err[0]


def test_a_packed_trial_bounds_its_cuda_memory(monkeypatch):
    """_place shows the trial its GPU and caps its allocator at 1/N of the memory."""
    import ray
    import torch

    from dsr_tune.sweep import trial

    job = SweepContext("/x", S.load(DEMO, PACKED).base.to_dict(), 0, None).search_job({"method": "dsr", "job": "search/dsr/t1"})
    calls = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    trial._place(job, 4)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1" and calls == [(0.25, 0)]  # its one GPU is cuda:0 here
    trial._place(job, 1)
    assert calls == [(0.25, 0)]  # a trial with a GPU of its own is not capped


@pytest.mark.slow
def test_ray_packs_four_trials_on_each_of_two_declared_gpus(tmp_path):
    """12 trials of 1/4 GPU on a Ray that declares 2 GPUs (and CPUs to spare): Ray's
    accounting, not max_concurrent, lets 8 run at once, at most 4 on each GPU id."""
    import ray
    from ray import tune

    from dsr_tune.distributed import ray_session
    from dsr_tune.sweep.tune import concurrency, trial_resources

    # defined here, so Ray ships it by value (the workers cannot import this test module)
    def _packed_trial(config):
        """Note when it runs and on which GPU, then wait until 8 have started (or 120 s)."""
        import ray
        from ray import tune

        from dsr_tune.sweep.trial import visible_gpus

        folder = Path(config["folder"])
        gpus = ray.get_gpu_ids()
        start = time.time()
        (folder / f"start-{config['i']}").write_text("")
        while len(list(folder.glob("start-*"))) < 8 and time.time() - start < 120:
            time.sleep(0.2)
        time.sleep(0.5)
        note = {"gpus": [str(g) for g in gpus], "visible": visible_gpus(gpus, True), "start": start, "end": time.time()}
        (folder / f"trial-{config['i']}.json").write_text(json.dumps(note))
        tune.report({"done": 1})

    sp = S.load(DEMO, PACKED)
    with ray_session(cpus=4, num_gpus=2, log_to_driver=False):
        assert concurrency(sp, ray.cluster_resources()) == 8
        trainable = tune.with_resources(_packed_trial, trial_resources(sp, on_cluster=False))
        tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(12))), "folder": str(tmp_path)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=12, reuse_actors=False),
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="packed", verbose=0))
        grid = tuner.fit()
    assert grid.num_errors == 0 and grid.num_terminated == 12
    notes = [json.loads((tmp_path / f"trial-{i}.json").read_text()) for i in range(12)]
    assert all(len(n["gpus"]) == 1 and n["visible"] == n["gpus"][0] for n in notes)
    assert {n["gpus"][0] for n in notes} == {"0", "1"}
    events = sorted([(n["start"], 1, n["gpus"][0]) for n in notes] + [(n["end"], -1, n["gpus"][0]) for n in notes])
    running, per_gpu, most, most_per_gpu = 0, {"0": 0, "1": 0}, 0, 0
    for _, step, gpu in events:
        running += step
        per_gpu[gpu] += step
        most, most_per_gpu = max(most, running), max(most_per_gpu, per_gpu[gpu])
    assert most == 8 and most_per_gpu == 4
