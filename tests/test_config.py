"""Config validation: every bad key or value is refused with status 2, naming the key."""

import subprocess
import sys

import pytest
import yaml

from dsr_tune import cli, config as C

from conftest import DIGITS, ROOT

BAD = [  # (overrides, key that must be named)
    (["bogus.key=1"], "bogus"),
    (["model.nmae=wrn"], "model.nmae"),
    (["sparsity.sparsity=1.5"], "sparsity.sparsity"),
    (["sparsity.sparsity=-0.1"], "sparsity.sparsity"),
    (["sparsity.sparsity=1.0"], "sparsity.sparsity"),
    (["sparsity.sparsity=high"], "sparsity.sparsity"),
    (["sparsity.dsr.delta=1.2"], "sparsity.dsr.delta"),
    (["sparsity.dsr.delta=-0.5"], "sparsity.dsr.delta"),
    (["sparsity.period_schedule=[[0, 0]]"], "sparsity.period_schedule"),
    (["sparsity.period_schedule=[[5, 100]]"], "sparsity.period_schedule"),
    (["sparsity.period_schedule=[[0, 100], [0, 200]]"], "sparsity.period_schedule"),
    (["sparsity.period_schedule=100"], "sparsity.period_schedule"),
    (["sparsity.period_scale=0"], "sparsity.period_scale"),
    (["sparsity.method=magic"], "sparsity.method"),
    (["sparsity.dsr.init_threshold=0"], "sparsity.dsr.init_threshold"),
    (["sparsity.dsr.target_pruned=0"], "sparsity.dsr.target_pruned"),
    (["sparsity.dsr.target_pruned=1.5"], "sparsity.dsr.target_pruned"),
    (["train.epochs=0"], "train.epochs"),
    (["train.epochs=ten"], "train.epochs"),
    (["train.device=tpu"], "train.device"),
    (["train.precision=int8"], "train.precision"),
    (["train.precision=fp16", "train.device=cpu"], "train.precision"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.momentum=1.0"], "optim.momentum"),
    (["optim.milestones=[20, 10]"], "optim.milestones"),
    (["optim.milestones=[-1, 10]"], "optim.milestones"),
    (["data.name=mnist"], "data.name"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.name=cifar10", "data.root=/nonexistent/cifar"], "data.root"),
    (["data.name=imagenet", "data.root=/nonexistent/imagenet"], "data.root"),
    (["data.name=folder"], "data.root"),
    (["data.download=true"], "data.download"),
    (["model.depth=27", "model.name=wrn"], "model.depth"),
    (["model.width=0"], "model.width"),
    (["model.sparse_layers=conv*"], "model.sparse_layers"),
    (["train.seed=-3"], "train.seed"),
    (["sparsity"], "sparsity"),
    (["sparsity.nested.key=1"], "sparsity.nested.key"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_refused_with_status_2(overrides, key, tmp_path, capsys):
    code = cli.main(["train", DIGITS, *overrides, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and key in err, err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bad_yaml_file_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert cli.main(["train", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_exit_status_and_message_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dsr_tune.cli", "train", DIGITS, "sparsity.sparsity=2"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "dsr-tune: error: config sparsity.sparsity: 2.0 must be in [0, 1)"


def test_did_you_mean():
    with pytest.raises(C.ConfigError, match=r"did you mean sparsity\.sparsity"):
        C.load(None, ["sparsity.sparsty=0.5"])


def test_resolved_config_round_trips(tmp_path):
    cfg = C.load(DIGITS, ["sparsity.sparsity=0.8", "optim.lr=1e-2"])
    assert cfg.sparsity.sparsity == 0.8 and cfg.optim.lr == 0.01
    again = C.from_dict(yaml.safe_load(C.dump(cfg)))
    assert again == cfg


def test_shipped_configs_validate(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        data = C.read_yaml(path)
        data.setdefault("data", {})
        if data["data"].get("name") == "cifar10":
            data["data"]["download"] = True  # no copy here; the rest is still validated
        if data["data"].get("name") in ("imagenet", "folder"):
            data["data"]["root"] = str(tmp_path)  # an empty train/ val/ tree
        C.from_dict(data)
