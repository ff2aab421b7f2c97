"""The sd15 / sdxl / sd35 presets train the published recipes: the recipe files of methods/recipes/, each value with
its source, the table docs/methods.md makes of them, and `harness presets --show`.

After editing a recipe file, rewrite docs/methods.md's table:

    HARNESS_UPDATE_DOCS=1 python -m pytest tests/test_recipes.py
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tokenize
import tomllib
from pathlib import Path

import pytest

from harness.api.data import Online
from harness.api.registry import METHODS, PRESETS
from harness.cli import main
from harness.errors import HarnessError
from harness.plan.presets import RECIPES, get_preset
from harness.plan.recipes import EVALUATION, read_recipe, recipe_rows, recipe_table
from harness.train.trainer import resolve_config
from support.cli import harness_main

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
TABLE_START = "<!-- recipe table: generated from methods/recipes/ by harness.plan.recipes.recipe_table -->"
TABLE_END = "<!-- end of recipe table -->"
ROWS = recipe_rows(RECIPES)


def online(method: str) -> bool:
    return isinstance(METHODS.get(method)(resolve_config(method)).data_spec(), Online)


def test_the_recipes_cover_every_method_and_published_preset():
    # An online method samples with a flow-matching SDE: it has a recipe for sd35 only.
    assert {(m, p) for m, p, *_ in ROWS} == {
        (m, p)
        for m in [*METHODS.names(), EVALUATION]
        for p in ("sd15", "sdxl", "sd35")
        if p == "sd35" or m == EVALUATION or not online(m)
    } - {(EVALUATION, "sdxl")}
    assert len(ROWS) > 60


def test_docs_recipe_table_is_the_recipe_files():
    def documented() -> tuple[str, int, int]:
        text = DOC.read_text(encoding="utf-8")
        return text, text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)

    table = "\n" + recipe_table(RECIPES) + "\n"
    if os.environ.get("HARNESS_UPDATE_DOCS"):
        text, start, end = documented()
        DOC.write_text(text[:start] + table + text[end:], encoding="utf-8")
    text, start, end = documented()
    assert text[start:end] == table, "docs/methods.md's recipe table is out of date: rerun with HARNESS_UPDATE_DOCS=1"


@pytest.mark.parametrize("preset", ["sd15", "sd35"])
def test_the_evaluation_recipe_is_the_presets_protocol(preset):
    """evaluation.toml gives the sources of the Preset's GenerationSettings (Python): its values must be those."""
    recipe = read_recipe(RECIPES / preset / f"{EVALUATION}.toml")
    generation = get_preset(preset).generation
    assert recipe and {name: getattr(generation, name) for name in recipe} == {
        name: setting.value for name, setting in recipe.items()
    }


def test_every_recipe_folder_is_a_preset_and_every_file_a_method_or_the_evaluation():
    """No recipe lies where nothing reads it (a misspelt folder or file)."""
    roots = {folder.parent for _, make in PRESETS.items() for folder in make().recipes}
    assert RECIPES in roots
    for folder in (folder for root in roots for folder in root.iterdir()):
        assert folder.name in PRESETS.names() and folder in PRESETS.get(folder.name)().recipes, folder
        assert {path.stem for path in folder.glob("*.toml")} <= {*METHODS.names(), EVALUATION}, folder


@pytest.mark.parametrize("preset", ["sd15", "sdxl", "sd35"])
def test_presets_show_gives_each_recipe_value_its_source(preset, capsys):
    """Every value of the preset's recipes is shown resolved, with its source (file:line), or why it is ours."""
    assert main(["presets", "--show", preset]) == 0
    shown = capsys.readouterr().out
    rows = [row for row in ROWS if row[1] == preset and row[0] != EVALUATION]
    assert rows
    for method, _, setting, value, source in rows:
        block = shown[shown.index(f"\n{method}\n") :].split("\n\n")[0]
        line = next(line for line in block.splitlines() if line.split()[:1] == [setting])
        expected = (
            f"ours, not published: {source[len('ours:') :].strip()}"
            if source.startswith("ours:")
            else (f"published: {source}")
        )
        assert repr(value) in line and f"{method} recipe; {expected}" in line, line
    dro_clip = next(
        line for line in shown[shown.index("\ndro\n") :].splitlines() if line.split()[:1] == ["max_grad_norm"]
    )
    if preset != "sd35":
        assert "train.py:460" in dro_clip  # the public code's clipping that never acts


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[beta]\nvalue = 1.0\n", "must hold a `source`"),
        ('[beta]\nvalue = 1.0\nsource = "ours: x"\nvalu = 2\n', "must hold a `source`"),
        ("beta = 1.0\n", "must hold a `source`"),
        ("[beta\n", "cannot be read as TOML"),
        ('[betta]\nvalue = 1.0\nsource = "ours: a typo"\n', "betta not a setting of dpo"),
    ],
)
def test_a_malformed_recipe_is_one_line_naming_its_file(tmp_path, monkeypatch, text, problem):
    folder = tmp_path / "scratch"
    folder.mkdir()
    (folder / "dpo.toml").write_text(text, encoding="utf-8")
    preset = dataclasses.replace(get_preset("sd15"), name="scratch", recipes=(folder,))
    monkeypatch.setitem(PRESETS._entries, "scratch", lambda: preset)
    with pytest.raises(HarnessError, match=re.escape(problem)) as caught:
        resolve_config("dpo", "scratch")
    assert str(folder / "dpo.toml") in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("preset", ["sd15", "sdxl", "sd35"])
def test_presets_show_prints_every_resolved_field(preset, capsys):
    assert main(["presets", "--show", preset]) == 0
    shown = capsys.readouterr().out
    for method in ("dpo", "dro", "smpo", "sft", "kto", "mapo"):
        config = resolve_config(method, preset)
        block = shown[shown.index(f"\n{method}\n") :].split("\n\n")[0]
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
    assert (
        config.max_grad_norm,
        config.optimizer,
        config.master_weights,
        config.adamw_fused,
        config.per_row_sigmas,
    ) == (None, "adamw", "bf16", False, False)
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
SCANNED = [
    *sorted(ROOT.glob("*.md")),
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted(
        path
        for folder in ("harness", "methods", "toyworld", "examples", "dashboard", "bench", "prompts", "tests")
        for path in (ROOT / folder).rglob("*.py")
    ),
    *sorted(path for folder in ("methods", "toyworld") for path in (ROOT / folder).rglob("*.toml")),
]


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


def _recipe_blocks(text: str) -> list[str]:
    """A recipe file's comments (one block) and each setting's source."""
    comments = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    return [comments, *(entry["source"] for entry in tomllib.loads(text).values())]


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
        blocks = {".py": _python_blocks, ".toml": _recipe_blocks}.get(path.suffix, _markdown_blocks)(text)
        for block in blocks:
            for sentence in re.split(r"(?<=[.!?;])\s+(?=[A-Z`(])", " ".join(block.split())):
                if CLAIM.search(sentence) and not CITATION.search(sentence):
                    found.append(f"{path.relative_to(ROOT)}: {sentence[:160]}")
    return found


def test_every_claim_to_follow_the_public_code_cites_its_file_and_line():
    assert uncited_claims() == []


def test_the_claim_rule_finds_an_uncited_claim_and_accepts_a_cited_one():
    code = (
        "x = 1  # clipped at 1.0, as the public code does\ny = 2  # flipped as the public script (train.py:12)\n"
        "# Sorted as in the official\n# code (tools/pickapic.py:284).\n"
    )
    blocks = _python_blocks(code)
    assert [bool(CLAIM.search(b)) for b in blocks] == [True, True, True]
    assert [bool(CITATION.search(b)) for b in blocks] == [False, True, True]
    assert _markdown_blocks("- As the official code\n  does (`utils.py:205-233`).\n| a | b |\n") == [
        "- As the official code does (`utils.py:205-233`).",
        "| a | b |",
    ]


def test_smpo_sd15_sft_start_is_marked_ours_with_its_source_and_the_way_round(capsys):
    """The official SD1.5 run starts from checkpoints/sd15-sft (SmPO examples/sd15.sh:8), trained nobody says how."""
    assert main(["presets", "--show", "sd15"]) == 0
    shown = capsys.readouterr().out
    block = shown[shown.index("\nsmpo\n") :].split("\n\n")[0]
    line = next(line for line in block.splitlines() if line.split()[:1] == ["init_method"])
    assert "ours, not published" in line and "examples/sd15.sh:8" in line and "--set smpo.init_unet=DIR" in line


def test_run_with_smpo_init_unet_starts_from_it_and_trains_no_sft(tmp_path):
    """--set smpo.init_unet=DIR (the authors' SFT UNet, say) replaces the sft chain of the sd15 recipe."""
    from harness.plan.planner import RunOptions, plan_trainings

    def plan(overrides):
        options = RunOptions(methods=["smpo"], out=tmp_path, preset="sd15", overrides=overrides)
        return {model.method: model for model in plan_trainings(options, get_preset("sd15"), None, False)}

    chained = plan({})
    assert set(chained) == {"sft", "smpo"} and chained["smpo"].init_from == "sft" and not chained["sft"].evaluate
    (tmp_path / "sd15-sft").mkdir()
    given = plan({"smpo": {"init_unet": str(tmp_path / "sd15-sft")}})
    assert set(given) == {"smpo"} and given["smpo"].init_from is None
    assert given["smpo"].overrides["init_unet"] == str(tmp_path / "sd15-sft")


SCRATCH_PRESET = """
import dataclasses
from pathlib import Path

from harness.api import register_preset
from toyworld.presets import tiny


@register_preset("scratch")
def scratch():
    return dataclasses.replace(tiny(), name="scratch", description="a preset from a scratch folder",
                               recipes=(Path(__file__).parent / "recipes",))
"""


@pytest.mark.slow
def test_a_new_preset_is_a_folder_of_recipes_and_its_preset(tmp_path):
    """A preset added from a scratch folder, a plugin file registering it and a recipe for an existing method, trains
    with that recipe: no change to the method."""
    import json

    (tmp_path / "recipes").mkdir()
    (tmp_path / "my_preset.py").write_text(SCRATCH_PRESET, encoding="utf-8")
    (tmp_path / "recipes" / "dpo.toml").write_text(
        '[max_steps]\nvalue = 1\nsource = "ours: one step shows the recipe is read"\n\n'
        '[beta]\nvalue = 1234.0\nsource = "ours: a value no other layer gives"\n',
        encoding="utf-8",
    )
    plugin = ["--plugin", str(tmp_path / "my_preset.py")]
    shown = harness_main(*plugin, "presets", "--show", "scratch")
    assert shown.returncode == 0, shown.stderr
    dpo = shown.stdout[shown.stdout.index("\ndpo\n") :].split("\n\n")[0]
    assert "dpo recipe; ours, not published: a value no other layer gives" in dpo
    assert "no scratch settings of its own" in shown.stdout.split("\ndro")[1]  # dro has no recipe here

    result = harness_main(*plugin, "train", "--preset", "scratch", "--method", "dpo", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no settings for preset" not in result.stderr
    config = json.loads((tmp_path / "out" / "final" / "trainer_state.json").read_text())["config"]
    assert (config["beta"], config["max_steps"], config["lr"]) == (1234.0, 1, 1e-3)  # the recipe, tiny's lr


def test_every_setting_of_every_method_has_its_help_and_methods_show_prints_it(capsys):
    from harness.api.method import setting_help

    for name, cls in METHODS.items():
        assert main(["methods", "--show", name]) == 0
        shown = capsys.readouterr().out
        for field in dataclasses.fields(cls.Config):
            meaning = setting_help(cls.Config, field.name)
            assert len(meaning) > 5, (name, field.name)
            line = next(line for line in shown.splitlines() if line.split()[:1] == [field.name])
            assert meaning.split()[0] in line and repr(getattr(cls.Config(), field.name)) in line, line


def test_a_setting_without_help_is_named():
    from harness.api.method import TrainConfig, setting_help

    @dataclasses.dataclass
    class Bare(TrainConfig):
        lr: float = 1e-3  # a changed default keeps its base's help
        gamma: float = 1.0

    assert setting_help(Bare, "lr") == setting_help(TrainConfig, "lr")
    with pytest.raises(HarnessError, match=r"Bare\.gamma has no help text"):
        setting_help(Bare, "gamma")


def test_a_recipe_file_and_an_inline_entry_for_one_preset_is_one_line(monkeypatch):
    """A one-file plugin may give its settings inline (Method.presets); both that and a file is ambiguous."""
    from methods.dpo import DPO

    class Twice(DPO):
        presets = {"sd15": {"beta": 1.0}}

    monkeypatch.setitem(METHODS._entries, "dpo", Twice)
    with pytest.raises(HarnessError, match=r"dpo has two entries for preset 'sd15': .*sd15/dpo.toml and its Method"):
        resolve_config("dpo", "sd15")
    monkeypatch.setattr(Twice, "presets", {"tiny-flow": {"beta": 7.0}})  # a preset with no folder of its own
    assert resolve_config("dpo", "tiny-flow").beta == 7.0 and resolve_config("dpo", "sd15").beta == 5000.0
