"""The import graph of distill/ and rationale/ is one-way: no module takes part in a cycle.

Neither distill/ nor rationale/ has one, and a cycle through both (rationale reads distill's
model names; distill reads rationale's records) counts too.

Every import counts, wherever it is written: at the top, inside a function (the lazy imports of
heavy or later-stage modules) and under ``TYPE_CHECKING``, since a cycle among any of them means
two modules that each need the other, which the data flow (records -> ... -> trainer ->
evaluation) rules out. The graph is read with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("distill", "rationale")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file.

    ``from package import name`` is an import of the submodule ``package.name`` where there is
    one, else of ``package``; relative imports are resolved against ``name``.
    """
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif module in known:
                    found.add(module)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, set(known)) for name, path in known.items()}


def test_the_graph_is_read_with_every_kind_of_import() -> None:
    """The reader sees top-level, in-function and TYPE_CHECKING imports (else the check below
    would pass by seeing nothing)."""
    graph = import_graph()
    assert "distill.checkpoints" in graph["distill.train"]  # at the top
    assert "distill.pipeline" in graph["rationale.stage_runners"]  # inside a function
    assert "distill.student" in graph["distill.trainer"]  # under TYPE_CHECKING
    assert "distill.config" in graph["distill"]  # the package's lazy names, under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_distill_is_in_an_import_cycle() -> None:
    """Over the whole graph, so a cycle through rationale/ and back into distill/ counts too."""
    found = [c for c in cycles(import_graph()) if any(m.split(".")[0] == "distill" for m in c)]
    assert found == [], "import cycles (each a set of modules that import one another): " + (
        "; ".join(", ".join(c) for c in found)
    )


def test_no_module_of_rationale_is_in_an_import_cycle() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles (each a set of modules that import one another): " + (
        "; ".join(", ".join(c) for c in found)
    )
