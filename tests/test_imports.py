"""Every module of the harness and its shipped plugins imports: the fast tier (``make test-fast``) reaches
each one, a module no other fast test loads included, so a broken import never waits for the slow tier."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "dashboard", "methods", "toyworld", "prompts")
# Scripts that run on import; the test named beside each runs them.
SCRIPTS = {
    "dashboard.app": "tests/test_dashboard.py runs it through Streamlit's AppTest",
    "harness.cli.__main__": "`python -m harness.cli`: tests/test_cli.py runs it in a fresh process",
}


def module_names() -> list[str]:
    """Dotted names of every .py under PACKAGES (a package by its own name), the scripts left out."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [name for name in names if name not in SCRIPTS]


def test_the_walk_finds_every_package_and_each_script_left_out_exists():
    names = module_names()
    assert set(PACKAGES) <= set(names) and "harness.api.method" in names and "methods.dpo" in names
    assert all((ROOT / (script.replace(".", "/") + ".py")).is_file() for script in SCRIPTS)


@pytest.mark.parametrize("name", module_names())
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name
