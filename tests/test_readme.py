"""The README's recipes run: every block marked ``<!-- recipe: NAME -->`` is executed here, in order, in one
scratch directory, so a recipe that stops working fails CI.  Each command of a block is split as bash splits
it (a backslash continues the line, ``#`` starts a comment); a ``harness`` command runs through the CLI's
``main`` in this process (``support.cli``: a fresh process would spend most of its time importing
torch), a ``python`` one in a fresh Python, and a block with any other command fails the test.

To stay fast the recipes run on the ``tiny`` preset, the toy world's random-init twin: the only change
made to a command is ``--preset toy`` -> ``--preset tiny`` and ``--model toy`` -> ``--model tiny``.  The
recipe for real models (SD1.5, SDXL, SD3.5) needs GPUs and downloads: tests/test_rehearsal.py runs its
commands offline on tiny stand-ins (``readme_command``).  The plugin files the README shows are checked
to be the files in ``examples/`` that this test runs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import harness_main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_BLOCK = re.compile(r"<!-- recipe: (?P<name>[\w-]+)[^>]*-->\n```(?P<language>\w+)\n(?P<body>.*?)```", re.S)
_SHOWN_FILE = re.compile(r"the block below is (?P<path>[\w/.]+)")
TINY = (("--preset toy", "--preset tiny"), ("--model toy", "--model tiny"))


def recipes() -> list[tuple[str, str, str]]:
    """(name, language, body) of every recipe block, in README order."""
    return [(m["name"], m["language"], m["body"]) for m in _BLOCK.finditer(README.read_text(encoding="utf-8"))]


def readme_command(preset: str) -> list[str]:
    """The arguments of the README's `harness run --preset PRESET ...` line of the real-models recipe."""
    body = next(body for name, _, body in recipes() if name == "real-models")
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if words[:4] == ["harness", "run", "--preset", preset]:
            return words[1:]
    raise AssertionError(f"README's real-models recipe has no `harness run --preset {preset}` line")


def test_links_stay_inside_the_repository():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if target.startswith(("http://", "https://")):
            continue
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT), f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"


def test_the_plugin_files_shown_are_the_files_that_run():
    text = README.read_text(encoding="utf-8")
    shown = [
        (m["path"], _BLOCK.match(text, text.rfind("<!-- recipe:", 0, m.start()))) for m in _SHOWN_FILE.finditer(text)
    ]
    assert {path for path, _ in shown} == {"examples/desirable_sft.py", "examples/scorer_and_suite.py"}
    for path, block in shown:
        assert block["body"] == (ROOT / path).read_text(encoding="utf-8"), f"README's copy of {path} differs"


def commands(body: str) -> list[list[str]]:
    """The words of each command of a bash block, as bash splits them."""
    return [words for line in body.replace("\\\n", "").splitlines() if (words := shlex.split(line, comments=True))]


def test_commands_are_split_as_bash_splits_them():
    """Bash itself runs every recipe block, its commands replaced by a function printing their words."""
    for name, language, body in recipes():
        if language != "bash":
            continue
        words = 'printf "%s\\037" "$FUNCNAME" "$@"; printf "\\n"'
        script = f"harness() {{ {words}; }}\npython() {{ {words}; }}\n{body}"
        shown = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, check=True).stdout
        assert commands(body) == [line.split("\037")[:-1] for line in shown.splitlines()], name


def run_command(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if words[0] == "harness":
        return harness_main(*words[1:], cwd=cwd)
    assert words[0] == "python", f"a recipe runs {words[0]!r}: this test runs only harness and python commands"
    return subprocess.run([sys.executable, *words[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_every_recipe_runs(tmp_path, harness_cache):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    ran = []
    for name, language, body in recipes():
        if name == "real-models" or (language == "python" and not body.startswith("# ")):
            continue  # real models: tests/test_rehearsal.py; a python block without a file name: shown, not run
        if language == "python":
            file_name = body.split()[1].rstrip(":")
            if not (tmp_path / file_name).exists():
                (tmp_path / file_name).write_text(body, encoding="utf-8")
            continue
        for old, new in TINY:
            body = body.replace(old, new)
        for words in commands(body):
            result = run_command(words, tmp_path)
            assert result.returncode == 0, (
                f"recipe {name} failed at `{shlex.join(words)}`:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
            # Every method a recipe trains has settings for the preset (the example plugin its own), so no warning.
            assert "no settings for preset" not in result.stderr, result.stderr
        ran.append(name)
    assert ran == ["own-data-run", "evaluate", "add-a-method-run", "add-a-scorer-and-suite-run"]
    # What the recipes promise: the user's data trained on, the checkpoint evaluated beside the run's models.
    board = harness_main("leaderboard", "--out", "runs/mine", "--format", "csv", cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    assert {"base", "dpo", "kto", "mydpo"} <= {line.split(",")[0] for line in board.stdout.splitlines()[1:]}
    assert (tmp_path / "runs" / "mydpo" / "final" / "unet" / "config.json").exists()


def test_the_toy_grammar_shown_is_the_toy_worlds():
    from toyworld.grammar import COLOURS, POSITIONS, SHAPES

    text = README.read_text(encoding="utf-8")
    marker = "<!-- toy grammar: a test keeps these lists equal to toyworld/grammar.py -->"
    shown = " ".join(text[text.index(marker) + len(marker) :].split("\n\n")[0].split())
    lists = re.fullmatch(r"colours (.*); shapes (.*); positions (.*?)\. A prompt outside it.*", shown)
    assert lists is not None, shown
    assert [part.split(", ") for part in lists.groups()] == [
        list(COLOURS),
        list(SHAPES),
        [phrase for _, phrase in POSITIONS.values()],
    ]
