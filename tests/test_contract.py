"""The contract layer holds: plugins import only ``harness.api``; the harness never imports a plugin.

Methods, the toy world and the built-in suites are reached through the registries, so a new
method, scorer, suite or world is one file or package that the core does not know by name.
Every import statement counts, the ones inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("methods", "toyworld", "prompts")  # packages of plugins shipped with the harness
CORE = ("harness", "dashboard")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative imports resolved against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", sources(*CORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_harness_never_imports_a_plugin(path):
    wrong = [f"line {line}: {module}" for line, module in imported_modules(path) if top(module) in PLUGINS]
    assert not wrong, f"{path.relative_to(ROOT)} imports plugins (reach them through a registry): {wrong}"


@pytest.mark.parametrize("path", sources(*PLUGINS), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_contract(path):
    own = path.relative_to(ROOT).parts[0]

    def allowed(module: str) -> bool:
        return top(module) not in CORE + PLUGINS or module == "harness.api" or module.startswith("harness.api.") \
            or top(module) == own

    wrong = [f"line {line}: {module}" for line, module in imported_modules(path) if not allowed(module)]
    assert not wrong, f"{path.relative_to(ROOT)} imports harness internals (use harness.api): {wrong}"


def test_the_rule_is_checked_on_real_imports(tmp_path):
    """The walker sees imports inside functions and relative ones, so the two tests above could fail."""
    probe = ROOT / "methods" / "_probe_for_the_contract_test.py"
    probe.write_text("from . import dpo\ndef f():\n    from harness.trainer import train\n    import toyworld.grammar\n")
    try:
        assert imported_modules(probe) == [(1, "methods"), (3, "harness.trainer"), (4, "toyworld.grammar")]
    finally:
        probe.unlink()
