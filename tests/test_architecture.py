"""The package tree is layered: no import circle between its packages, no import hidden inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "icecore_lib"


def _unit(module: str) -> str:
    """The room a module lives in: its subpackage (``icecore_lib.data``) or itself (``icecore_lib.config``)."""
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    """``icecore_lib/data/pack.py`` -> ``icecore_lib.data.pack``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every icecore_lib module a file imports, and whether the import sits inside a function."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{module}.{a.name}" for a in node.names] if not node.module or node.level else [module]
            found += [(name if node.level or not node.module else module, id(node) not in top) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) not in top) for a in node.names]
    return [(name, nested) for name, nested in found if name.startswith("icecore_lib")]


def _graph() -> dict[str, set[str]]:
    """Package-level import graph of icecore_lib (a subpackage counts as one node)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _unit(_module_name(path))
        for target, _ in _imports(path):
            graph.setdefault(source, set())
            if _unit(target) != source and _unit(target) != "icecore_lib":
                graph[source].add(_unit(target))
    return graph


def test_no_import_circle_between_the_packages_of_the_tree() -> None:
    graph, state, path = _graph(), {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_icecore_import_is_hidden_inside_a_function() -> None:
    hidden = [f"{path.relative_to(PACKAGE.parent)}: {name}" for path in PACKAGE.rglob("*.py")
              for name, nested in _imports(path) if nested]
    assert not hidden, hidden


def test_the_data_intake_does_not_depend_on_models_plots_or_stages() -> None:
    graph = _graph()
    reach, todo = set(), ["icecore_lib.data"]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert not reach & {"icecore_lib.models", "icecore_lib.plots", "icecore_lib.stages", "icecore_lib.nn",
                        "icecore_lib.train", "icecore_lib.run"}, sorted(reach)
