"""No import circle in tasks/lib (the image and text sources once imported each other; what they share is in
tasks/lib/source_files.py), and no module there imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

LIB = REPO / "tasks" / "lib"


def imports_of(path: Path, package: str) -> set[tuple[str, str]]:
    """(module, name) for every import of ``package``'s modules in ``path``, at any depth (lazy imports too)."""
    top = package.split(".")[0]
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == top:
            found |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names if alias.name.split(".")[0] == top}
    return found


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` (the modules in ``folder``) it imports; ``from p import m`` imports p.m."""
    modules = {f"{package}.{p.stem}": p for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}
    graph = {}
    for module, path in modules.items():
        targets = set()
        for imported, name in imports_of(path, package):
            targets |= {t for t in (imported, f"{imported}.{name}") if t in modules and t != module}
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``, each as the path that closes it (one per back edge found)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append([*path[path.index(module) :], module])
        elif module not in done:
            for target in sorted(graph.get(module, ())):
                visit(target, [*path, module])
            done.add(module)

    for module in graph:
        visit(module, [])
    return found


def test_no_module_of_tasks_lib_imports_another_in_a_circle() -> None:
    graph = import_graph(LIB, "tasks.lib")
    assert "tasks.lib.source_files" in graph["tasks.lib.text_sources"]  # the graph sees the modules' imports
    assert cycles(graph) == []


def test_the_sources_import_no_private_name() -> None:
    for name in ("sources.py", "text_sources.py", "source_files.py"):
        private = {(m, n) for m, n in imports_of(LIB / name, "tasks") if n.startswith("_")}
        assert private == set(), f"tasks/lib/{name} imports private names: {sorted(private)}"


def test_a_circle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg import a\n")  # the old sources ↔ text_sources shape
    (tmp_path / "c.py").write_text("import pkg.a\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]
