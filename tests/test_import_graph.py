"""The package's import graph (docs/architecture.md §1): no cycles between its parts and no arrow running up a floor.

Floors, lowest first: the leaves (``fileio``, ``guards``), ``retrieval``, ``modeling``, then ``data``, ``callbacks``,
``lit_module`` and ``generation``, then the entry points ``evaluation`` and ``cli``. A part may import its own
floor's parts or lower ones. Relative and absolute imports count, at module level and inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rosa_lightning"
FLOORS = {"fileio": 0, "guards": 0, "retrieval": 1, "modeling": 2, "data": 3, "callbacks": 3, "lit_module": 3,
          "generation": 3, "evaluation": 4, "cli": 4}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "rosa_lightning" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Absolute names of the package modules ``path`` imports."""
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.add(node.module)
    return {n for n in names if n.startswith("rosa_lightning")}


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = _part(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if src in (None, "__init__"):
            continue  # the package's __init__ (registration only)
        for name in _imports(path):
            dst = _part(name)
            if dst is not None and dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def test_every_part_has_a_floor():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert parts <= set(FLOORS), f"new part(s) {sorted(parts - set(FLOORS))}: give them a floor here and in docs"


def test_no_arrow_runs_up_a_floor():
    upward = sorted((src, dst) for src, dsts in _graph().items() for dst in dsts if FLOORS[dst] > FLOORS[src])
    assert upward == [], f"imports from a lower floor to a higher one: {upward}"


def test_no_cycle_between_parts():
    graph = _graph()
    seen, on_path = set(), []

    def visit(node):
        if node in on_path:
            raise AssertionError(f"import cycle: {' -> '.join(on_path[on_path.index(node):] + [node])}")
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_path.pop()

    for node in sorted(graph):
        visit(node)
