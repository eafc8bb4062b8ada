"""Bad data inputs are refused before any work, in one line naming the path or key."""

import shutil
import subprocess
import sys

import pytest
from datafiles import write_cifar, write_tree

from dsr_tune import config as C
from dsr_tune import data
from dsr_tune.data.checks import check
from dsr_tune.data.registry import OPTIONAL

FOLDER = ["data.name=folder", "data.image_size=16"]


def refused(keys, key="data.root"):
    """The ConfigError C.load raises for ``keys``: its key and one-line message."""
    with pytest.raises(C.ConfigError) as exc:
        C.check_paths(C.load(None, keys))  # the keys on their own, then the files (explicit)
    message = str(exc.value)
    assert exc.value.key == key and "\n" not in message, message
    return message


def test_folder_root_missing(tmp_path):
    assert f"'{tmp_path / 'nope'}' does not exist" in refused(FOLDER + [f"data.root={tmp_path / 'nope'}"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_folder_without_a_split(tmp_path, split):
    write_tree(tmp_path)
    shutil.rmtree(tmp_path / split)
    message = refused(FOLDER + [f"data.root={tmp_path}"])
    assert f"has no {split}/ folder" in message and str(tmp_path) in message


def test_class_folder_without_images(tmp_path):
    write_tree(tmp_path)
    for f in (tmp_path / "train" / "class1").iterdir():
        f.unlink()
    (tmp_path / "train" / "class1" / "notes.txt").write_text("not an image")
    assert f"{tmp_path}/train/class1/ holds no image" in refused(FOLDER + [f"data.root={tmp_path}"])


def test_val_without_images(tmp_path):
    write_tree(tmp_path)
    for f in (tmp_path / "val").rglob("*.jpg"):
        f.unlink()
    assert f"{tmp_path}/val/ holds no image" in refused(FOLDER + [f"data.root={tmp_path}"])


def test_single_class_is_refused(tmp_path):
    write_tree(tmp_path, classes=1)
    message = refused(FOLDER + [f"data.root={tmp_path}"])
    assert f"{tmp_path}/train/ needs at least 2 class folders, found only 'class0'" in message


def test_train_and_val_with_different_classes_name_them(tmp_path):
    write_tree(tmp_path, classes=3)
    (tmp_path / "val" / "class2").rename(tmp_path / "val" / "extra")
    message = refused(["data.name=imagenet", f"data.root={tmp_path}"])
    assert "only in train/: class2; only in val/: extra" in message and str(tmp_path) in message


def test_unreadable_image_in_a_small_folder_is_named(tmp_path):
    write_tree(tmp_path)
    bad = tmp_path / "val" / "class2" / "1.jpg"
    bad.write_bytes(b"this is not a JPEG")
    message = refused(FOLDER + [f"data.root={tmp_path}"])
    assert f"unreadable image {bad} " in message and "skip_bad_images" in message
    C.load(None, FOLDER + [f"data.root={tmp_path}", "data.skip_bad_images=true"])  # accepted: dropped in training


def test_cifar10_without_batches(tmp_path):
    message = refused(["data.name=cifar10", f"data.root={tmp_path}"])
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and "download" in message
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    message = refused(["data.name=cifar10", f"data.root={tmp_path}"])
    assert "lacks data_batch_3" in message and str(tmp_path / "cifar-10-batches-py") in message
    C.load(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.download=true"])  # torchvision fetches


@pytest.mark.parametrize("keys,key,words", [
    (["data.name=cifar10", "data.download=true", "data.decode=gpu"], "data.decode", "imagenet or folder, not 'cifar10'"),
    (["data.decode=gpu"], "data.decode", "not 'digits'"),
    (["data.hflip=true"], "data.hflip", "not 'digits'"),
    (["data.name=cifar10", "data.download=true", "data.random_resized_crop=true"], "data.random_resized_crop",
     "imagenet or folder"),
    (["data.channels=3"], "data.channels", "'digits' has 1 channel"),
    (["data.channels=2"], "data.channels", "must be one of 0, 1 or 3"),
    (["data.name=cifar10", "data.download=true", "data.mean=[0.5]"], "data.std", "give both"),
    (["data.mean=[0.5]", "data.std=[0.2]"], "data.mean", "not 'digits'"),
    (["data.name=cifar10", "data.download=true", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.2]"], "data.std",
     "1 values but data.mean has 3"),
    (["data.name=cifar10", "data.download=true", "data.mean=[0.5]", "data.std=[0.2]"], "data.mean",
     "1 values for 3 channel"),
    (["data.name=cifar10", "data.download=true", "data.std=[0.2, 0, 0.2]", "data.mean=[0, 0, 0]"], "data.std",
     "must be > 0"),
    (["data.name=cifar10", "data.download=true", "data.mean=[0.1, 0.2]", "data.std=[1, 1]"], "data.mean",
     "1 or 3 numbers"),
])
def test_inconsistent_keys(tmp_path, keys, key, words):
    assert words in refused([f"data.root={tmp_path}", *keys], key)


def test_mean_length_must_match_forced_or_inferred_channels(tmp_path):
    write_tree(tmp_path)
    message = refused(FOLDER + [f"data.root={tmp_path}", "data.channels=1", "data.mean=[0.5, 0.5, 0.5]",
                                "data.std=[0.2, 0.2, 0.2]"], "data.mean")
    assert "3 values for 1 channel(s) (data.channels)" in message
    write_tree(tmp_path / "grey", channels=1, ext="png")
    message = refused(FOLDER + [f"data.root={tmp_path / 'grey'}", "data.mean=[0.5, 0.5, 0.5]",
                                "data.std=[0.2, 0.2, 0.2]"], "data.mean")
    assert f"images under {tmp_path / 'grey'}/train/ are grey (1 channel)" in message


def test_imagenet_crop_padding_would_be_ignored_by_its_random_resized_crop(tmp_path):
    write_tree(tmp_path)
    assert "true by default for imagenet" in refused(
        ["data.name=imagenet", f"data.root={tmp_path}", "data.crop_padding=4"], "data.crop_padding")
    C.load(None, ["data.name=imagenet", f"data.root={tmp_path}", "data.crop_padding=4",
                  "data.random_resized_crop=false"])


def test_check_runs_on_the_config_section_without_torch(tmp_path):
    """The CLI's pre-check: dsr_tune.data.checks imports neither torch nor
    torchvision, and check() takes the DataConfig alone."""
    write_tree(tmp_path)
    code = (f"import sys; from dsr_tune import config as C; from dsr_tune.data.checks import check; "
            f"d = C.DataConfig(name='folder', root={str(tmp_path)!r}, image_size=16); check(d); "
            f"(d.__setattr__('root', {str(tmp_path / 'gone')!r})); "
            f"exec('try:\\n check(d)\\nexcept C.ConfigError as e: print(e)'); "
            f"print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import socket

    assert out.splitlines() == [f"data.root: '{tmp_path / 'gone'}' does not exist on {socket.gethostname()}; "
                                "expected a folder with "
                                "train/ and val/ class folders", "[]"]
    check(C.DataConfig())  # digits: nothing on disk to check


@pytest.mark.parametrize("name", list(data.REGISTRY))
def test_every_data_set_takes_the_keys_it_reads_and_refuses_the_others(name):
    """The registry's ``reads`` is what the checks enforce: a key a data set does not
    read, set away from its neutral value, is refused in one line naming it."""
    entry = data.REGISTRY[name]
    base = [f"data.name={name}", "data.root=/nowhere", "data.image_size=16"]  # keys only: no file is read
    mean = [0.5] * (entry.channels or 3)
    values = {"decode": "gpu", "random_resized_crop": False, "skip_bad_images": True, "mean": mean, "std": mean,
              "hflip": True, "crop_padding": 0}
    assert set(values) == set(OPTIONAL) and all(values[k] != v for k, v in OPTIONAL.items())
    for key, value in values.items():
        keys = [f"data.{key}={value}"]
        if key in entry.reads:
            partner = {"mean": "std", "std": "mean"}.get(key)  # one needs the other
            C.load(None, base + keys + ([f"data.{partner}={mean}"] if partner else []))
        else:
            with pytest.raises(C.ConfigError) as exc:
                C.load(None, base + keys)
            assert exc.value.key == f"data.{key}" and f"not {name!r}" in str(exc.value)
