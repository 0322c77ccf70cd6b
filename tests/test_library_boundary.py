"""The library does not depend on the studies: no module of ``rosa_lightning`` imports ``experiments`` (the studies'
package and harness) or matplotlib (the ``studies`` extra), and every module imports where matplotlib is absent."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rosa_lightning"
FORBIDDEN = ("experiments", "matplotlib")
# Files whose function-local matplotlib import the library keeps: the import runs only when that function plots
# (the evaluation comparison's NIAH-versus-length figure); importing the module never loads matplotlib.
LAZY_MATPLOTLIB = {"rosa_lightning/evaluation/compare.py"}


def imported_names(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(absolute module name, line, inside a function) of every import statement and every
    ``importlib.import_module`` / ``__import__`` call with a constant name in ``tree``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno, in_function))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno, in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def forbidden_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for name, line, in_function in imported_names(ast.parse(path.read_text(encoding="utf-8"), rel)):
            top = name.split(".")[0]
            if top not in FORBIDDEN:
                continue
            if top == "matplotlib" and in_function and rel in LAZY_MATPLOTLIB:
                continue
            bad.append(f"{rel}:{line} imports {name}")
    return bad


def test_library_modules_import_neither_experiments_nor_matplotlib():
    bad = forbidden_imports()
    assert not bad, "the library must not import the studies' code or plotting:\n" + "\n".join(bad)


def test_the_import_walker_sees_every_form_of_import():
    source = ("import experiments.harness\nfrom matplotlib import pyplot\nfrom . import sibling\n"
              "def f():\n    import matplotlib\n    return importlib.import_module('experiments.x')\n")
    assert imported_names(ast.parse(source)) == [("experiments.harness", 1, False), ("matplotlib", 2, False),
                                                 ("matplotlib", 5, True), ("experiments.x", 6, True)]


# Run in a fresh interpreter whose matplotlib is hidden (neither importable nor visible to importlib.metadata, as
# when it is not installed: torchmetrics, under Lightning, imports matplotlib whenever it is installed).
IMPORT_EVERYTHING = """
import importlib, importlib.abc, importlib.metadata, pkgutil, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

def hide(fn):
    def wrapped(name):
        if name.lower() == "matplotlib":
            raise importlib.metadata.PackageNotFoundError(name)
        return fn(name)
    return wrapped

sys.meta_path.insert(0, Absent())
importlib.metadata.version = hide(importlib.metadata.version)
importlib.metadata.distribution = hide(importlib.metadata.distribution)
import rosa_lightning
names = [m.name for m in pkgutil.walk_packages(rosa_lightning.__path__, "rosa_lightning.")]
for name in names:
    importlib.import_module(name)
loaded = sorted({k.split(".")[0] for k in sys.modules} & {"experiments", "matplotlib"})
print(len(names), loaded)
"""


def test_every_library_module_imports_without_matplotlib_or_experiments():
    # cwd = the repository root, so `experiments` would be importable if any module asked for it
    proc = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, loaded = proc.stdout.split(maxsplit=1)
    assert int(count) > 20 and loaded.strip() == "[]", proc.stdout
