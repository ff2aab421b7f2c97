"""The sd15 / sdxl / sd35 presets train the published recipes: docs/methods.md's table, field by field."""

from __future__ import annotations

import ast
import dataclasses
import re
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


@pytest.mark.parametrize("preset", ["sd15", "sdxl"])
def test_dro_presets_run_what_the_public_code_ran_and_each_fix_is_one_setting_away(preset):
    """basiclab/DiffusionDRO (diffusers 0.32.0, torch 2.3.1): train.py:460-461 hands AdamW a `filter` iterator,
    which it exhausts, so :781 clips an empty list (no clipping); :461 builds AdamW whatever --sdxl (not the sdxl
    preset's Adafactor), foreach arithmetic on the bf16 UNet; misc/patch.py:57-58, 185-195 integrate every
    trajectory of a batch on the first one's noise levels."""
    config = resolve_config("dro", preset)
    assert (config.max_grad_norm, config.optimizer, config.master_weights, config.adamw_fused,
            config.per_row_sigmas) == (None, "adamw", "bf16", False, False)
    fixed = resolve_config("dro", preset, {"max_grad_norm": 1.0, "adamw_fused": True, "per_row_sigmas": True})
    assert (fixed.max_grad_norm, fixed.adamw_fused, fixed.per_row_sigmas) == (1.0, True, True)
    # The method's own defaults (the toy and tiny worlds) and sd35 (no public SD3 path) keep the corrected ones.
    for corrected in (resolve_config("dro"), resolve_config("dro", "sd35")):
        assert (corrected.max_grad_norm, corrected.adamw_fused, corrected.per_row_sigmas) == (1.0, True, True)


ROOT = DOC.parents[1]


def uncited_public_code_claims(text: str) -> list[str]:
    """Lines saying something is "as the public code" (or its sampler, buffer) with no file:line on that line
    or the two after it (a claim wrapped over lines)."""
    lines = text.splitlines()
    return [line.strip() for i, line in enumerate(lines) if "as the public" in line.lower()
            and not re.search(r":\d+", " ".join(lines[i:i + 3]))]


def test_dro_claims_as_the_public_code_cite_the_file_and_line_they_rest_on():
    """docs/methods.md's rule, for DRO's code, its tests and its section of the docs."""
    doc = DOC.read_text(encoding="utf-8")
    texts = {"docs/methods.md (DRO)": doc[doc.index("## Diffusion-DRO"):].split("\n## ")[0]}
    for path in ("methods/dro.py", "bench/dro_public_code.py"):
        texts[path] = (ROOT / path).read_text(encoding="utf-8")
    assert {name: uncited_public_code_claims(text) for name, text in texts.items()} == {name: [] for name in texts}
