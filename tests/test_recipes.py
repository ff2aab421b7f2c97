"""The sd15 / sdxl / sd35 presets train the published recipes: docs/methods.md's table, field by field."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from harness.cli import main
from harness.presets import get_preset
from harness.trainer import resolve_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def published_rows() -> list[tuple[str, str, str, str]]:
    """(method, preset, setting, value) of the "Published recipes" table."""
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Published recipes"):].split("\n## ")[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("method", "---") and not set(cells[0]) <= {"-"}:
            rows.append(tuple(cells[:4]))
    return rows


def parse(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # a bare word: a string setting (adamw, bf16, a hub id)


ROWS = published_rows()


def test_the_table_covers_every_method_and_preset():
    assert {(m, p) for m, p, _, _ in ROWS} >= {("dpo", "sd15"), ("dpo", "sdxl"), ("dro", "sd15"), ("smpo", "sd15"),
                                              ("smpo", "sdxl"), ("evaluation", "sd15"),
                                              ("dpo", "sd35"), ("evaluation", "sd35")}
    assert len(ROWS) > 60


@pytest.mark.parametrize("method, preset, setting, value", ROWS, ids=[f"{m}-{p}-{s}" for m, p, s, _ in ROWS])
def test_preset_resolves_to_the_published_value(method, preset, setting, value):
    if method == "evaluation":
        resolved = getattr(get_preset(preset).generation, setting)
    else:
        resolved = getattr(resolve_config(method, preset), setting)
    assert resolved == parse(value)


@pytest.mark.parametrize("preset", ["sd15", "sdxl", "sd35"])
def test_presets_show_prints_every_resolved_field(preset, capsys):
    assert main(["presets", "--show", preset]) == 0
    shown = capsys.readouterr().out
    for method in ("dpo", "dro", "smpo", "sft", "kto", "mapo"):
        config = resolve_config(method, preset)
        block = shown[shown.index(f"\n{method}\n"):].split("\n\n")[0]
        for field in dataclasses.fields(config):
            line = next(line for line in block.splitlines() if line.split()[:1] == [field.name])
            assert repr(getattr(config, field.name)) in line
