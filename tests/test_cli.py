"""The command line as its users expect it, and bad input refused at its door.

Conventions: key=value overrides anywhere, --version, a description for every
subcommand, ``keys SECTION``, the first line before the heavy imports.
Bad input: a corpus of distinct bad inputs through the real CLI (configs,
overrides, search spaces, data folders, run folders, files of the wrong kind,
options), each refused with exit 2, one line, no traceback, nothing created.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from dsr_tune import cli

from conftest import DEMO, DIGITS


def test_overrides_go_anywhere_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", DIGITS, "--output", str(out), "train.epochs=2", "optim.milestones=[]",
            "sparsity.period_schedule=[[0, 15]]", "sparsity.stop_epoch=2", "model.width=0.5"]
    assert cli.main(argv) == 0
    saved = (out / "config.yaml").read_text()
    assert "epochs: 2" in saved and "width: 0.5" in saved


def test_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", DIGITS, "--bogus-flag"])
    assert exc.value.code == 2 and "--bogus-flag" in capsys.readouterr().err


def test_version_and_a_description_for_every_subcommand(capsys):
    import dsr_tune

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"dsr-tune {dsr_tune.__version__}"
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) >= {"train", "keys", "compare", "export", "sweep", "report", "sync", "ui", "dashboard"}
    for name, p in sub.choices.items():
        assert p.description and len(p.description) > 40, name


def test_keys_of_one_section(capsys):
    assert cli.main(["keys", "sparsity"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sparsity:") and "dsr.delta" in out and "optim" not in out.split("\n", 1)[1][:200]
    assert cli.main(["keys", "nope"]) == 2


def test_the_first_line_comes_before_the_heavy_imports(tmp_path):
    """A long command says what it starts within a second, before torch loads."""
    proc = subprocess.Popen([sys.executable, "-m", "dsr_tune.cli", "train", DIGITS, "train.epochs=1",
                             "optim.milestones=[]", "sparsity.period_schedule=[[0, 15]]", "sparsity.stop_epoch=1",
                             "--output", str(tmp_path / "run")], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    t0 = time.perf_counter()
    first = proc.stderr.readline()
    took = time.perf_counter() - t0
    proc.communicate(timeout=300)
    assert "train dsr at sparsity 0.9" in first and "starting" in first, first
    # the interpreter start and the config's validation only (torch alone takes longer than this)
    assert took < 5.0, took
    assert "sparsity 0.9" in first


# ------------------------------------------------------------------ bad input, refused at the door


def _files(tmp: Path) -> dict[str, Path]:
    """The bad files the corpus uses (made before the command runs: not counted as created)."""
    f = {}
    for name, text in {"empty.yaml": "", "list.yaml": "- a\n- b\n", "broken.yaml": "model: [unclosed\n",
                       "scalar.yaml": "42\n", "section_list.yaml": "model: [1, 2]\n",
                       "unknown_section.yaml": "modle: {name: wrn}\n", "nested_unknown.yaml": "model: {nmae: wrn}\n",
                       "tabs.yaml": "model:\n\tname: wrn\n", "space_empty.yaml": "",
                       "space_list.yaml": "- 1\n", "space_nobase.yaml": "name: x\n",
                       "space_badbase.yaml": "base: nowhere.yaml\n"}.items():
        f[name] = tmp / name
        f[name].write_text(text)
    f["binary.yaml"] = tmp / "binary.yaml"
    f["binary.yaml"].write_bytes(bytes(range(256)) * 4)
    f["picture.yaml"] = tmp / "picture.yaml"
    Image.new("L", (4, 4)).save(f["picture.yaml"], format="PNG")
    f["ckpt.yaml"] = tmp / "ckpt.yaml"
    torch.save({"model": {}}, f["ckpt.yaml"])
    f["dir"] = tmp / "adir"
    f["dir"].mkdir()
    # data trees
    for tree, classes in {"one_class": ["a"], "mismatch": ["a", "b"], "noimages": ["a", "b"],
                          "corrupt": ["a", "b"]}.items():
        for split in ("train", "val"):
            for c in classes if not (tree == "mismatch" and split == "val") else ["a", "c"]:
                d = tmp / tree / split / c
                d.mkdir(parents=True)
                if tree != "noimages":
                    for i in range(2):
                        Image.new("L", (8, 8), color=i * 40).save(d / f"{i}.png")
    (tmp / "corrupt" / "train" / "a" / "0.png").write_bytes(b"not a png at all")
    (tmp / "notrain" / "val" / "a").mkdir(parents=True)
    f["norun"] = tmp / "norun"  # an empty folder: no run in it
    f["norun"].mkdir()
    (tmp / "notsweep").mkdir()
    (tmp / "notsweep" / "file.txt").write_text("x")
    return f


def _fake_store(tmp: Path) -> str:
    """An sqlite file with MLflow's experiments table, holding one experiment (no mlflow import)."""
    import sqlite3

    db = tmp / "fake.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
        con.execute("INSERT INTO experiments VALUES (0, 'Default', 'active')")
    return str(db)


CFG = lambda *o: ["train", DIGITS, *o]  # noqa: E731
TREE = lambda t, tree: ["train", DIGITS, "data.name=folder", f"data.root={t / tree}", "data.image_size=8",  # noqa: E731
                        "data.channels=1"]

BAD = {  # id: (argv builder of the tmp folder and its files, a word the one line must hold)
    "empty config": (lambda t, f: ["train", str(f["empty.yaml"])], "is empty"),
    "list config": (lambda t, f: ["train", str(f["list.yaml"])], "not a mapping"),
    "malformed yaml": (lambda t, f: ["train", str(f["broken.yaml"])], "not valid YAML"),
    "scalar yaml": (lambda t, f: ["train", str(f["scalar.yaml"])], "not a mapping"),
    "tab yaml": (lambda t, f: ["train", str(f["tabs.yaml"])], "not valid YAML"),
    "binary config": (lambda t, f: ["train", str(f["binary.yaml"])], "binary.yaml"),
    "png as config": (lambda t, f: ["train", str(f["picture.yaml"])], "picture.yaml"),
    "checkpoint as config": (lambda t, f: ["train", str(f["ckpt.yaml"])], "ckpt.yaml"),
    "folder as config": (lambda t, f: ["train", str(f["dir"])], "adir"),
    "missing config": (lambda t, f: ["train", str(t / "nope.yaml")], "does not exist"),
    "section a list": (lambda t, f: ["train", str(f["section_list.yaml"])], "model"),
    "unknown section": (lambda t, f: ["train", str(f["unknown_section.yaml"])], "modle"),
    "nested unknown key": (lambda t, f: ["train", str(f["nested_unknown.yaml"])], "model.nmae"),
    "override without =": (lambda t, f: CFG("sparsity"), "sparsity"),
    "override empty key": (lambda t, f: CFG("=3"), "="),
    "override not section.key": (lambda t, f: CFG("epochs=3"), "epochs"),
    "moved key delta": (lambda t, f: CFG("sparsity.delta=0.2"), "sparsity.dsr.delta"),
    "moved key gmp_steps": (lambda t, f: CFG("sparsity.gmp_steps=3"), "sparsity.gmp.steps"),
    "moved key thin_match": (lambda t, f: CFG("sparsity.thin_match=storage"), "sparsity.thin_dense.match"),
    "moved key deepr_l1": (lambda t, f: CFG("sparsity.deepr_l1=0.1"), "sparsity.deepr.l1"),
    "stop epoch beyond epochs": (lambda t, f: CFG("sparsity.stop_epoch=99"), "sparsity.stop_epoch"),
    "stop epoch beyond, deepr": (lambda t, f: CFG("sparsity.method=deepr", "sparsity.stop_epoch=99"),
                                 "sparsity.stop_epoch"),  # deepr does not read it: refused all the same
    "period start beyond, dense": (lambda t, f: CFG("sparsity.method=dense", "sparsity.period_schedule=[[0, 5], "
                                                    "[40, 9]]"), "sparsity.period_schedule"),
    "period start beyond epochs": (lambda t, f: CFG("sparsity.period_schedule=[[0, 5], [40, 9]]"),
                                   "sparsity.period_schedule"),
    "milestone beyond epochs": (lambda t, f: CFG("optim.milestones=[15, 31]"), "optim.milestones"),
    "deepr temperature beyond": (lambda t, f: CFG("sparsity.method=deepr", "sparsity.deepr.temperatures=[[0, 1e-5], "
                                                  "[50, 1e-8]]"), "sparsity.deepr.temperatures"),
    "stop_after beyond": (lambda t, f: CFG("train.stop_after=31"), "train.stop_after"),
    "warmup beyond": (lambda t, f: CFG("optim.warmup_epochs=31"), "optim.warmup_epochs"),
    "sparsity a list": (lambda t, f: CFG("sparsity.sparsity=[0.9]"), "sparsity.sparsity"),
    "seed a float": (lambda t, f: CFG("train.seed=1.5"), "train.seed"),
    "epochs a bool": (lambda t, f: CFG("train.epochs=true"), "train.epochs"),
    "device cuda:x": (lambda t, f: CFG("train.device=cuda:x"), "train.device"),
    "channels 2": (lambda t, f: CFG("data.channels=2"), "data.channels"),
    "mean of 2": (lambda t, f: CFG("data.mean=[0.5, 0.5]", "data.std=[0.2, 0.2]"), "data.mean"),
    "val fraction 0.9": (lambda t, f: CFG("data.val_fraction=0.9"), "data.val_fraction"),
    "decode gpu on digits": (lambda t, f: CFG("data.decode=gpu"), "data.decode"),
    "compile backend": (lambda t, f: CFG("train.compile_backend=magic"), "train.compile_backend"),
    "resident on imagenet": (lambda t, f: CFG("data.name=imagenet", f"data.root={t}", "data.resident=true"),
                             "data.resident"),
    "resident maybe": (lambda t, f: CFG("data.resident=maybe"), "data.resident"),
    "gmp without a dense run": (lambda t, f: CFG("sparsity.method=gmp", "train.epochs=60"), "sparsity.gmp.dense_from"),
    "mask_from not a run": (lambda t, f: CFG("sparsity.method=static", f"sparsity.mask_from={f['norun']}"),
                            "sparsity.mask_from"),
    "init_from not a run": (lambda t, f: CFG(f"sparsity.init_from={f['norun']}"), "sparsity.init_from"),
    "mask_from for dense": (lambda t, f: CFG("sparsity.method=dense", f"sparsity.mask_from={f['norun']}"),
                            "sparsity.mask_from"),
    "folder root missing": (lambda t, f: TREE(t, "nowhere"), "does not exist"),
    "folder without train": (lambda t, f: TREE(t, "notrain"), "train/"),
    "folder single class": (lambda t, f: TREE(t, "one_class"), "2 class folders"),
    "folder classes differ": (lambda t, f: TREE(t, "mismatch"), "different class folders"),
    "folder without images": (lambda t, f: TREE(t, "noimages"), "no image"),
    "folder unreadable image": (lambda t, f: TREE(t, "corrupt"), "0.png"),
    "cifar root empty": (lambda t, f: CFG("data.name=cifar10", f"data.root={f['norun']}", "model.name=wrn"),
                         "cifar-10-batches-py"),
    "resume with another config": (None, "sparsity.sparsity"),  # needs a run: see below
    "export without a run": (lambda t, f: ["export", str(f["norun"])], "checkpoint.pt"),
    "space missing": (lambda t, f: ["sweep", str(t / "nope.yaml")], "does not exist"),
    "space empty": (lambda t, f: ["sweep", str(f["space_empty.yaml"])], "is empty"),
    "space a list": (lambda t, f: ["sweep", str(f["space_list.yaml"])], "not a mapping"),
    "space without base": (lambda t, f: ["sweep", str(f["space_nobase.yaml"])], "base"),
    "space base missing": (lambda t, f: ["sweep", str(f["space_badbase.yaml"])], "base"),
    "space a checkpoint": (lambda t, f: ["sweep", str(f["ckpt.yaml"])], "ckpt.yaml"),
    "space unknown top key": (lambda t, f: ["sweep", DEMO, "basline=1"], "basline"),
    "space selects on test": (lambda t, f: ["sweep", DEMO, "search.metric=test_acc"], "search.metric"),
    "space seeds reuse the trial seed": (lambda t, f: ["sweep", DEMO, "seeds=[0, 3]"], "seeds"),
    "space unknown method": (lambda t, f: ["sweep", DEMO, "methods=[magic]"], "methods"),
    "space unknown key": (lambda t, f: ["sweep", DEMO, "space.sparsity.dsr.delt={uniform: [0.1, 0.2]}"],
                          "space.sparsity.dsr.delt"),
    "space inverted range": (lambda t, f: ["sweep", DEMO, "space.optim.lr={uniform: [0.2, 0.1]}"], "space.optim.lr"),
    "space log range from 0": (lambda t, f: ["sweep", DEMO, "space.optim.lr={loguniform: [0, 0.1]}"],
                               "space.optim.lr"),
    "space continuous sparsity": (lambda t, f: ["sweep", DEMO, "space.sparsity.sparsity={uniform: [0.8, 0.9]}"],
                                  "space.sparsity.sparsity"),
    "space unknown baseline": (lambda t, f: ["sweep", DEMO, "baselines=[statik]"], "baselines"),
    "space tune_baselines not bool": (lambda t, f: ["sweep", DEMO, "tune_baselines=yes please"], "tune_baselines"),
    "space samples 0": (lambda t, f: ["sweep", DEMO, "search.samples=0"], "search.samples"),
    "space asha key": (lambda t, f: ["sweep", DEMO, "search.asha={grace: 2}"], "search.asha"),
    "space key of another method": (lambda t, f: ["sweep", DEMO, "space.sparsity.rigl.drop_fraction={uniform: "
                                                  "[0.1, 0.5]}"], "space.sparsity.rigl.drop_fraction"),
    "report of no sweep": (lambda t, f: ["report", "no_such_sweep"], "no_such_sweep"),
    "report of a plain folder": (lambda t, f: ["report", str(t / "notsweep")], "not a sweep folder"),
    "sync of a plain folder": (lambda t, f: ["sync", str(t / "notsweep")], "not a sweep folder"),
    "dashboard of a plain folder": (lambda t, f: ["dashboard", str(t / "notsweep")], "optuna.db"),
    "ui of a server": (lambda t, f: ["ui", "--tracking-uri", "http://127.0.0.1:1"], "tracking server"),
    "ui store missing": (lambda t, f: ["ui", "--tracking-uri", str(t / "nowhere" / "mlflow.db")], "no such file"),
    "ui store not sqlite": (lambda t, f: ["ui", "--tracking-uri", str(f["list.yaml"])], "not an SQLite"),
    "ui store folder without db": (lambda t, f: ["ui", "--tracking-uri", str(f["dir"])], "holds no mlflow.db"),
    "ui store unknown scheme": (lambda t, f: ["ui", "--tracking-uri", "ftp://host/mlflow.db"], "ftp://"),
    "ui unknown experiment": (lambda t, f: ["ui", "--tracking-uri", _fake_store(t), "--experiment", "nope"],
                              "--experiment nope"),
    "train store unknown scheme": (lambda t, f: CFG("--tracking-uri", "gs://bucket/x"), "gs://"),
    "train store missing": (lambda t, f: CFG("--tracking-uri", "nowhere.db"), "nowhere.db"),
    "sync store missing": (lambda t, f: ["sync", str(t / "notsweep"), "--tracking-uri", "gone.db"], "gone.db"),
    "report store unknown scheme": (lambda t, f: ["report", "x", "--tracking-uri", "ftp://h"], "ftp://"),
    "compare store missing": (lambda t, f: ["compare", DIGITS, "--tracking-uri", str(t / "none")], "none"),
    "sweep store unknown scheme": (lambda t, f: ["sweep", DEMO, "tracking.uri=ftp://h"], "tracking.uri"),
    "train epochs shorter than schedules": (lambda t, f: CFG("train.epochs=3"), "sparsity.period_schedule"),
    "compare seeds 0": (lambda t, f: ["compare", DIGITS, "--seeds", "0"], "--seeds"),
    "compare unknown row": (lambda t, f: ["compare", DIGITS, "--methods", "dsr,magic"], "magic"),
    "compare concurrency -1": (lambda t, f: ["compare", DIGITS, "--concurrency", "-1"], "--concurrency"),
    "compare bad override": (lambda t, f: ["compare", DIGITS, "sparsity.sparsity=1"], "sparsity.sparsity"),
    "plan throughput 0": (lambda t, f: ["sweep", DEMO, "--plan", "--throughput", "0"], "--throughput"),
    "plan throughput negative": (lambda t, f: ["compare", DIGITS, "--plan", "--throughput", "-5"], "--throughput"),
    "throughput without plan": (lambda t, f: ["compare", DIGITS, "--throughput", "100"], "--plan"),
    "plan of a tree not here": (lambda t, f: ["compare", DIGITS, "data.name=folder", f"data.root={t / 'nowhere'}",
                                              "data.image_size=8", "--plan", "--throughput", "100"], "its files"),
}


def test_the_corpus_is_large_and_distinct():
    assert len(BAD) >= 60 and len({k for _, k in BAD.values()}) > 40


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_refused_at_the_door(name, tmp_path, monkeypatch, capsys):
    build, word = BAD[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    files = _files(tmp_path)
    if build is None:  # a run folder whose config differs from the command's
        run = tmp_path / "run"
        assert cli.main(["train", DIGITS, "train.stop_after=1", "--output", str(run)]) == 0
        capsys.readouterr()
        argv = ["train", DIGITS, "sparsity.sparsity=0.8", "--output", str(run), "--resume"]
    else:
        argv = build(tmp_path, files)
        if argv[0] in ("train", "compare") and "--output" not in argv:
            argv += ["--output", str(tmp_path / "out")]
        if argv[0] == "sweep":
            argv += ["--output", str(tmp_path / "out")]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert word in err, (word, err)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"created: {sorted(set(after) - set(before))}"  # nothing made on disk


def test_a_refusal_from_the_console_script_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "dsr_tune.cli", "train", str(bad)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "line 2, column 1" in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
