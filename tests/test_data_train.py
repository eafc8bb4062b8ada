"""The data layer inside the trainer: validation metrics, resolved choices
in config.yaml, the decode=gpu path and skipped files in the epoch record."""

import pytest
from datafiles import write_tree

from dsr_tune import config as C
from dsr_tune.train import train
from dsr_tune.runfolder import read_records

TINY = ["model.name=small_cnn", "model.width=0.25", "sparsity.method=dense", "train.epochs=2",
        "data.batch_size=4", "data.eval_batch_size=8", "data.loader_workers=0", "optim.lr=0.01"]


@pytest.mark.parametrize("decode,resident", [("cpu", False), ("gpu", False), ("cpu", True)])
def test_folder_run_records_val_and_bad_images(tmp_path, decode, resident):
    root = write_tree(tmp_path / "data", classes=2, per_class=10, size=(20, 20), channels=1)
    victim = sorted((root / "train" / "class0").iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 4 // 5])  # passes the pre-check, fails to decode
    cfg = C.load(None, TINY + ["data.name=folder", f"data.root={root}", "data.image_size=12",
                               "data.val_fraction=0.2", "data.skip_bad_images=true", f"data.decode={decode}",
                               f"data.resident={str(resident).lower()}"])
    last = train(cfg, tmp_path / "run")
    epochs = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for r in epochs:
        assert {"val_loss", "val_acc", "test_loss", "test_acc"} <= set(r) and "val_acc5" not in r  # 2 classes
        assert 0 <= r["val_acc"] <= 1
    # the broken file is in the train part (16 of 20) or the validation part: seen once an epoch either way
    assert [r["bad_images"] for r in epochs] == [1, 1]
    assert last["test_acc"] == epochs[-1]["test_acc"]
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "#     channels: 1" in text and "#     val_fraction: 0.2" in text
    assert f"#     resident: {str(resident).lower()}" in text
    assert C.load(tmp_path / "run" / "config.yaml").flat() == cfg.flat()  # the keys stay as given


def test_digits_run_has_val_and_test_top5(tmp_path):
    cfg = C.load(None, ["train.epochs=1", "sparsity.method=dense", "model.width=0.25", "data.batch_size=64"])
    last = train(cfg, tmp_path)
    assert {"val_acc", "val_acc5", "test_acc", "test_acc5"} <= set(last) and last["bad_images"] == 0
