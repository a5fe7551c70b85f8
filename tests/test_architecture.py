"""The layers of docs/ARCHITECTURE.md hold in the code: read from the source files' import statements (static, so a
lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "datamodules")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a.b import c`` counts as ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = source_files()
    known = set(files)
    graph = {}
    for name, path in files.items():
        edges = imported_modules(path, known)
        # importing a.b.c imports the packages a and a.b first: those edges are Python's, not the file's choice
        graph[name] = {e for e in edges if not name.startswith(e + ".") and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    # zoo/__init__ imports the families so that they register; a family module importing ``zoo`` itself
    # (``from zoo import create_model``) would close a circle and shows here.
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_core_imports_no_family_and_no_datamodule():
    graph = import_graph()
    core = {name: edges for name, edges in graph.items() if name.startswith("zoo.core")}
    assert core, "zoo.core not found"
    for name, edges in core.items():
        outside = sorted(e for e in edges if not e.startswith("zoo.core"))
        assert not outside, f"{name} imports {outside}"


def test_datamodules_import_nothing_from_zoo():
    for name, edges in import_graph().items():
        if name.startswith("datamodules"):
            assert not [e for e in edges if e.split(".")[0] == "zoo"], f"{name} imports {sorted(edges)}"


@pytest.mark.parametrize("family", ["detection", "generative", "segmentation"])
def test_other_families_do_not_import_classification(family):
    for name, edges in import_graph().items():
        if name.startswith(f"zoo.{family}"):
            assert not [e for e in edges if e.startswith("zoo.classification")], f"{name} imports {sorted(edges)}"


# What the library may import from the data layer: preprocessing that belongs to the data (the U-Net weight maps).
DATA_PREPROCESSING = {"datamodules.weight_maps", "datamodules.instance_targets"}
# Command-line tools of the top layer, which build datamodules for the user.
SCRIPTS = {"zoo.cli", "zoo.evaluation.fid_features"}


def test_library_modules_do_not_import_datamodules():
    # training scripts live in __main__ modules or bench/; the library may take a datamodule, never build one
    for name, edges in import_graph().items():
        if name.startswith("zoo") and not name.endswith("__main__") and name not in SCRIPTS:
            data = [e for e in edges if e.startswith("datamodules") and e not in DATA_PREPROCESSING]
            assert not data, f"{name} imports {sorted(data)}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
