import argparse
import csv
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import harness_cli
from harness.cli import main
from harness.cli.options import parse_overrides
from harness.cli.output import format_table
from harness.cli.parser import HelpFormatter, build_parser
from harness.errors import HarnessError
from harness.results.stats import SIGNAL_MARK, SIGNAL_NOTE
from harness.results.text_table import text_table
from harness.workers import one_cpu_thread
from support.cli import harness_main
from support.results_fixture import SUITES, as_schema, build_results_dir


def test_unknown_method_is_one_line_listing_the_available_ones(tmp_path):
    result = harness_main("run", "--methods", "nosuch", "--out", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown method 'nosuch'" in lines[0] and "dpo" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_preset_and_missing_results_fail_cleanly(tmp_path):
    result = harness_main("run", "--methods", "dpo", "--preset", "sd99", "--out", str(tmp_path))
    assert result.returncode == 2 and "unknown preset 'sd99'" in result.stderr
    result = harness_main("leaderboard", "--out", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no results" in result.stderr and "Traceback" not in result.stderr


def test_methods_lists_each_with_a_description():
    result = harness_main("methods")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "dpo" in lines and len(lines["dpo"].split()) > 1


def test_overrides_parse_values_and_targets():
    assert parse_overrides(["dpo.beta=2000", "lr=1e-4"], ["dpo", "dro"]) == {
        "dpo": {"beta": 2000, "lr": 1e-4},
        "dro": {"lr": 1e-4},
    }
    assert parse_overrides(["dpo.name=abc"], ["dpo"]) == {"dpo": {"name": "abc"}}
    with pytest.raises(HarnessError):
        parse_overrides(["beta"], ["dpo"])


def test_table_shows_ci_delta_and_win_rate():
    rows = [
        {
            "method": "base",
            "suite": "s",
            "metric": "m",
            "n": 4,
            "mean": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.6,
            "delta_vs_base": None,
            "delta_ci_low": None,
            "delta_ci_high": None,
            "win_rate_vs_base": None,
        },
        {
            "method": "dpo",
            "suite": "s",
            "metric": "m",
            "n": 4,
            "mean": 0.7,
            "ci_low": 0.6,
            "ci_high": 0.8,
            "delta_vs_base": 0.2,
            "delta_ci_low": 0.1,
            "delta_ci_high": 0.3,
            "win_rate_vs_base": 0.75,
        },
    ]
    table = format_table(rows).splitlines()
    assert table[2].split()[:3] == ["dpo", "s", "m"]
    assert "0.2 [0.1, 0.3]" in table[2] and table[2].endswith("75.0%")
    # --ci adds the win rate's Wilson interval (3 of 4 prompts: [30.1%, 95.4%], computed by hand).
    rows[1] |= {"win_ci_low": 0.30064, "win_ci_high": 0.95440}
    assert format_table(rows, ci=True).splitlines()[2].endswith("75.0% [30.1%, 95.4%]")


@pytest.mark.slow
def test_tiny_end_to_end_run(tiny_run_dir):
    """The acceptance of the walking skeleton, on the tiny preset."""
    db = sqlite3.connect(tiny_run_dir / "results.db")
    n_images = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    n_scorers = db.execute("SELECT COUNT(DISTINCT scorer) FROM scores").fetchone()[0]
    n_scores = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    assert n_images > 0 and n_scorers >= 1
    assert n_scores == n_images * n_scorers  # one score row per (image, scorer)
    # The UNet is in diffusers format, loadable outside the harness.
    from diffusers import UNet2DConditionModel

    unet_dirs = [tiny_run_dir / row[0] for row in db.execute("SELECT path FROM checkpoints")]  # relative to it
    assert unet_dirs and UNet2DConditionModel.from_pretrained(unet_dirs[-1]) is not None

    result = harness_main("leaderboard", "--out", str(tiny_run_dir), "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {"method", "suite", "metric", "n", "mean"} <= set(rows[0])
    assert {r["suite"] for r in rows if r["method"] == "dpo"} == {"toy-seen", "toy-unseen"}
    base_rows = [r for r in rows if r["method"] == "base"]
    assert base_rows and all(r["delta_vs_base"] is None for r in base_rows)
    # The toy pairs are labelled by raters who read the toy rewards: every metric is dpo's training signal.
    assert all(r["trained_on_signal"] for r in rows if r["method"] == "dpo")
    assert not any(r["trained_on_signal"] for r in base_rows)

    # A rerun resumes: nothing is trained, generated or scored twice.
    again = harness_main("run", "--preset", "tiny", "--methods", "dpo", "--out", str(tiny_run_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert sqlite3.connect(tiny_run_dir / "results.db").execute("SELECT COUNT(*) FROM scores").fetchone()[0] == n_scores


def test_real_model_paths_fail_with_one_line_offline(tmp_path):
    """SD1.5 needs downloaded weights: offline, the user gets one line naming the model and the fix."""
    result = harness_main(
        "run",
        "--methods",
        "dpo",
        "--preset",
        "sd15",
        "--pretrained",
        "--suites",
        "parti",
        "--max-prompts",
        "1",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in error and "download" in error
    assert "Traceback" not in result.stderr
    result = harness_main("run", "--methods", "sft", "--preset", "sd15", "--pretrained", "--out", str(tmp_path))
    assert result.returncode == 2 and "no published weights for 'sft'" in result.stderr


def test_leaderboard_marks_the_metric_a_method_was_trained_on(tmp_path):
    results = build_results_dir(tmp_path / "results")  # dro's experts were ranked by pickscore
    trained = {("dro", suite, "pickscore") for suite in SUITES}

    table = harness_main("leaderboard", "--out", str(results))
    assert table.returncode == 0, table.stderr
    *rows, note = table.stdout.strip().splitlines()[1:]
    assert note == SIGNAL_NOTE
    assert {tuple(row.split()[:3]) for row in rows if SIGNAL_MARK in row} == trained
    assert all(row.split()[4].endswith(SIGNAL_MARK) for row in rows if SIGNAL_MARK in row)  # on the mean

    marked = json.loads(harness_main("leaderboard", "--out", str(results), "--format", "json").stdout)
    assert {(r["method"], r["suite"], r["metric"]) for r in marked if r["trained_on_signal"]} == trained
    assert all(isinstance(r["trained_on_signal"], bool) for r in marked)
    table = list(
        csv.DictReader(harness_main("leaderboard", "--out", str(results), "--format", "csv").stdout.splitlines())
    )
    assert {(r["method"], r["suite"], r["metric"]) for r in table if r["trained_on_signal"] == "True"} == trained

    # A results directory of store schema 1 records no signals: the same numbers, nothing marked,
    # and reading it leaves it at schema 1.
    old = as_schema(results, "1")
    rows = json.loads(harness_main("leaderboard", "--out", str(old), "--format", "json").stdout)
    assert rows == [dict(r, trained_on_signal=False) for r in marked]
    with sqlite3.connect(old / "results.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)


# --- the newcomer's path (issue 21) -----------------------------------------------------------------

EXAMPLE_PLUGIN = str(Path(__file__).parents[1] / "examples" / "desirable_sft.py")


def test_plugin_option_works_before_or_after_the_command(tmp_path):
    for args in (["--plugin", EXAMPLE_PLUGIN, "methods"], ["methods", "--plugin", EXAMPLE_PLUGIN]):
        result = harness_main(*args)
        assert result.returncode == 0, result.stderr
        assert "desirable-sft" in result.stdout
    # After `run`: the plugin's method is known (the error is about its weights, not an unknown option or method),
    # and on a preset without published weights the error names the presets that have them.
    result = harness_main(
        "run", "--plugin", EXAMPLE_PLUGIN, "--methods", "desirable-sft", "--pretrained", "--out", str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "harness: error: preset 'toy' has no published weights for any method; --pretrained works with "
        "--preset sd15 (dpo, dro, kto, smpo) or --preset sdxl (dpo, mapo, smpo)"
    ]


def _commands_and_options():
    from harness.cli.reference import _commands

    for command in _commands(build_parser()):
        for action in command._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield command, action


def test_every_option_of_every_command_has_help_and_shows_its_default():
    commands = {command.prog for command, _ in _commands_and_options()}
    assert {"harness run", "harness train", "harness data experts", "harness presets"} <= commands
    for command, action in _commands_and_options():
        assert action.help, f"{command.prog} {action.option_strings[0]} has no help"
        assert "--plugin" in command.format_help(), command.prog  # every command lists the options of every command
        if action.default not in (None, False, [], argparse.SUPPRESS):
            shown = ",".join(action.default) if isinstance(action.default, list) else str(action.default)
            assert f"(default: {shown})" in HelpFormatter(command.prog)._expand_help(action), action.option_strings
    # `--out` of the commands that read results says so.
    for prog in ("leaderboard", "export", "dashboard", "figure", "runs"):
        out = next(a for c, a in _commands_and_options() if c.prog == f"harness {prog}" and "--out" in a.option_strings)
        assert "results directory to read" in out.help and "harness run --out" in out.help, prog


def test_out_has_one_meaning_per_declaration():
    """Every command's --out is a results directory written, one read, several compared, or an output directory
    that is no results directory, and its help says which (harness/cli/options.py declares each once)."""
    meanings = (
        "results directory to write, or to add to",
        "results directory to read (",
        "results directory to read, written by",
        "directory to write, not a results directory",
    )
    found = {c.prog: a.help for c, a in _commands_and_options() if "--out" in a.option_strings}
    assert {prog: next(m for m in meanings if help.startswith(m)) for prog, help in found.items()} == {
        **dict.fromkeys(["harness run", "harness evaluate", "harness score", "harness reproduce"], meanings[0]),
        **dict.fromkeys(["harness runs", "harness verify"], meanings[1]),
        **dict.fromkeys(["harness leaderboard", "harness figure", "harness export", "harness dashboard"], meanings[2]),
        **dict.fromkeys(
            ["harness train", "harness generate", "harness data experts", "harness agreement"], meanings[3]
        ),
    }


def test_the_command_list_and_a_mistyped_command_load_no_heavy_library():
    """`harness --help` and a mistyped command import no command's module, so no torch, diffusers, ...: the parser
    imports only the invoked command's module (which imports what the command runs)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom harness.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', "
        "'numpy', 'pandas', 'streamlit', 'dashboard', 'methods', 'toyworld'}))"
    )
    for words in (["--help"], ["rnu", "--out", "x"], ["--out", "x"]):
        loaded = subprocess.run([sys.executable, "-c", code, *words], capture_output=True, text=True, timeout=60)
        assert loaded.stdout.splitlines()[-1] == "[]", (words, loaded.stdout, loaded.stderr)
    help = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert help.returncode == 0 and "COMMAND" in help.stdout, help.stderr
    assert "evaluate any checkpoint into a results directory" in help.stdout  # listed, its module not imported


def test_cli_reference_is_the_parser_s():
    from harness.cli.reference import reference

    written = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == reference(), "docs/cli.md is out of date: python -m harness.cli.reference > docs/cli.md"
    assert "## `harness data experts`" in written and "`--grid-prompts GRID_PROMPTS`" in written


def test_text_table_aligns_columns_from_the_content():
    long = "a-scorer-with-a-very-long-name"
    lines = text_table(
        [
            ["name", "version", "description"],
            [long, "v1", "first"],
            ["b", "a-long-version-2", "x"],
            ["c", "unavailable: a long reason that runs on"],
        ]
    ).splitlines()
    assert lines[1].index("v1") == lines[2].index("a-long-version-2") == lines[0].index("version") == len(long) + 2
    assert lines[1].index("first") == lines[2].index("x") == len(long) + 2 + len("a-long-version-2") + 2
    assert lines[3] == "c" + " " * (len(long) + 1) + "unavailable: a long reason that runs on"  # a last cell runs on
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize("command", ["scorers", "methods", "suites"])
def test_listings_are_aligned_columns(command, capsys):
    assert main([command]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    second = header.split()[1]
    column = header.index(second)
    for row in rows:
        if "unavailable:" not in row:
            assert row[column - 2 : column] == "  " and row[column] != " ", row


def test_presets_show_each_description_and_main_settings(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    toy = lines.index(next(line for line in lines if line.startswith("toy ")))
    indent = lines[toy].index("synthetic world")
    assert lines[toy].endswith("(the default)")
    assert [line[:indent].strip() for line in lines[toy + 1 : toy + 4]] == ["", "", ""]
    settings = " ".join(line[indent:] for line in lines[toy + 1 : toy + 4])
    assert "base model toy" in settings and "suites toy-seen, toy-unseen" in settings
    assert "scorers toy-fidelity, toy-quality, toy-exact" in settings
    assert "evaluation: 4 images per prompt (toy-unseen 8), ddim 10 steps, CFG 3.0, 32x32 px" in settings
    sd15 = next(line for line in lines if line.startswith("sd15"))
    assert sd15.index("Stable Diffusion 1.5") == indent


@pytest.mark.slow  # a reader process that closes its pipe
def test_a_closed_pipe_ends_the_output_quietly(tmp_path):
    """`harness leaderboard ... | head -1`, or a pasted `--format table|csv` whose `csv` reads nothing."""
    import subprocess
    import sys

    results = build_results_dir(tmp_path / "results")
    reader = subprocess.Popen(
        [str(Path(sys.executable).with_name("harness")), "leaderboard", "--out", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader.stdout.close()  # the reader has gone before the first line is written
    _, err = reader.communicate(timeout=120)
    assert err == b"" and reader.returncode == 141


@pytest.mark.slow  # a real harness run
def test_progress_in_a_log_is_a_few_lines_not_redraws(tmp_path):
    """stdout and stderr to pipes, as `harness run > log 2>&1`: no carriage returns, a line per tenth."""
    result = harness_cli("run", "--preset", "tiny", "--methods", "dpo", "--set", "max_steps=30", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "\r" not in log
    training = [line for line in log.splitlines() if line.startswith("DPO: step ")]
    assert len(training) == 10 and training[-1].startswith("DPO: step 30/30 (100%) loss ")
    # Each names its model: the base's and dpo's jobs print into the same log side by side.
    sampling = [
        line
        for line in log.splitlines()
        if line.startswith(
            tuple(f"{model} / toy-{split}: img " for model in ("base", "dpo") for split in ("seen", "unseen"))
        )
    ]
    assert 4 <= len(sampling) <= 2 * 2 * 10 and all("%)" in line for line in sampling)
    assert {line.split(" / ")[0] for line in sampling} == {"base", "dpo"}


def test_progress_on_a_terminal_is_a_bar():
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new terminal is 0 columns wide
    code = "from harness.progress import progress_bar\nfor _ in progress_bar(range(50), total=50, desc='bar'): pass"
    subprocess.run([sys.executable, "-c", code], stderr=child, check=True, timeout=60)
    os.close(child)
    drawn = b""
    while True:
        try:
            chunk = os.read(parent, 100_000)
        except OSError:  # every writer has closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(parent)
    drawn = drawn.decode()
    assert "\r" in drawn and "50/50" in drawn and "bar: step" not in drawn


@pytest.mark.slow
def test_harness_train_trains_the_weights_harness_run_trains(tiny_run_dir, tiny_model_dir, tmp_path):
    """The same method, preset, data and seed: byte-identical weights (the same plan, data steps, seed and one CPU
    thread); on a toy-world preset `harness train` makes the world's own data, as `harness run` does, without --data."""
    result = harness_main("train", "--preset", "tiny", "--method", "dpo", "--out", str(tmp_path / "alone"))
    assert result.returncode == 0, result.stderr[-3000:]
    weights = Path("final") / "unet" / "diffusion_pytorch_model.safetensors"
    trained = (tmp_path / "alone" / weights).read_bytes()
    assert trained == (tiny_run_dir / "models" / "dpo" / weights).read_bytes()
    assert trained != (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()  # it trained
    assert (tmp_path / "alone" / "data" / "pairs.jsonl").read_bytes() == (
        tiny_run_dir / "data" / "pairs.jsonl"
    ).read_bytes()


@pytest.mark.parametrize("command", [["run", "--methods", "dpo"], ["train", "--method", "dpo"]])
def test_set_for_a_method_not_trained_is_the_same_error_in_run_and_train(command, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*command, "--preset", "tiny", "--set", "kto.beta=7", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "harness: error: --set names methods that are not trained: kto\n"
    assert not out.exists()


def test_generate_follows_the_preset_s_protocol(tiny_run_dir, tmp_path):
    """With its defaults, `harness generate` makes the images a run of that preset evaluates: the same bytes."""
    with one_cpu_thread(on_gpu=False):  # one thread, as the run's workers compute: the same sums on any machine
        result = harness_main("generate", "--preset", "tiny", "--suite", "toy-seen", "--out", str(tmp_path / "gen"))
    assert result.returncode == 0, result.stderr[-3000:]

    def images(manifest: Path) -> dict:
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        return {(r["prompt_id"], r["image_index"]): r["sha256"] for r in rows}

    run = images(tiny_run_dir / "images" / "base" / "toy-seen" / "manifest.jsonl")
    assert images(tmp_path / "gen" / "manifest.jsonl") == run and len(run) == 8
