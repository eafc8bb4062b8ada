"""``dsr-tune export``: compressed sparse models that load back exactly (issue 3)."""

import io

import pytest
import torch

from dsr_tune import config as C
from dsr_tune.cli import main
from dsr_tune.data import build_data
from dsr_tune.export import compress, decompress, load_exported, pack_bits, unpack_bits
from dsr_tune.train import train
from dsr_tune.train.checkpoint import load as load_ckpt
from dsr_tune.baselines.setup import make_model

BASE = {"model": {"name": "small_cnn", "width": 1.0}, "data": {"name": "digits", "batch_size": 64},
        "optim": {"lr": 0.05, "milestones": []},
        "sparsity": {"method": "dsr", "sparsity": 0.9, "target_pruned": 200, "period_schedule": [[0, 5]]},
        "train": {"epochs": 1, "seed": 0, "device": "cpu", "threads": 1}}


def run(tmp_path, **over):
    cfg = C.from_dict(C.apply_overrides(BASE, [f"{k}={v}" for k, v in over.items()]))
    train(cfg, tmp_path)
    return cfg


def original_model(folder, cfg):
    state = load_ckpt(folder / "checkpoint.pt")
    torch.manual_seed(0)
    model = make_model(cfg, 10, 1)
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
