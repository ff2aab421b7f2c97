"""The sd15 / sdxl / sd35 presets train the published recipes: docs/methods.md's table, field by field."""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from pathlib import Path

import pytest

from harness.cli import main
from harness.presets import get_preset, recipe_table
from harness.trainer import resolve_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def published_rows() -> list[tuple[str, str, str, str]]:
    """(method, preset, setting, value) of the "Published recipes" table."""
    return [row[:4] for row in recipe_table()]


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
def test_presets_show_gives_each_published_value_its_source(preset, capsys):
    """Every row of the recipe table for this preset is shown with its value and its source (file:line)."""
    assert main(["presets", "--show", preset]) == 0
    shown = capsys.readouterr().out
    rows = [row for row in recipe_table() if row[1] == preset and row[0] != "evaluation"]
    assert rows
    for method, _, setting, value, source in rows:
        block = shown[shown.index(f"\n{method}\n"):].split("\n\n")[0]
        line = next(line for line in block.splitlines() if line.split()[:1] == [setting])
        assert repr(parse(value)) in line and (f"published: {source}" in line or "ours, not published" in line), line
    dro_clip = next(line for line in shown[shown.index("\ndro\n"):].splitlines() if line.split()[:1] == ["max_grad_norm"])
    if preset != "sd35":
        assert "train.py:460" in dro_clip  # the public code's clipping that never acts


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



# The rule of docs/methods.md's "The public code, as it runs": a sentence claiming to do what the public code does
# names the file:line it rests on, in that sentence.  A claim: "as the" or "as in the", then "public", "official"
# or "authors'" (the public code, script, launcher, buffer; the official code; the authors' code).
CLAIM = re.compile(r"\bas (?:in )?the (?:public|official|authors'?)\b", re.IGNORECASE)
CITATION = re.compile(r"\w\.(?:py|sh|ya?ml|json|toml|cfg)`?:\d+")
ROOT = DOC.parents[1]
SCANNED = [*sorted(ROOT.glob("*.md")), *sorted((ROOT / "docs").glob("*.md")),
           *sorted(path for folder in ("harness", "methods", "toyworld", "examples", "dashboard", "bench", "prompts",
                                       "tests") for path in (ROOT / folder).rglob("*.py"))]


def _python_blocks(text: str) -> list[str]:
    """A file's comments (consecutive whole-line comments one block, a comment after code its own) and string
    literals (docstrings among them)."""
    blocks: list[str] = []
    last_comment_line = -2
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            words = token.string.lstrip("#").strip()
            whole_line = token.line.lstrip().startswith("#")
            if whole_line and token.start[0] == last_comment_line + 1:
                blocks[-1] += " " + words
            else:
                blocks.append(words)
            last_comment_line = token.start[0] if whole_line else -2
        elif token.type == tokenize.STRING:
            blocks.append(token.string)
    return blocks


def _markdown_blocks(text: str) -> list[str]:
    """Paragraphs, list items and table rows, each one block."""
    blocks: list[str] = []
    joined = False
    for line in text.splitlines():
        stripped = line.strip()
        starts_item = stripped.startswith(("|", "- ", "* ", "#")) or re.match(r"\d+\. ", stripped)
        if stripped and joined and not starts_item:
            blocks[-1] += " " + stripped
        elif stripped:
            blocks.append(stripped)
        joined = bool(stripped) and not stripped.startswith(("|", "#"))
    return blocks


def uncited_claims() -> list[str]:
    """Every sentence making such a claim without a file:line: 'path: sentence'."""
    found = []
    for path in SCANNED:
        text = path.read_text(encoding="utf-8")
        blocks = _python_blocks(text) if path.suffix == ".py" else _markdown_blocks(text)
        for block in blocks:
            for sentence in re.split(r"(?<=[.!?;])\s+(?=[A-Z`(])", " ".join(block.split())):
                if CLAIM.search(sentence) and not CITATION.search(sentence):
                    found.append(f"{path.relative_to(ROOT)}: {sentence[:160]}")
    return found


def test_every_claim_to_follow_the_public_code_cites_its_file_and_line():
    assert uncited_claims() == []


def test_the_claim_rule_finds_an_uncited_claim_and_accepts_a_cited_one():
    code = ("x = 1  # clipped at 1.0, as the public code does\ny = 2  # flipped as the public script (train.py:12)\n"
            "# Sorted as in the official\n# code (tools/pickapic.py:284).\n")
    blocks = _python_blocks(code)
    assert [bool(CLAIM.search(b)) for b in blocks] == [True, True, True]
    assert [bool(CITATION.search(b)) for b in blocks] == [False, True, True]
    assert _markdown_blocks("- As the official code\n  does (`utils.py:205-233`).\n| a | b |\n") == [
        "- As the official code does (`utils.py:205-233`).", "| a | b |"]


def test_smpo_sd15_sft_start_is_marked_ours_with_its_source_and_the_way_round(capsys):
    """The official SD1.5 run starts from checkpoints/sd15-sft (SmPO examples/sd15.sh:8), trained nobody says how."""
    assert main(["presets", "--show", "sd15"]) == 0
    shown = capsys.readouterr().out
    block = shown[shown.index("\nsmpo\n"):].split("\n\n")[0]
    line = next(line for line in block.splitlines() if line.split()[:1] == ["init_method"])
    assert "ours, not published" in line and "examples/sd15.sh:8" in line and "--set smpo.init_unet=DIR" in line


def test_run_with_smpo_init_unet_starts_from_it_and_trains_no_sft(tmp_path):
    """--set smpo.init_unet=DIR (the authors' SFT UNet, say) replaces the sft chain of the sd15 recipe."""
    from harness.plan import RunOptions, plan_trainings

    def plan(overrides):
        options = RunOptions(methods=["smpo"], out=tmp_path, preset="sd15", overrides=overrides)
        return {model.method: model for model in plan_trainings(options, get_preset("sd15"), None, False)}

    chained = plan({})
    assert set(chained) == {"sft", "smpo"} and chained["smpo"].init_from == "sft" and not chained["sft"].evaluate
    (tmp_path / "sd15-sft").mkdir()
    given = plan({"smpo": {"init_unet": str(tmp_path / "sd15-sft")}})
    assert set(given) == {"smpo"} and given["smpo"].init_from is None
    assert given["smpo"].overrides["init_unet"] == str(tmp_path / "sd15-sft")
