"""Data loaders, on small files the tests write in the formats users have."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dsr_tune import config as C
from dsr_tune.data import build_data
from torchvision.datasets import CIFAR10


def write_cifar(root, n_train=20, n_test=10):
    """The CIFAR-10 python layout: cifar-10-batches-py/data_batch_1..5, test_batch."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
    for i in range(1, 6):
        pickle.dump(batch(n_train // 5), open(d / f"data_batch_{i}", "wb"))
    pickle.dump(batch(n_test), open(d / "test_batch", "wb"))
    pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(d / "batches.meta", "wb"))


def write_tree(root, classes=3, per_class=4, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def test_cifar10_loader_on_generated_files(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    # our files are not the real ones, so torchvision's md5 check must be bypassed
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    cfg = C.load(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.batch_size=4", "data.loader_workers=0"])
    bundle = build_data(cfg.data, seed=0)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert bundle.num_classes == 10 and len(bundle.test.dataset) == 10 and len(bundle.train.dataset) == 20
    # augmentation: the same image twice gives different crops/flips, test images are fixed
    ds = bundle.train.dataset
    torch.manual_seed(0)
    assert any(not torch.equal(ds[0][0], ds[0][0]) for _ in range(5))
    assert torch.equal(bundle.test.dataset[0][0], bundle.test.dataset[0][0])


def test_cifar10_missing_is_refused_before_work(tmp_path):
    with pytest.raises(C.ConfigError) as exc:
        C.check_paths(C.load(None, ["data.name=cifar10", f"data.root={tmp_path}"]))
    assert exc.value.key == "data.root" and "download" in str(exc.value)


@pytest.mark.parametrize("name,size,expected", [("imagenet", 64, 64), ("folder", 24, 24)])
def test_image_folder_trees(tmp_path, name, size, expected):
    write_tree(tmp_path)
    cfg = C.load(None, [f"data.name={name}", f"data.root={tmp_path}", f"data.image_size={size}",
                        "data.batch_size=4", "data.loader_workers=2"])
    bundle = build_data(cfg.data, seed=0)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, expected, expected) and set(y.tolist()) <= {0, 1, 2}
    xs, ys = next(iter(bundle.test))
    assert xs.shape == (12, 3, expected, expected) and sorted(ys.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert bundle.num_classes == 3 and bundle.train.num_workers == 2


def test_folder_tree_without_val_is_refused(tmp_path):
    write_tree(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(C.ConfigError, match="val/"):
        C.check_paths(C.load(None, ["data.name=folder", f"data.root={tmp_path}", "data.image_size=32"]))


def test_digits_fixed_split_and_sharding():
    cfg = C.load(None, ["data.batch_size=10"])
    a, b = build_data(cfg.data, seed=0), build_data(cfg.data, seed=5)
    assert len(a.train.dataset) + len(a.test.dataset) == 1797 and len(a.test.dataset) == 359
    assert torch.equal(a.test.dataset.tensors[0], b.test.dataset.tensors[0])  # same test set for every seed
    r0 = build_data(cfg.data, seed=0, rank=0, world_size=2)
    r1 = build_data(cfg.data, seed=0, rank=1, world_size=2)
    assert r0.train.batch_size == 5 and len(r0.test.dataset) + len(r1.test.dataset) == 359
    i0, i1 = set(iter(r0.train_sampler)), set(iter(r1.train_sampler))
    assert not (i0 & i1)  # disjoint shards
    assert len(r0.train) == len(r1.train)  # same number of steps on every rank (DDP would hang otherwise)


def test_digits_read_directly_equal_scikit_learns(monkeypatch):
    """The digits are read from scikit-learn's file without importing it; the
    result must be load_digits' exactly, and load_digits is the fallback."""
    from sklearn.datasets import load_digits

    from dsr_tune.data import tensors

    ref = load_digits()
    images, target = tensors._load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)
    monkeypatch.setattr(tensors.importlib.util, "find_spec", lambda name: None)  # file not found: fallback
    images, target = tensors._load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    cfg = C.load(None, ["data.batch_size=10"])
    order = {}
    for attempt in range(2):
        bundle = build_data(cfg.data, seed=3)
        for epoch in (0, 1):
            bundle.set_epoch(epoch, seed=3)
            order[attempt, epoch] = torch.cat([y for _, y in bundle.train])
    assert torch.equal(order[0, 1], order[1, 1]) and torch.equal(order[0, 0], order[1, 0])
    assert not torch.equal(order[0, 0], order[0, 1])
    for rank in (0, 1):  # the same under DDP's sampler
        a, b = build_data(cfg.data, seed=3, rank=rank, world_size=2), build_data(cfg.data, seed=3, rank=rank, world_size=2)
        a.set_epoch(4, seed=3)
        b.set_epoch(4, seed=3)
        assert list(iter(a.train_sampler)) == list(iter(b.train_sampler))
