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
    except under ``if TYPE_CHECKING:`` (annotations only, never executed)."""

    def __init__(self, module: str, package: bool):
        self.module, self.package, self.found = module, package, set()

    def visit_If(self, node):
        test = node.test
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
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


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in sorted(PKG.rglob("*.py")):
        name = _module(path)
        v = _Imports(name, path.name == "__init__.py")
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
    edges = graph()
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
