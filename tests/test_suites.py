"""Suite loaders (PartiPrompts on the real file, HPDv2, DrawBench, Pick-a-Pic), listing, overlap."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.api import Prompt, Suite
from harness.errors import HarnessError
from harness.evaluation.suites import caption_overlap, check_suite_name, get_suite, list_suites, normalize_caption

SHIPPED_PARTI = Path(__file__).parents[1] / "prompts" / "PartiPrompts.tsv"
# sha256 of PartiPrompts.tsv as github.com/google-research/parti publishes it (unchanged since its first
# release, commit 2c99f66): 1632 prompts.
PUBLISHED_PARTI_SHA256 = "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb"


def test_parti_loads_the_published_file():
    suite = get_suite("parti")
    assert (suite.name, suite.split, len(suite)) == ("parti", "unseen", 1632)
    categories = {p.category for p in suite.prompts}
    assert len(categories) == 12 and {"Abstract", "Animals", "World Knowledge", "Food & Beverage"} <= categories
    assert sum(p.category == "Animals" for p in suite.prompts) == 314
    assert suite.prompts[0] == Prompt("parti-0000", "bond", "Abstract")
    assert len({p.prompt_id for p in suite.prompts}) == 1632
    # Quotes inside prompts are text, not CSV quoting.
    assert any('"Fly an airplane"' in p.prompt for p in suite.prompts)
    assert get_suite("parti").version == suite.version


def test_shipped_parti_is_the_published_file_and_the_default(tmp_path):
    assert hashlib.sha256(SHIPPED_PARTI.read_bytes()).hexdigest() == PUBLISHED_PARTI_SHA256
    # Loaded from elsewhere (--suite parti:PATH), the same file is the same suite.
    copy = tmp_path / "PartiPrompts.tsv"
    copy.write_bytes(SHIPPED_PARTI.read_bytes())
    assert get_suite("parti", path=copy) == get_suite("parti")


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda lines: ["Prompt\tCategory"] + lines[1:], ":1: expected the tab-separated header"),
        (
            lambda lines: lines[:5] + ["a cat\tAnimals\tBasic"] + lines[5:],
            ":6: expected 4 tab-separated fields, found 3",
        ),
        (lambda lines: lines[:9] + ["\tAnimals\tBasic\t"] + lines[9:], ":10: empty prompt"),
    ],
)
def test_malformed_parti_names_file_and_line(tmp_path, edit, where):
    path = tmp_path / "parti.tsv"
    path.write_text("\n".join(edit(SHIPPED_PARTI.read_text(encoding="utf-8").splitlines())) + "\n", encoding="utf-8")
    with pytest.raises(HarnessError, match=f"^{path}{where}"):
        get_suite("parti", path=path)


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "parti.tsv"
    path.write_bytes(b"Prompt\tCategory\tChallenge\tNote\nok\tA\tB\t\ncaf\xe9\tA\tB\t\n")
    with pytest.raises(HarnessError, match=f"^{path}:3: not UTF-8"):
        get_suite("parti", path=path)


def write_hpdv2(root: Path) -> None:
    (root / "benchmark").mkdir(parents=True)
    for style in ("anime", "concept-art", "paintings", "photo"):
        (root / "benchmark" / f"{style}.json").write_text(
            json.dumps([f"{style} prompt {i}" for i in range(3)], indent=1)
        )


def test_hpdv2_from_a_local_directory(tmp_path):
    write_hpdv2(tmp_path)
    suite = get_suite("hpdv2", path=tmp_path)
    assert (suite.split, len(suite)) == ("unseen", 12)
    assert suite.prompts[3] == Prompt("hpdv2-concept-art-000", "concept-art prompt 0", "concept-art")
    # NAME:PATH, as the command line spells it.
    assert get_suite(f"hpdv2:{tmp_path}") == suite


def test_missing_suite_file_is_a_one_line_error(tmp_path):
    with pytest.raises(HarnessError, match=f"cannot read suite file {tmp_path / 'nope.tsv'}"):
        get_suite(f"parti:{tmp_path / 'nope.tsv'}")
    with pytest.raises(HarnessError, match="'toy-seen' does not read a file"):
        get_suite(f"toy-seen:{tmp_path}")


def test_malformed_hpdv2_names_file_and_line(tmp_path):
    write_hpdv2(tmp_path)
    paintings = tmp_path / "benchmark" / "paintings.json"
    paintings.write_text('[\n "a",\n "b",\n 7,\n "c"\n]')
    with pytest.raises(HarnessError, match=f"^{paintings}:4: entry 2 is not a non-empty string"):
        get_suite("hpdv2", path=tmp_path)
    paintings.write_text('[\n "a",\n "b" "c"\n]')
    with pytest.raises(HarnessError, match=f"^{paintings}:3: malformed JSON"):
        get_suite("hpdv2", path=tmp_path)
    paintings.unlink()
    with pytest.raises(HarnessError, match="paintings.json not found"):
        get_suite("hpdv2", path=tmp_path)


def test_drawbench_csv(tmp_path):
    path = tmp_path / "drawbench.csv"
    path.write_text('Prompts,Category\n"A red colored car.",Colors\n"A bird, scaring a scarecrow.",Conflicting\n')
    suite = get_suite("drawbench", path=path)
    assert suite.prompts == (
        Prompt("drawbench-000", "A red colored car.", "Colors"),
        Prompt("drawbench-001", "A bird, scaring a scarecrow.", "Conflicting"),
    )
    path.write_text('Prompts,Category\n"A red car.",Colors\n"",Colors\n')
    with pytest.raises(HarnessError, match=f"^{path}:3: empty prompt"):
        get_suite("drawbench", path=path)
    path.write_text("Prompt,Kind\nx,y\n")
    with pytest.raises(HarnessError, match=f"^{path}:1: missing column"):
        get_suite("drawbench", path=path)


def test_pickapic_captions_from_a_local_file(tmp_path):
    path = tmp_path / "test_unique.jsonl"
    path.write_text("".join(json.dumps({"caption": c, "label_0": 1.0}) + "\n" for c in ["a cat", " a dog "]))
    suite = get_suite("pickapic-test", path=path)
    assert (suite.split, [p.prompt for p in suite.prompts]) == ("seen", ["a cat", "a dog"])
    path.write_text(json.dumps({"text": "a cat"}) + "\n")
    with pytest.raises(HarnessError, match="no 'caption' column"):
        get_suite("pickapic-test", path=path)


@pytest.mark.parametrize("name", ["hpdv2", "pickapic-test", "drawbench"])
def test_hub_suites_offline_fail_with_one_line(harness_cache, name):
    with pytest.raises(HarnessError) as error:
        get_suite(name)
    message = str(error.value)
    assert "\n" not in message and f"--suite {name}:PATH" in message and "hub" in message


def test_hub_suites_are_cached_after_the_first_load(harness_cache):
    # The cached copy is what a hub download leaves behind; afterwards no hub is needed.
    from harness.api.suite import cached_prompts

    prompts = [Prompt("hpdv2-anime-000", "x", "anime")]
    assert cached_prompts("hpdv2", "test/repo", lambda: prompts) == tuple(prompts)
    assert cached_prompts("hpdv2", "test/repo", lambda: 1 / 0) == tuple(prompts)
    assert (harness_cache / "suites" / "hpdv2-test_repo.jsonl").exists()


@pytest.mark.parametrize("damage", ["cut short", "a row changed"])
def test_a_damaged_hub_suite_cache_is_fetched_again(harness_cache, capsys, damage):
    from harness.api.suite import cached_prompts

    hub_id = f"test/{damage.replace(' ', '-')}"
    prompts = [Prompt(f"hpdv2-anime-{n:03d}", f"prompt {n}", "anime") for n in range(3)]
    cached_prompts("hpdv2", hub_id, lambda: prompts)
    path = harness_cache / "suites" / f"hpdv2-{hub_id.replace('/', '_')}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    # Cut at a line's end (every remaining line parses), or one prompt edited: only the recorded hash tells.
    path.write_text("".join(lines[:2]) if damage == "cut short" else "".join(lines).replace("prompt 1", "prompt 9"))
    downloads = []
    assert cached_prompts("hpdv2", hub_id, lambda: downloads.append(1) or prompts) == tuple(prompts)
    assert downloads == [1]
    [line] = capsys.readouterr().out.splitlines()
    assert "warning: the cached prompts of suite hpdv2" in line and "fetched again" in line
    assert cached_prompts("hpdv2", hub_id, lambda: 1 / 0) == tuple(prompts)  # whole again: no download


def test_list_suites_counts_prompts_without_downloading(harness_cache):
    infos = {info.name: info for info in list_suites()}
    assert {"parti", "hpdv2", "pickapic-test", "drawbench"} <= set(infos)
    parti = infos["parti"]
    assert (parti.split, parti.n_prompts, len(parti.categories), parti.error) == ("unseen", 1632, 12, None)
    assert sum(parti.categories.values()) == 1632
    assert parti.cells()[2] == "1632" and "Animals 314" in parti.cells()[-1]
    assert "not downloaded yet" in infos["hpdv2"].error and infos["hpdv2"].cells()[-1].startswith("unavailable")


def test_normalize_caption():
    assert normalize_caption('  A Cat,  SLEEPING... on the "mat"! ') == "a cat sleeping on the mat"
    assert normalize_caption("émigré café") == "émigré café"


def test_caption_overlap_counts_prompts_found_in_training_captions():
    suite = Suite(
        "s", "unseen", (Prompt("0", "A red cube."), Prompt("1", "a blue ball"), Prompt("2", "a red cube on grass"))
    )
    captions = ["a  RED cube", "a blue ball!", "something else"]
    assert caption_overlap(suite, captions) == 2
    assert caption_overlap(suite, iter(captions)) == 2  # any iterable, read once
    assert caption_overlap(suite, ["red cube"]) == 0  # exact match only, not substrings
    # "bond" and "a cat" are PartiPrompts (lines 2 and 107 of the TSV).
    assert caption_overlap(get_suite("parti"), ["Bond.", "A CAT", "a cat sat"]) == 2


def test_a_users_prompt_file_is_a_suite(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text("a cat\n\n  a dog on a log \n")
    suite = get_suite(f"file:{text}")
    assert (suite.name, suite.split, suite.prompts) == (
        "mine",
        "unseen",
        (Prompt("mine-0000", "a cat"), Prompt("mine-0001", "a dog on a log")),
    )
    rows = tmp_path / "held_out.jsonl"
    rows.write_text('{"prompt_id": "c1", "prompt": "a cat", "category": "animal"}\n{"prompt_id": "c2"}\n')
    with pytest.raises(HarnessError, match=f"^{rows}:2: not a prompt row"):
        get_suite("file", path=rows, split="seen")
    # list_suites() shows the loader even though it needs a path.
    assert "needs a path" in {info.name: info for info in list_suites()}["file"].error


def test_a_prompt_file_is_named_and_split_as_the_user_says(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\na dog\n")
    suite = get_suite(f"mine={text}")
    assert (suite.name, suite.split, suite.prompts[1]) == ("mine", "unseen", Prompt("mine-0001", "a dog"))
    assert (get_suite(f"held.out={text}:seen").name, get_suite(f"held.out={text}:seen").split) == ("held.out", "seen")
    with pytest.raises(HarnessError, match="'toy-seen' is a registered suite's name"):
        get_suite(f"toy-seen={text}")
    with pytest.raises(HarnessError, match=r"a prompt file of your own is NAME=FILE\[:seen\|unseen\]"):
        get_suite(f"my suite={text}")


def test_an_unknown_suite_says_how_to_give_ones_own_prompts(tmp_path):
    with pytest.raises(
        HarnessError,
        match=r"unknown suite 'mine'; available: .*; a prompt file of your own is "
        r"--suites mine=FILE\[:seen\|unseen\]",
    ):
        check_suite_name(f"mine:{tmp_path / 'prompts.txt'}")  # the form the README once showed
    check_suite_name("toy-seen")
    check_suite_name(f"hpdv2:{tmp_path}")  # a registered suite's local copy
    check_suite_name(f"mine={tmp_path / 'prompts.txt'}")


def test_a_prompt_the_toy_scorer_cannot_read_is_refused_before_any_image(tmp_path):
    from harness.evaluation.evaluate import check_prompts_scorable

    text = tmp_path / "prompts.txt"
    text.write_text("a red circle on the left\nan orange square at the top\n")
    suite = get_suite(f"mine={text}")
    check_prompts_scorable([suite], ["toy-quality"])  # it reads no caption
    with pytest.raises(
        HarnessError,
        match=r"^suite 'mine', prompt 'mine-0001' \('an orange square at the top'\): "
        r"scorer 'toy-fidelity' cannot score it: unknown toy colour 'orange'",
    ):
        check_prompts_scorable([suite], ["toy-quality", "toy-fidelity"])
    check_prompts_scorable([get_suite("toy-seen"), get_suite("toy-unseen")], ["toy-fidelity"])


def test_suites_show_lists_a_suites_prompts_split_and_source(tmp_path):
    from support.cli import harness_main

    text = tmp_path / "prompts.txt"
    text.write_text("a red circle on the left\na blue square at the top\n")
    result = harness_main("suites", "--show", f"mine={text}:seen")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"mine: seen, 2 prompts, v{get_suite(f'mine={text}').version}; prompts of {text}"
    assert lines[2:] == [
        "prompt_id  category  prompt",
        "mine-0000  -         a red circle on the left",
        "mine-0001  -         a blue square at the top",
    ]
