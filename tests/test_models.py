"""Models: the registry, the spec's dense/sparse split and parameter counts."""

import pytest
import torch
import torchvision

from dsr_tune.models import REGISTRY, build_model, count_params, sparse_names
from dsr_tune.sparse import Masking


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
