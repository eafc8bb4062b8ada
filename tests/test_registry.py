"""Tests parametrized over the method registry (timm-style): every registered
method trains, resumes, documents its keys, validates them, and plans as a
comparison row; adding a method to dsr_tune/methods/ brings it under test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsr_tune import checkpoint as ckpt
from dsr_tune import config as C
from dsr_tune import methods
from dsr_tune.sweep import rows as P
from dsr_tune.sweep.params import searchable_methods
from dsr_tune.train import train

from conftest import DIGITS, package_copy, readme_block, run_python
SHORT = ["train.epochs=3", "optim.milestones=[]", "sparsity.period_schedule=[[0, 10]]", "sparsity.stop_epoch=3",
         "sparsity.dsr.target_pruned=100", "data.batch_size=64", "train.threads=1"]
TRAINABLE = [m for m in methods.trainable() if methods.get(m).needs is None]
ROWS = list(methods.REGISTRY)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    train(C.load(DIGITS, [*SHORT, "sparsity.method=dense"]), out, progress=False)
    return out


@pytest.mark.parametrize("name", TRAINABLE)
def test_every_method_trains_keeps_its_budget_and_resumes_exactly(name, tmp_path):
    keys = [*SHORT, f"sparsity.method={name}"]
    straight = train(C.load(DIGITS, keys), tmp_path / "straight", progress=False)
    train(C.load(DIGITS, [*keys, "train.stop_after=2"]), tmp_path / "split", progress=False)
    split = train(C.load(DIGITS, keys), tmp_path / "split", resume=True, progress=False)
    a, b = ckpt.load(tmp_path / "straight"), ckpt.load(tmp_path / "split")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    assert straight["nonzero_params"] == split["nonzero_params"]
    entry = methods.get(name)
    if a["masking"] is not None and entry.kind != "baseline":  # a fixed budget for every sparse method
        masks = a["masking"]["masks"]
        assert sum(int(m.sum()) for m in masks.values()) == a["masking"]["budget"]
        assert all(not a["model"][n][~m].any() for n, m in masks.items())  # inactive weights exactly zero
    assert (a["masking"] is None) == (not entry.masks)


def test_gmp_trains_from_its_dense_parent(dense_run, tmp_path):
    cfg = C.load(DIGITS, [*SHORT, "sparsity.method=gmp", f"sparsity.gmp.dense_from={dense_run}",
                          "sparsity.gmp.steps=1"])
    last = train(cfg, tmp_path, progress=False)
    assert last["nonzero_params"] < last["total_params"]


@pytest.mark.parametrize("name", ROWS)
def test_every_row_plans_and_derives_a_valid_config(name, dense_run, tmp_path):
    entry = methods.get(name)
    label = f"{name}:1" if entry.parametric else name
    cfg = C.load(DIGITS, SHORT)
    rows = P.parse(label, cfg.sparsity.epoch_factor)
    assert rows and all(r.method == name for r in rows)
    assert len(rows) == (2 if entry.controls else 1)  # the controls at 1x and epoch_factor x
    for row in rows:
        parent = dense_run if row.needs else None
        derived = P.row_config(cfg, row, parent)
        assert derived.sparsity.method == entry.trains_as
        assert derived.train.epochs == (round(cfg.train.epochs * row.factor) if name != "gmp" else derived.train.epochs)


@pytest.mark.parametrize("name", [m for m, e in methods.REGISTRY.items() if e.options is not None])
def test_every_method_section_is_documented_and_validated(name):
    entry = methods.get(name)
    described = C.describe("sparsity")
    for field, info in entry.options.model_fields.items():
        assert f"{name}.{field} = " in described and info.description, (name, field)
    with pytest.raises(C.ConfigError, match=rf"sparsity\.{name}\.no_such_key"):
        C.load(None, [f"sparsity.{name}.no_such_key=1"])


@pytest.mark.parametrize("name", searchable_methods())
def test_every_searchable_method_lists_keys_it_really_reads(name):
    entry = methods.get(name)
    for key in entry.searchable:
        C.load(None, [f"sparsity.method={name}"]).flat()  # the method's own config validates
        assert key.startswith("sparsity.") and key in C.load(None, []).flat(), (name, key)


#: method names the library may write outside dsr_tune/methods/, and why ("*": anywhere)
NAMED_ELSEWHERE = {
    ("*", "dsr"): "the method under study: the default sparsity.method, the reference row every paired "
                  "difference is taken against, and a value of Method.needs",
    ("*", "dense"): "the full-network reference row and the other value of Method.needs; also a plain word "
                    "(export's dense tensors, DSD's dense phase, a search space's `dense:` flag)",
    ("sparse/pruning_schedules.py", "gmp"): "GMP's schedule tags its own records (the torch-only core reads no registry)",
    ("sparse/pruning_schedules.py", "dsd"): "DSD's schedule tags its own records (the torch-only core reads no registry)",
    ("sweep/rows.py", "gmp"): "row_config clears sparsity.gmp.dense_from, a link no derived row inherits",
    ("sweep/spec.py", "static"): "a search space's default baselines (the paper's controls)",
    ("sweep/spec.py", "thin_dense"): "a search space's default baselines (the paper's controls)",
}


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module (f-string parts included), but the names in ``__all__``."""
    import ast

    tree = ast.parse(path.read_text())
    exported = {id(n) for a in ast.walk(tree) if isinstance(a, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in a.targets) for n in ast.walk(a.value)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in exported]


def test_every_method_file_registers_itself_and_nothing_else_lists_methods():
    """One file per method: its registration is the only place its name is written (the trainer,
    the config, the CLI and the sweeps read the registry), but the few uses NAMED_ELSEWHERE justifies."""
    pkg = Path(methods.__file__).parent
    files = {p.stem for p in pkg.glob("*.py")} - {"__init__", "registry", "ablations"}
    assert files == set(methods.trainable())
    lib = pkg.parent
    found = set()
    for path in sorted(lib.rglob("*.py")):
        where = path.relative_to(lib).as_posix()
        if path.parent == pkg:
            continue
        for line, text in _string_literals(path):
            if text in methods.REGISTRY:
                found.add((where, text))
                assert ("*", text) in NAMED_ELSEWHERE or (where, text) in NAMED_ELSEWHERE, \
                    f"dsr_tune/{where}:{line} names method {text!r}: ask the registry (dsr_tune.methods)"
    assert found >= {k for k in NAMED_ELSEWHERE if k[0] != "*"}, "an allowance no longer used: drop it"


def test_the_readme_s_new_method_is_one_file_and_one_import(tmp_path):
    """README's "Adding a method", as written: its file and its import line in a copy of the
    package give a method that validates its own keys, lists them and trains."""
    path = package_copy(tmp_path, {"methods/mine.py": readme_block("Write `dsr_tune/methods/mine.py`:")},
                        {"methods/__init__.py": (r"(from \. import dense, [^#\n]*snfs)", r"\1, mine")})
    script = f"""
from dsr_tune import config as C, methods
from dsr_tune.train import train
assert "mine" in methods.names()
try:
    C.load({DIGITS!r}, ["sparsity.method=mine", "sparsity.mine.fraction=2"])
except C.ConfigError as exc:
    print("refused:", exc)
cfg = C.load({DIGITS!r}, [*{SHORT!r}, "sparsity.method=mine", "sparsity.mine.fraction=0.3"])
record = train(cfg, {str(tmp_path / 'run')!r}, progress=False)
print("trained", record["nonzero_params"], record["epoch"])
print(C.describe("sparsity"))
"""
    out = run_python(script, path)
    assert "refused: sparsity.mine.fraction" in out and "trained 7367 2" in out
    assert "mine.fraction = 0.2" in out and "rigl, snfs, mine" in out


@pytest.mark.parametrize("name", ROWS)
def test_every_budgeted_method_searches_its_sparsity(name):
    """A tuned baseline must be searchable at every sparsity of the sweep: every method but
    dense takes its parameter count from sparsity.sparsity (HashedNet's banks, thin dense's
    width); the initial spread over tensors is a key of the masked methods only."""
    m = methods.get(name)
    assert ("sparsity.sparsity" in m.searchable) == (m.kind != "dense")
    assert ("sparsity.distribution" in m.searchable) == m.masks


def test_compare_s_methods_help_lists_every_row_the_registry_and_planner_know(capsys):
    from dsr_tune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for label in P.known_labels():  # every method, ablation, control at 1x and 2x, and 'ablations'
        assert label in text, label
