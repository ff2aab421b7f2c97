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
    for method in ("dpo", "dro", "smpo", "sft"):
        config = resolve_config(method, preset)
        block = shown[shown.index(f"\n{method}\n"):].split("\n\n")[0]
        for field in dataclasses.fields(config):
            line = next(line for line in block.splitlines() if line.split()[:1] == [field.name])
            assert repr(getattr(config, field.name)) in line


def test_smpo_sd15_sft_start_is_marked_ours_with_its_source_and_the_way_round(capsys):
    """The official SD1.5 run starts from checkpoints/sd15-sft (SmPO examples/sd15.sh:8), trained nobody says how."""
    assert main(["presets", "--show", "sd15"]) == 0
    shown = capsys.readouterr().out
    block = shown[shown.index("\nsmpo\n"):].split("\n\n")[0]
    line = next(line for line in block.splitlines() if line.split()[:1] == ["init_method"])
    assert "ours, not published" in line and "examples/sd15.sh:8" in line and "--set smpo.init_unet=DIR" in line


def test_run_with_smpo_init_unet_starts_from_it_and_trains_no_sft(tmp_path):
    """--set smpo.init_unet=DIR (the authors' SFT UNet, say) replaces the sft chain of the sd15 recipe."""
    from harness.run import RunOptions, _plan_trainings

    def plan(overrides):
        options = RunOptions(methods=["smpo"], out=tmp_path, preset="sd15", overrides=overrides)
        return {model.method: model for model in _plan_trainings(options, get_preset("sd15"), None, False)}

    chained = plan({})
    assert set(chained) == {"sft", "smpo"} and chained["smpo"].init_from == "sft" and not chained["sft"].evaluate
    (tmp_path / "sd15-sft").mkdir()
    given = plan({"smpo": {"init_unet": str(tmp_path / "sd15-sft")}})
    assert set(given) == {"smpo"} and given["smpo"].init_from is None
    assert given["smpo"].overrides["init_unet"] == str(tmp_path / "sd15-sft")
