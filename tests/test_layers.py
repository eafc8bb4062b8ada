"""The package's shape: imports run one way (the order in dsr_tune/__init__.py),
no import cycle, files and functions of a readable size."""

import ast
from pathlib import Path

import dsr_tune

PKG = Path(dsr_tune.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PKG.parent / name.replace(".", "/") / "__init__.py").is_file()


def _exists(name: str) -> bool:
    base = PKG.parent / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class _Imports(ast.NodeVisitor):
    """Every import of the package, at any depth (function-level ones included),
    except under ``if TYPE_CHECKING:`` (annotations only, never executed) unless
    ``types`` asks for those too."""

    def __init__(self, module: str, package: bool, types: bool = False):
        self.module, self.package, self.found, self.types = module, package, set(), types

    def visit_If(self, node):
        test = node.test
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" and not self.types:
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.startswith("dsr_tune"):
                self.found.add(alias.name)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.module.split(".")
            base = base if self.package else base[:-1]
            base = base[:len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if not target.startswith("dsr_tune"):
            return
        for alias in node.names:  # `from . import runfolder` imports a module
            sub = f"{target}.{alias.name}"
            self.found.add(sub if _exists(sub) else target)


def graph(types: bool = False) -> dict[str, set[str]]:
    edges = {}
    for path in sorted(PKG.rglob("*.py")):
        name = _module(path)
        v = _Imports(name, path.name == "__init__.py", types)
        v.visit(ast.parse(path.read_text()))
        edges[name] = {t for t in v.found if t != name}
    return edges


def _layers() -> list[list[str]]:
    """The order written in the package docstring: ``a -> b -> c / d -> ...``."""
    line = next(ln for ln in dsr_tune.__doc__.splitlines() if ln.strip().startswith("cli ->"))
    return [[part.strip() for part in layer.split("/")] for layer in line.split("->")]


def _layer_of(module: str, layers) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(layers):
        if top in names:
            return i, top
    raise AssertionError(f"{module}: its package {top!r} is in no layer of the docstring's order")


def test_imports_run_one_way():
    layers = _layers()
    upward = []
    for src, targets in graph().items():
        if src == "dsr_tune":
            continue
        i, a = _layer_of(src, layers)
        for t in targets:
            if t == "dsr_tune":
                continue
            j, b = _layer_of(t, layers)
            if j < i or (j == i and a != b):  # above, or a sibling of the same layer
                upward.append(f"{src} -> {t}")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    """Type-only imports count: a loop kept alive by ``if TYPE_CHECKING:`` (or a
    lazy import) is still two modules that cannot be understood apart."""
    edges = graph(types=True)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if m.startswith(n + ".") or n.startswith(m + "."):
                continue  # a package and its own modules (re-exports): not a cycle between modules
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m in edges and not state.get(m):
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if not state.get(n):
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_test_sees_an_upward_import(tmp_path):
    # the checker itself: a sparse-core module importing the trainer is caught
    v = _Imports("dsr_tune.sparse.masking", False)
    v.visit(ast.parse("def f():\n    from ..train import recipe\n"))
    assert v.found == {"dsr_tune.train.recipe"}
    assert _layer_of("dsr_tune.train.recipe", _layers())[0] < _layer_of("dsr_tune.sparse.masking", _layers())[0]


def test_files_and_functions_stay_readable():
    long_files, long_functions = [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_files.append(f"{path.relative_to(PKG)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                limit = 80 if (path.name == "recipe.py" and node.name == "train") else 60
                if n > limit:
                    long_functions.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({n} lines)")
    assert not long_files, "files over 400 lines: " + ", ".join(long_files)
    assert not long_functions, "functions over 60 lines: " + ", ".join(long_functions)


# ------------------------------------------------------------------ the run folder's names and its one write


def _file_names() -> set[str]:
    """The run-folder and sweep-folder names runfolder.py defines (file names and the
    distinctive folder names; plain words such as ``runs`` or ``tune`` are left out)."""
    from dsr_tune import runfolder

    return {v for k, v in vars(runfolder).items() if k.isupper() and isinstance(v, str) and ("." in v or "_" in v)
            and not k.startswith("_")}


def _code_strings(tree: ast.AST):
    """(line, text) of every string constant in code: docstrings left out, f-string parts included."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def _spelled(names: set[str], text: str) -> list[str]:
    """The names ``text`` uses as a path: the whole string, or a part of a path
    (``"x/metrics.jsonl"``, ``f"{d}/sweep.json"``, ``"optuna.db-wal"``). Prose
    that mentions a file (help texts, messages: ``"holds no checkpoint.pt"``) is
    not a path and may say it, as docstrings and comments may."""
    import re

    return [n for n in names if re.search(rf"(?:^|/){re.escape(n)}(?:$|[/-])", text)]


def _renames(tree: ast.AST):
    """Calls that rename a file into place: os.replace / os.rename / shutil.move, and
    ``x.replace(target)`` / ``x.rename(target)`` with one argument (Path's; str.replace takes two)."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        owner = f.value.id if isinstance(f.value, ast.Name) else None
        if (owner, f.attr) in {("os", "replace"), ("os", "rename"), ("shutil", "move")}:
            yield node.lineno, f"{owner}.{f.attr}"
        elif f.attr in ("replace", "rename") and len(node.args) == 1 and not node.keywords:
            yield node.lineno, f".{f.attr}(...)"


def test_run_folder_names_are_spelled_only_in_runfolder():
    names = _file_names()
    assert {"checkpoint.pt", "metrics.jsonl", "config.yaml", "init.pt", "sweep.json", "paired.json", "optuna.db",
            "mlflow_offline.json", "manifest.json", "ray_workers"} <= names
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "runfolder.py" and path.parent == PKG:
            continue
        for line, text in _code_strings(ast.parse(path.read_text())):
            found += [f"{path.relative_to(PKG)}:{line} {n!r}" for n in _spelled(names, text)]
    assert not found, "run-folder names spelled outside runfolder.py (use its constants):\n" + "\n".join(found)


def test_only_runfolder_renames_files_into_place():
    found = [f"{path.relative_to(PKG)}:{line} {call}" for path in sorted(PKG.rglob("*.py"))
             if not (path.name == "runfolder.py" and path.parent == PKG)
             for line, call in _renames(ast.parse(path.read_text()))]
    assert not found, "files renamed into place outside runfolder.atomic_write:\n" + "\n".join(found)


def test_the_name_checks_see_what_they_look_for():
    tree = ast.parse('"""checkpoint.pt in a docstring is prose."""\n'
                     'import os\n'
                     'def f(d, tmp):\n'
                     '    """So is metrics.jsonl here."""\n'
                     '    tmp.replace(d / "checkpoint.pt")\n'
                     '    os.replace(tmp, d)\n'
                     '    x = "a b".replace("a", "c")\n'
                     '    return f"{d}/sweep.json", "no checkpoint.pt in " + str(d), "checkpoint.pts", "a/init.pt"\n')
    spelled = sorted((line, n) for line, text in _code_strings(tree) for n in _spelled(_file_names(), text))
    assert spelled == [(5, "checkpoint.pt"), (8, "init.pt"), (8, "sweep.json")]
    assert sorted(_renames(tree)) == [(5, ".replace(...)"), (6, "os.replace")]


def test_validating_a_command_line_imports_no_torch():
    """The registries (methods, models, data sets) feed the config, which the CLI
    validates before any work: their import, and the data checks, stay torch-free."""
    import subprocess
    import sys

    code = ("import sys\nfrom dsr_tune import cli, config as C\nfrom dsr_tune.data import checks\n"
            "cfg = C.load(None, ['model.name=resnet50', 'data.name=imagenet', 'data.root=/nowhere'])\n"
            "print(C.describe() and sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


#: model and data-set names the library may write outside their registrations, and why
NAMED_ELSEWHERE = {
    ("config/sections.py", "small_cnn"): "model.name's default",
    ("config/sections.py", "digits"): "data.name's default: the embedded data set",
    ("train/export.py", "synthetic"): "an exported model's config is rebuilt with a data set that reads no files",
}


def test_model_and_data_set_names_are_written_only_where_they_are_registered():
    """What the code special-cases per model or data set is a trait of its registration
    (dsr_tune/models/__init__.py, dsr_tune/data/sets.py), not a branch on its name."""
    from dsr_tune import data, models

    names = set(models.REGISTRY) | set(data.REGISTRY)
    found = set()
    for path in sorted(PKG.rglob("*.py")):
        where = path.relative_to(PKG).as_posix()
        if where in ("models/__init__.py", "data/sets.py"):
            continue
        for line, text in _code_strings(ast.parse(path.read_text())):
            if text in names:
                found.add((where, text))
                assert (where, text) in NAMED_ELSEWHERE, \
                    f"dsr_tune/{where}:{line} names {text!r}: give its registration a trait instead"
    assert found == set(NAMED_ELSEWHERE), "an allowance no longer used: drop it"
