"""Data loaders, on small files the tests write in the formats users have."""

import numpy as np
import pytest
import torch
from conftest import DIGITS, package_copy, readme_block, run_python
from datafiles import write_cifar, write_tree

from dsr_tune import config as C
from dsr_tune.data import build_data, resolve, split_indices
from torchvision import transforms as T
from torchvision.datasets import CIFAR10


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    # our files are not the real ones, so torchvision's md5 check must be bypassed
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    return tmp_path


def test_cifar10_loader_on_generated_files(fake_cifar):
    cfg = C.load(None, ["data.name=cifar10", f"data.root={fake_cifar}", "data.batch_size=4", "data.loader_workers=0"])
    bundle = build_data(cfg.data, seed=0)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    # 20 training images: 2 (10%) held out as validation, with the test transform
    assert bundle.num_classes == 10 and len(bundle.test.dataset) == 10
    assert len(bundle.train.dataset) == 18 and len(bundle.val.dataset) == 2
    assert torch.equal(bundle.val.dataset[0][0], bundle.val.dataset[0][0])
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
    x, y = bundle.to_device(next(iter(bundle.train)), "cpu")
    assert x.shape == (4, 3, expected, expected) and set(y.tolist()) <= {0, 1, 2}
    xs, ys = bundle.to_device(next(iter(bundle.test)), "cpu")
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
    assert len(a.train.dataset) + len(a.val.dataset) + len(a.test.dataset) == 1797 and len(a.test.dataset) == 359
    assert torch.equal(a.test.dataset.tensors[0], b.test.dataset.tensors[0])  # same test set for every seed
    r0 = build_data(cfg.data, seed=0, rank=0, world_size=2)
    r1 = build_data(cfg.data, seed=0, rank=1, world_size=2)
    assert r0.train.batch_size == 5 and len(r0.test.dataset) + len(r1.test.dataset) == 359
    assert len(r0.val.dataset) + len(r1.val.dataset) == len(a.val.dataset) == 144
    i0, i1 = set(iter(r0.train_sampler)), set(iter(r1.train_sampler))
    assert not (i0 & i1)  # disjoint shards
    assert len(r0.train) == len(r1.train)  # same number of steps on every rank (DDP would hang otherwise)


def test_digits_read_directly_equal_scikit_learns(monkeypatch):
    """The digits are read from scikit-learn's file without importing it; the
    result must be load_digits' exactly, and load_digits is the fallback."""
    from sklearn.datasets import load_digits

    from dsr_tune.data import tensors

    ref = load_digits()
    tensors._load_digits.cache_clear()  # cached: read the file now
    images, target = tensors._load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)
    monkeypatch.setattr(tensors.importlib.util, "find_spec", lambda name: None)  # file not found: fallback
    tensors._load_digits.cache_clear()
    images, target = tensors._load_digits()
    tensors._load_digits.cache_clear()  # later tests read the file again
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


# ---------------------------------------------------------------- defaults and the validation split


def test_cifar10_defaults_are_the_papers_augmentation(fake_cifar):
    """Default keys build exactly today's transforms: pad 4 reflect + crop 32,
    flip, CIFAR's constants; the same image and seed give the same tensor."""
    cfg = C.load(None, ["data.name=cifar10", f"data.root={fake_cifar}", "data.loader_workers=0"])
    r = resolve(cfg.data)
    assert (r["hflip"], r["crop_padding"], r["random_resized_crop"], r["val_fraction"]) == (True, 4, False, 0.1)
    assert r["mean"] == [0.4914, 0.4822, 0.4465] and r["std"] == [0.2470, 0.2435, 0.2616] and r["channels"] == 3
    reference = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    train = build_data(cfg.data).train.dataset
    img, _ = train.base[train.indices[0]]
    for seed in range(4):
        torch.manual_seed(seed)
        ours = train[0][0]
        torch.manual_seed(seed)
        assert torch.equal(ours, reference(img))
    # keys change it: no flip, no padding -> the training image is the test-time one
    plain = build_data(C.load(None, ["data.name=cifar10", f"data.root={fake_cifar}", "data.hflip=false",
                                     "data.crop_padding=0"]).data).train.dataset
    assert torch.equal(plain[0][0], T.Compose(reference.transforms[2:])(img))


def test_split_indices_fixed_disjoint_and_sized():
    tr, va = split_indices(1000, 0.1)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va) and sorted(tr + va) == list(range(1000))
    assert (tr, va) == split_indices(1000, 0.1)  # no hidden state
    assert va != split_indices(1000, 0.2)[1][:100]  # a real shuffle, not the first items
    assert split_indices(1_281_167, 0.01)[1].__len__() == 12_812  # ImageNet's 1% slice
    assert split_indices(5, 0.0) == ([0, 1, 2, 3, 4], []) and len(split_indices(4, 0.1)[1]) == 1


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_val_split_same_for_every_seed_and_sharded_exactly(name):
    cfg = C.load(None, [f"data.name={name}", "data.batch_size=8"])
    a, b = build_data(cfg.data, seed=0), build_data(cfg.data, seed=7)
    assert a.val.dataset.indices == b.val.dataset.indices  # train.seed does not move the slice
    assert not set(a.val.dataset.indices) & set(a.train.dataset.indices)
    n = len(a.train.dataset) + len(a.val.dataset)
    assert len(a.val.dataset) == round(0.1 * n)
    shards = [build_data(cfg.data, seed=0, rank=r, world_size=2) for r in (0, 1)]
    ys = [torch.cat([s.to_device(batch, "cpu")[1] for batch in s.val]) for s in shards]
    full = torch.cat([y for _, y in a.val])
    assert len(ys[0]) + len(ys[1]) == len(full)  # strided, no padding: exact counts
    assert torch.equal(torch.stack([ys[0][: len(ys[1])], ys[1]], 1).flatten(), full[: 2 * len(ys[1])])
    assert len(shards[0].train) == len(shards[1].train)  # equal steps on every rank


def test_val_fraction_zero_means_no_validation_loader():
    bundle = build_data(C.load(None, ["data.val_fraction=0"]).data)
    assert bundle.val is None and len(bundle.train.dataset) == 1797 - 359
    with pytest.raises(C.ConfigError, match="data.val_fraction"):
        C.load(None, ["data.val_fraction=0.7"])


def test_the_readme_s_new_data_set_is_one_file_and_one_import(tmp_path):
    """README's "Adding a data set", as written: its file and its import line in a copy of the
    package give a data.name choice that `dsr-tune keys` lists and a run trains on."""
    path = package_copy(tmp_path, {"data/mine.py": readme_block("Write `dsr_tune/data/mine.py`:")},
                        {"data/__init__.py": (r"from \. import sets(?=  #)", "from . import sets, mine")})
    script = f"""
from dsr_tune import config as C, data
from dsr_tune.train import train
assert list(data.REGISTRY)[-1] == "mine"
for bad in (["data.name=yours"], ["data.name=mine", "data.hflip=true"]):
    try:
        C.load({DIGITS!r}, bad)
    except C.ConfigError as exc:
        print("refused:", exc)
cfg = C.load({DIGITS!r}, ["data.name=mine", "train.epochs=1", "optim.milestones=[]", "sparsity.stop_epoch=1",
                          "sparsity.period_schedule=[[0, 10]]", "train.threads=1"])
record = train(cfg, {str(tmp_path / 'run')!r}, progress=False)
print("trained", record["epoch"], data.resolve(cfg.data))
print(C.describe("data"))
"""
    out = run_python(script, path)
    assert "refused: data.name: 'yours' must be one of 'digits', 'cifar10', 'imagenet', 'folder', 'synthetic' or 'mine'" in out
    assert "refused: data.hflip: True applies to data.name=cifar10 or imagenet or folder, not 'mine'" in out
    assert "trained 0 {'name': 'mine', 'image_size': 8, 'channels': 1," in out
    assert "name = 'digits'  # the data set: digits, cifar10, imagenet, folder, synthetic, mine" in out
