"""The layers of the harness, read from its import statements: no cycle, the contract at the bottom.

Every module of ``harness/`` and ``dashboard/`` is parsed (every import statement, those inside functions and
under ``if TYPE_CHECKING`` too, relative ones resolved) into a graph of modules, and four rules are checked:

- no import cycle: a module that needs another must not be needed by it, however far round;
- ``harness.api`` (the contract plugins import) imports nothing from the harness but itself and ``CONTRACT_USES``:
  the core interprets what the contract declares, never the other way round;
- a function imports only third-party libraries (heavy ones, kept out of start-up): an import of the harness's own
  modules inside a function is how a cycle hides, so it is written at the top of the module;
- a name is imported from the module that defines it, never from one that imported it itself (a re-export hides
  where a name lives and which layer it belongs to).

The rules name no module but the contract and what it may use, so they hold as modules move into packages (the
temporary allowances below name the modules other branches are rewriting).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "dashboard")
CONTRACT = "harness.api"
CONTRACT_USES = ("harness.errors", "harness.atomic")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the harness/dashboard module it imports
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}" + (" inside a function" if self.in_function else "")


def module_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root`` by its dotted name (a package by its ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific known module that ``name`` (a module, or a module's attribute) names; None if outside."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                # ``from a import b`` imports the module a.b when there is one, else an attribute of a
                names = [f"{base}.{alias.name}" for alias in child.names]
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.append(Import(module, target, child.lineno, in_function))
                    # importing a.b.c first runs the package a.b's __init__ (unless the importer is inside a.b)
                    parts = target.split(".")
                    for depth in range(1, len(parts)):
                        parent = ".".join(parts[:depth])
                        if parent in modules and parent != module and not module.startswith(parent + "."):
                            found.append(Import(module, parent, child.lineno, in_function))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def import_graph(modules: dict[str, Path]) -> list[Import]:
    """Every import between ``modules``."""
    return [edge for module, path in modules.items() for edge in _imports_of(module, path, modules)]


def cycles(edges: Iterable[Import]) -> list[tuple[list[Import], list[str]]]:
    """Each group of modules that import each other, round one cycle or more (Tarjan's components): a shortest
    cycle through it, as the imports that close it in order, and the group's modules; none in a hierarchy."""
    graph: dict[str, dict[str, Import]] = {}
    for edge in edges:
        graph.setdefault(edge.module, {}).setdefault(edge.target, edge)
        graph.setdefault(edge.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # recursive: the graph is a few hundred modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found = []
    for component in components:
        start = min(component)
        # breadth-first from start, within the component, back to start: the shortest cycle through it
        previous: dict[str, Import] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for node in frontier:
                for target, edge in sorted(graph[node].items()):
                    if target in component and target not in previous:
                        previous[target] = edge
                        following.append(target)
            frontier = following
        path = [previous[start]]
        while path[0].module != start:
            path.insert(0, previous[path[0].module])
        found.append((path, sorted(component)))
    return sorted(found, key=lambda cycle: cycle[1])


def describe(cycle: list[Import]) -> str:
    """``a:12 -> b:40 -> c:7 -> a``: each module with the line of its import of the next."""
    return " -> ".join(f"{edge.module}:{edge.line}" for edge in cycle) + f" -> {cycle[0].module}"


def report(found: list[tuple[list[Import], list[str]]]) -> str:
    """One line per tangle of modules: its shortest cycle, and the other modules caught in it."""
    return "\n".join(
        f"{describe(path)}" + (f"  (and more cycles among {', '.join(group)})" if len(group) > len(path) else "")
        for path, group in found
    )


def breaks_the_contract(edge: Import) -> bool:
    inside = lambda name, package: name == package or name.startswith(package + ".")  # noqa: E731
    return (
        inside(edge.module, CONTRACT)
        and not inside(edge.target, CONTRACT)
        and not any(inside(edge.target, allowed) for allowed in CONTRACT_USES)
    )


EDGES = import_graph(module_files())


def test_no_module_imports_itself_round_a_cycle():
    found = cycles(EDGES)
    assert not found, "import cycles (module:line of each import):\n" + report(found)


def test_the_contract_imports_only_itself_errors_and_atomic():
    wrong = [str(edge) for edge in EDGES if breaks_the_contract(edge)]
    assert not wrong, (
        f"{CONTRACT} must not depend on the core (move it under {CONTRACT}, or let the core "
        f"interpret a declaration):\n" + "\n".join(wrong)
    )


def test_functions_import_only_third_party_libraries():
    wrong = [str(edge) for edge in EDGES if edge.in_function]
    assert not wrong, "harness modules imported inside functions (import them at the top):\n" + "\n".join(wrong)


def reexports(modules: dict[str, Path]) -> list[str]:
    """Each ``from M import name`` (absolute) where M holds ``name`` only because M imported it itself: importers
    should name the module that defines it.  (``harness.api``'s names are looked up on first use, not imported.)"""
    trees = {module: ast.parse(path.read_text(encoding="utf-8")) for module, path in modules.items()}
    held = {
        module: {
            alias.asname or alias.name: f"{node.module}.{alias.name}"
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
            for alias in node.names
        }
        for module, tree in trees.items()
    }
    return [
        f"{module}:{node.lineno} imports {alias.name} from {node.module}, which has it from {held[node.module][alias.name]}"
        for module, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in held and not node.level
        for alias in node.names
        if alias.name in held[node.module] and f"{node.module}.{alias.name}" not in modules
    ]


def test_names_are_imported_from_the_module_that_defines_them():
    found = reexports(module_files())
    assert not found, "re-exported names (import each from where it is defined):\n" + "\n".join(found)


# -- the checks themselves, on a small made-up tree: each rule can fail ------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    def write(files: dict[str, str]) -> list[Import]:
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        return import_graph(module_files(tmp_path, ("harness",)))

    return write


def test_a_cycle_through_a_function_and_a_relative_import_is_found_as_a_path(tree):
    edges = tree(
        {
            "harness/__init__.py": "",
            "harness/api/__init__.py": "",
            "harness/api/data.py": "import os\n\ndef f():\n    from ..plan import run\n",
            "harness/plan.py": "from harness.api.data import x\nimport harness.errors\n",
            "harness/errors.py": "",
        }
    )
    assert report(cycles(edges)) == "harness.api.data:4 -> harness.plan:1 -> harness.api.data"
    assert [str(edge) for edge in edges if breaks_the_contract(edge)] == [
        "harness.api.data:4 imports harness.plan inside a function"
    ]
    assert [edge.line for edge in edges if edge.in_function] == [4]


def test_a_hierarchy_passes(tree):
    edges = tree(
        {
            "harness/__init__.py": "",
            "harness/api/__init__.py": "from harness import errors\n",
            "harness/errors.py": "import json\n",
            "harness/plan.py": "from . import api, errors\n",
        }
    )
    assert {(edge.module, edge.target) for edge in edges} == {
        ("harness.api", "harness.errors"),
        ("harness.plan", "harness.api"),
        ("harness.plan", "harness.errors"),
    }
    assert cycles(edges) == [] and not any(breaks_the_contract(edge) for edge in edges)


def test_a_name_passed_on_by_another_module_is_found(tree, tmp_path):
    tree(
        {
            "harness/__init__.py": "",
            "harness/errors.py": "class HarnessError(Exception):\n    pass\n",
            "harness/progress.py": "from harness.errors import HarnessError\n",
            "harness/plan.py": "from harness import errors\nfrom harness.progress import HarnessError\n",
        }
    )
    assert reexports(module_files(tmp_path, ("harness",))) == [
        "harness.plan:2 imports HarnessError from harness.progress, which has it from harness.errors.HarnessError"
    ]


def test_modules_tangled_round_several_cycles_are_named_together(tree):
    edges = tree(
        {
            "harness/__init__.py": "",
            "harness/a.py": "import harness.b\n",
            "harness/b.py": "import harness.c\nimport harness.a\n",
            "harness/c.py": "import harness.a\n",
        }
    )
    assert (
        report(cycles(edges))
        == "harness.a:1 -> harness.b:2 -> harness.a  (and more cycles among harness.a, harness.b, harness.c)"
    )
