"""Models: the registry, the spec's dense/sparse split and parameter counts."""

import pytest
import torch
import torchvision

from dsr_tune.models import REGISTRY, build_model, count_params, sparse_names
from dsr_tune.sparse import Masking

from conftest import DIGITS, package_copy, readme_block, run_python


def nonzero_at(name, model, sparsity):
    names = sparse_names(name, model)
    params = dict(model.named_parameters())
    sparse = sum(params[n].numel() for n in names)
    m = Masking(model, None, sparsity=sparsity, names=names)
    return count_params(model) - sparse + m.budget


def test_wrn_28_2_split_and_count():
    model = build_model("wrn", depth=28, width=2.0, num_classes=10)
    assert count_params(model) == 1_467_610  # the spec's 1.46M
    names = sparse_names("wrn", model)
    params = dict(model.named_parameters())
    # 12 blocks x 2 3x3 convs sparse; first conv, 1x1 shortcuts, fc, BN dense
    assert len(names) == 24 and all(params[n].shape[-2:] == (3, 3) for n in names)
    assert "conv1.weight" not in names and "fc.weight" not in names
    assert not any("shortcut" in n or "bn" in n for n in names)


def test_resnet50_split_and_counts():
    model = build_model("resnet50", width=1.0, num_classes=1000)
    assert count_params(model) == count_params(torchvision.models.resnet50()) == 25_557_032
    assert [k for k in model.state_dict()] == [k for k in torchvision.models.resnet50().state_dict()]
    names = sparse_names("resnet50", model)
    assert len(names) == 16 * 3 + 1 and "fc.weight" in names
    assert "conv1.weight" not in names and not any("downsample" in n for n in names)
    assert abs(nonzero_at("resnet50", model, 0.8) - 7.3e6) < 0.1e6  # spec: 7.3M
    assert abs(nonzero_at("resnet50", model, 0.9) - 5.1e6) < 0.05e6  # spec: 5.1M


@pytest.mark.parametrize("width", [0.5, 0.75, 1.33])
def test_real_width_scales_every_model(width):
    for name in REGISTRY:
        base = count_params(build_model(name, width=1.0, num_classes=10))
        thin = count_params(build_model(name, width=width, num_classes=10))
        assert (thin < base) == (width < 1.0)


def test_width_counts_are_exact():
    # every channel count scales: round(16k), round(32k), ...; changes here change every thin baseline
    assert count_params(build_model("small_cnn", width=0.5, num_classes=10, in_channels=1)) == 14_850
    assert count_params(build_model("wrn", depth=28, width=0.75, num_classes=10)) == 209_130
    assert count_params(build_model("resnet50", width=0.5, num_classes=1000)) == 6_917_640


def test_forward_shapes():
    x = torch.randn(2, 3, 32, 32)
    assert build_model("wrn", depth=10, width=1.0, num_classes=7)(x).shape == (2, 7)
    assert build_model("small_cnn", num_classes=10, in_channels=1)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert build_model("resnet50", width=0.25, num_classes=5)(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_sparse_layers_override():
    model = build_model("wrn", depth=10, width=1.0)
    assert sparse_names("wrn", model, include=["fc.weight"]) == ["fc.weight"]
    default = sparse_names("wrn", model)
    fewer = sparse_names("wrn", model, exclude=["block1.*"])
    assert set(fewer) < set(default) and not any(n.startswith("block1.") for n in fewer)


def test_unknown_model_named():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*allowed"):
        build_model("vgg")


def test_the_readme_s_new_model_is_one_file_and_one_line(tmp_path):
    """README's "Adding a model", as written: its file and its register line in a copy of the
    package give a model.name choice that `dsr-tune keys` lists and a sparse method trains."""
    line = readme_block("imported when a model is built, so the config stays torch-free):").strip()
    path = package_copy(tmp_path, {"models/mine.py": readme_block("Write `dsr_tune/models/mine.py`:")},
                        {"models/__init__.py": (r"\n__all__ = ", f"{line}\n\n__all__ = ")})
    script = f"""
from dsr_tune import config as C, methods, models
from dsr_tune.train import train
assert models.names()[-1] == "mine"
try:
    C.load({DIGITS!r}, ["model.name=yours"])
except C.ConfigError as exc:
    print("refused:", exc)
cfg = C.load({DIGITS!r}, ["model.name=mine", "train.epochs=3", "train.stop_after=1", "optim.milestones=[]",
                          "sparsity.stop_epoch=3", "sparsity.period_schedule=[[0, 10]]", "sparsity.dsr.target_pruned=5",
                          "train.threads=1"])
record = train(cfg, {str(tmp_path / 'run')!r}, progress=False)
print("trained", record["epoch"], record["nonzero_params"], record["total_params"])
for name in methods.trainable():
    if methods.get(name).needs is None:  # gmp's dense parent, ...: trained from another run
        record = train(C.replace(cfg, **{{"sparsity.method": name}}), {str(tmp_path)!r} + "/" + name, progress=False)
        print("method", name, record["epoch"])
print(C.describe("model"))
"""
    out = run_python(script, path)
    assert "refused: model.name: 'yours' must be one of 'small_cnn', 'wrn', 'resnet50' or 'mine'" in out
    # conv 1 -> 32 channels, 3x3: 288 weights, 29 kept at sparsity 0.9; its bias and the 32 -> 10 classifier dense
    assert "trained 0 391 650" in out
    from dsr_tune import methods

    trained = [line.split()[1] for line in out.splitlines() if line.startswith("method ") and line.endswith(" 0")]
    assert trained == [m for m in methods.trainable() if methods.get(m).needs is None]  # every method, one epoch
    assert "name = 'small_cnn'  # the model: small_cnn, wrn, resnet50, mine" in out
