"""data.resident: the same batches as the loaders for a seed (per DDP rank),
crops and flips that are torchvision's, exact resume, and the choice itself
(auto, true, false, the cap, the sets that are never resident)."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datafiles import write_tree
from PIL import Image

from dsr_tune import config as C
from dsr_tune.data import build_data, registry
from dsr_tune.data.checks import check, check_keys
from dsr_tune.data.resident import ResidentLoader
from dsr_tune.runfolder import read_records
from dsr_tune.train import train

from conftest import DIGITS

TINY = ["model.name=small_cnn", "model.width=0.25", "train.epochs=3", "optim.milestones=[]",
        "sparsity.period_schedule=[[0, 3]]", "sparsity.stop_epoch=2", "sparsity.dsr.target_pruned=20"]


def digit_tree(root, n=6, size=12):
    """Grey PNGs at their training size (no resize, as MNIST-5k): every path gives the same pixels."""
    rng = np.random.default_rng(1)
    for split, count in (("train", n), ("val", 3)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
                    root / split / f"c{c}" / f"{i}.png")
    return root


def folder(root, *keys):
    return C.load(None, ["data.name=folder", f"data.root={root}", "data.image_size=12", "data.batch_size=4",
                         "data.eval_batch_size=5", "data.loader_workers=0", *keys]).data


def epochs(bundle, n=2, seed=3):
    """Every batch of ``n`` epochs, then validation and test, as (x, y) on the CPU."""
    out = []
    for e in range(n):
        bundle.set_epoch(e, seed)
        out += [bundle.to_device(b, "cpu") for b in bundle.train]
    for loader in (bundle.val, bundle.test):
        out += [bundle.to_device(b, "cpu") for b in loader]
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("world", [1, 2])
def test_digits_batches_equal_the_loaders_per_rank(world):
    cfg = C.load(DIGITS, ["data.batch_size=32"]).data
    for rank in range(world):
        loaded = build_data(cfg, seed=3, rank=rank, world_size=world)
        resident = build_data(cfg, seed=3, rank=rank, world_size=world, device="cpu")
        assert not loaded.resolved["resident"] and resident.resolved["resident"]
        assert isinstance(resident.train, ResidentLoader) and len(resident.train) == len(loaded.train)
        assert same(epochs(loaded), epochs(resident))
    # the ranks' shards differ, and a new epoch is a new order
    a = build_data(cfg, seed=3, rank=0, world_size=2, device="cpu")
    b = build_data(cfg, seed=3, rank=1, world_size=2, device="cpu")
    orders = []
    for bundle in (a, b):
        bundle.set_epoch(0, 3)
        list(bundle.train)
        orders.append(bundle.train.last_order)
    assert not set(orders[0].tolist()) & set(orders[1].tolist())
    a.set_epoch(1, 3)
    list(a.train)
    assert not torch.equal(a.train.last_order, orders[0])


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_folder_batches_equal_both_decode_paths_without_augmentation(tmp_path, decode):
    root = digit_tree(tmp_path)
    cfg = folder(root, "data.hflip=false", "data.crop_padding=0", f"data.decode={decode}")
    for world, rank in ((1, 0), (2, 1)):
        loaded = build_data(cfg, seed=0, rank=rank, world_size=world)
        resident = build_data(cfg, seed=0, rank=rank, world_size=world, device="cpu")
        assert resident.resolved["resident"] and not loaded.resolved["resident"]
        assert same(epochs(loaded), epochs(resident))


def test_cifar_batches_equal_the_loaders_without_augmentation(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    from datafiles import write_cifar

    write_cifar(tmp_path, n_train=40, n_test=10)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # generated files: no md5 to match
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    cfg = C.load(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.batch_size=8", "data.eval_batch_size=6",
                        "data.loader_workers=0", "data.crop_padding=0", "data.hflip=false"]).data
    loaded, resident = build_data(cfg, seed=1), build_data(cfg, seed=1, device="cpu")
    assert resident.resolved["resident"] and resident.train.x.dtype == torch.uint8
    assert same(epochs(loaded), epochs(resident))


def test_crops_and_flips_are_torchvisions(tmp_path):
    """Each augmented image is the stored one reflect-padded, cropped at the drawn
    offset and flipped when drawn; offsets uniform in [0, 2 pad], flips at 1/2."""
    root = write_tree(tmp_path, classes=2, per_class=6, channels=3, ext="png")
    bundle = build_data(folder(root, "data.crop_padding=3", "data.hflip=true"), seed=0, device="cpu")
    loader = bundle.train
    stored = loader.x
    loader.augment.manual_seed(0)
    idx = torch.arange(len(stored)).repeat(300)
    top, left, flip = draws = loader._draw(len(idx))
    x, y = loader._take(idx, draws)
    mean, std = torch.tensor(bundle.resolved["mean"]).view(-1, 1, 1), torch.tensor(bundle.resolved["std"]).view(-1, 1, 1)
    for k in range(0, len(idx), 97):
        ref = F.pad(stored[idx[k]][None].float(), (3, 3, 3, 3), mode="reflect")[0]
        ref = ref[:, top[k]:top[k] + 12, left[k]:left[k] + 12]
        ref = ref.flip(-1) if flip[k] else ref
        assert torch.allclose(x[k], (ref / 255 - mean) / std, atol=1e-6)
        assert y[k] == loader.y[idx[k]]
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=7)
        assert len(counts) == 7 and counts.min() > 0.8 * len(idx) / 7 and counts.max() < 1.2 * len(idx) / 7
    assert 0.45 < flip.float().mean() < 0.55
    # seeded by (seed, epoch, rank): an epoch drawn twice is the same, the next one differs
    runs = []
    for e in (0, 0, 1):
        bundle.set_epoch(e, 5)
        runs.append(torch.cat([b[0] for b in bundle.train]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def _records(run):
    timed = ("samples_per_s", "epoch_time", "train_time", "realloc_time")
    return [{k: v for k, v in r.items() if k not in timed} for r in read_records(run / "metrics.jsonl")]


def test_resume_is_exact_with_resident_crops_and_flips(tmp_path):
    root = write_tree(tmp_path / "data", classes=3, per_class=8, size=(12, 12), channels=3, ext="png")
    keys = TINY + ["data.name=folder", f"data.root={root}", "data.image_size=12", "data.batch_size=6",
                   "data.crop_padding=2", "data.hflip=true", "data.resident=true"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(C.load(DIGITS, keys), straight)
    train(C.load(DIGITS, keys + ["train.stop_after=1"]), split)
    train(C.load(DIGITS, keys), split, resume=True)
    assert _records(straight) == _records(split) and len(_records(straight)) > 3
    assert "#     resident: true" in (straight / "config.yaml").read_text()


def test_digits_records_equal_with_and_without_resident(tmp_path):
    """No augmentation: the same batches, so the same training, to the bit."""
    for resident in ("true", "false"):
        train(C.load(DIGITS, TINY + [f"data.resident={resident}"]), tmp_path / resident)
    assert _records(tmp_path / "true") == _records(tmp_path / "false")


def test_auto_true_false_and_the_cap(tmp_path, monkeypatch, caplog):
    root = digit_tree(tmp_path / "data")
    auto = folder(root)
    assert build_data(auto, device="cpu").resolved["resident"]
    assert not build_data(auto).resolved["resident"]  # no device named: the loaders
    assert not build_data(folder(root, "data.resident=false"), device="cpu").resolved["resident"]
    monkeypatch.setattr(registry, "RESIDENT_CAP_MIB", 0.001)  # 1 KiB: the tree (27 x 144 bytes) is over it
    with caplog.at_level(logging.INFO, logger="dsr_tune.data"):
        bundle = build_data(auto, device="cpu")
    assert not bundle.resolved["resident"]
    assert [r.message for r in caplog.records if "data.resident=auto" in r.message] == [
        "data.resident=auto: folder takes 0.0 MiB decoded, over the 0.0 MiB it may take on cpu: batches are "
        "loaded from the files"]
    with pytest.raises(C.ConfigError, match=r"^data.resident: true: folder under .* over the cap"):
        check(folder(root, "data.resident=true"))  # before any work: the sizes come from the listing


@pytest.mark.parametrize("keys,message", [
    (["data.name=imagenet", "data.root=/x"], "'imagenet' is never resident"),
    (["data.name=folder", "data.root=/x", "data.image_size=8", "data.random_resized_crop=true"],
     "random-resized crops"),
])
def test_true_where_it_cannot_be_is_refused(keys, message):
    with pytest.raises(C.ConfigError, match=f"^data.resident: true: .*{message}.*; use auto or false$"):
        C.load(None, keys + ["data.resident=true"])
    check_keys(C.load(None, keys).data)  # auto is fine there: it means false


def test_keys_documents_resident():
    text = C.describe("data")
    assert "resident = 'auto'" in text and "2048 MiB" in text and "imagenet" in text
