"""``dsr-tune export``: compressed sparse models that load back exactly, from
any run's config (Ray settings, a data root not present here, channels_last)."""

import io

import pytest
import torch

from dsr_tune import config as C
from dsr_tune import methods
from dsr_tune.cli import main
from dsr_tune.data import build_data
from dsr_tune.train.export import (architecture_config, compress, decompress, export_run, load_exported,
                                  pack_bits, unpack_bits)
from dsr_tune.models import sparse_names
from dsr_tune.sparse import Masking
from dsr_tune.train import train
from dsr_tune.checkpoint import save as atomic_save
from dsr_tune.checkpoint import load as load_ckpt
from dsr_tune.train.setup import build_run_model

BASE = {"model": {"name": "small_cnn", "width": 1.0}, "data": {"name": "digits", "batch_size": 64},
        "optim": {"lr": 0.05, "milestones": []},
        "sparsity": {"method": "dsr", "sparsity": 0.9, "dsr": {"target_pruned": 200}, "period_schedule": [[0, 5]]},
        "train": {"epochs": 1, "seed": 0, "device": "cpu", "threads": 1}}


def run(tmp_path, **over):
    cfg = C.from_dict(C.apply_overrides(BASE, [f"{k}={v}" for k, v in over.items()]))
    train(cfg, tmp_path)
    return cfg


def original_model(folder, cfg):
    state = load_ckpt(folder / "checkpoint.pt")
    torch.manual_seed(0)
    model = build_run_model(cfg, 10, 1, resuming=True)
    model.load_state_dict(state["model"])
    return model.eval()


def test_export_round_trip_is_exact_and_a_fifth_of_dense_at_sparsity_09(tmp_path, capsys):
    cfg = run(tmp_path)
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "m.pt")]) == 0
    assert "of the dense checkpoint" in capsys.readouterr().out
    dense = io.BytesIO()
    torch.save(load_ckpt(tmp_path / "checkpoint.pt")["model"], dense)
    size = (tmp_path / "m.pt").stat().st_size
    assert size <= dense.tell() / 5, (size, dense.tell())
    x = next(iter(build_data(cfg.data).test))[0]
    loaded = load_exported(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x), original_model(tmp_path, cfg)(x))


@pytest.mark.parametrize("density,kind", [(0.5, "bitmask"), (0.01, "index")])
def test_positions_take_the_smaller_form_and_decompress_exactly(density, kind):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 50, generator=g)
    mask = torch.rand(40, 50, generator=g) < density
    mask[0, 0] = True
    state = {"w": w * mask, "b": torch.randn(7, generator=g)}
    blob = compress(state, {"w": mask})
    assert kind in blob["sparse"]["w"] and [m[0] for m in blob["dense"]["meta"]] == ["b"]
    back = decompress(blob)
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])
    bits = torch.rand(1001, generator=g) < 0.3
    assert torch.equal(unpack_bits(pack_bits(bits), 1001), bits)


def test_export_of_a_hashednet_run_loads_back(tmp_path):
    cfg = run(tmp_path, **{"sparsity.method": "hashednet"})
    assert main(["export", str(tmp_path)]) == 0
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path / "model.sparse.pt")(x), original_model(tmp_path, cfg)(x))
    assert main(["export", str(tmp_path / "nothing")]) == 2


def _cluster_run(folder, drop=()):
    """A checkpoint as a Ray run on a GPU cluster writes it (built here, not
    trained): 3 workers, a global batch of 96, fp16, remote storage, and a
    CIFAR-10 root that does not exist on this machine. None of it may stop
    the model from loading. ``drop``: state-dict keys to leave out."""
    cfg = C.from_dict(BASE)
    torch.manual_seed(1)
    model = build_run_model(cfg, 10, 1, resuming=True)
    masking = Masking(model, sparsity=0.9, names=sparse_names("small_cnn", model))
    data = cfg.to_dict()
    data["data"].update(name="cifar10", root="/nonexistent/cifar", batch_size=96)
    data["train"].update(workers=3, use_gpu=True, device="auto", precision="fp16", storage_path="s3://bucket/runs")
    data["sparsity"]["mask_from"] = "/nonexistent/dsr_run"
    state = {k: v for k, v in model.state_dict().items() if k not in drop}
    atomic_save({"model": state, "masking": masking.state_dict(), "config": data}, folder / "checkpoint.pt")
    return model.eval()


def test_export_of_a_ray_run_loads_back_without_touching_the_callers_rng(tmp_path):
    model = _cluster_run(tmp_path)
    with pytest.raises(C.ConfigError):  # as saved, the run's config is not valid on this machine
        C.check_paths(C.from_dict(load_ckpt(tmp_path / "checkpoint.pt")["config"]))
    info = export_run(tmp_path)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    loaded = load_exported(info["path"])
    assert torch.equal(torch.get_rng_state(), rng)  # the model was built on a forked RNG
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_export_names_the_missing_keys_of_a_foreign_state_dict(tmp_path):
    _cluster_run(tmp_path, drop=("fc.bias",))
    with pytest.raises(ValueError, match=r"no fc\.bias.*the number of classes"):
        export_run(tmp_path)


def test_export_of_a_channels_last_run_round_trips(tmp_path):
    cfg = run(tmp_path, **{"train.channels_last": "true"})
    state = load_ckpt(tmp_path / "checkpoint.pt")
    stored = [t for t in state["model"].values() if t.dim() == 4]
    assert stored and all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                          for t in stored if t.shape[1] > 1)  # the checkpoint really holds NHWC tensors
    info = export_run(tmp_path)
    back = decompress(torch.load(info["path"], weights_only=True))
    assert back.keys() == state["model"].keys()
    assert all(torch.equal(back[k], state["model"][k]) for k in back)  # logical values, whatever the layout
    x = next(iter(build_data(cfg.data).test))[0]
    with torch.no_grad():
        assert torch.equal(load_exported(info["path"])(x), original_model(tmp_path, cfg)(x))


def test_export_rebuilds_gmp_as_the_method_its_registration_names():
    """A GMP run's config names its dense run (gone, perhaps): the exported model is rebuilt
    as ``Method.rebuilt_as`` (static, the same architecture), without reading that run."""
    data = C.apply_overrides(BASE, ["sparsity.method=gmp", "sparsity.gmp.dense_from=/nowhere/dense_run",
                                    "train.epochs=60"])
    with pytest.raises(C.ConfigError, match=r"sparsity\.gmp\.dense_from"):
        C.check_paths(C.from_dict(data))
    arch = architecture_config(data)
    assert arch["sparsity"]["method"] == methods.get("gmp").rebuilt_as == "static"
    assert "gmp" not in arch["sparsity"]
    C.check_paths(C.from_dict(arch))  # valid here, with no dense run
    assert architecture_config(BASE)["sparsity"]["method"] == "dsr"  # a method not rebuilt keeps its name
