"""The code's style is ruff's, as pyproject.toml's [tool.ruff] configures it: `ruff check` (lint rules, imports
sorted) and `ruff format --check` (layout) pass on the whole repository."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_finds_nothing(command):
    """`ruff check .` / `ruff format --check .` exit 0; else the test fails with what ruff printed (fix with
    `ruff check --fix . && ruff format .`)."""
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert ruff.returncode == 0, f"ruff {' '.join(command)} .:\n{ruff.stdout}{ruff.stderr}"
