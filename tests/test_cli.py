import csv
import json
import sqlite3

import pytest

from conftest import harness_cli
from harness.cli import _parse_overrides, format_table
from harness.errors import HarnessError
from harness.stats import SIGNAL_MARK, SIGNAL_NOTE
from results_fixture import SUITES, as_schema_1, build_results_dir


def test_unknown_method_is_one_line_listing_the_available_ones(tmp_path):
    result = harness_cli("run", "--methods", "nosuch", "--out", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown method 'nosuch'" in lines[0] and "dpo" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_preset_and_missing_results_fail_cleanly(tmp_path):
    result = harness_cli("run", "--methods", "dpo", "--preset", "sd99", "--out", str(tmp_path))
    assert result.returncode == 2 and "unknown preset 'sd99'" in result.stderr
    result = harness_cli("leaderboard", "--out", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no results" in result.stderr and "Traceback" not in result.stderr


def test_methods_lists_each_with_a_description():
    result = harness_cli("methods")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "dpo" in lines and len(lines["dpo"].split()) > 1


def test_overrides_parse_values_and_targets():
    assert _parse_overrides(["dpo.beta=2000", "lr=1e-4"], ["dpo", "dro"]) == {
        "dpo": {"beta": 2000, "lr": 1e-4},
        "dro": {"lr": 1e-4},
    }
    assert _parse_overrides(["dpo.name=abc"], ["dpo"]) == {"dpo": {"name": "abc"}}
    with pytest.raises(HarnessError):
        _parse_overrides(["beta"], ["dpo"])


def test_table_shows_ci_delta_and_win_rate():
    rows = [
        {"method": "base", "suite": "s", "metric": "m", "n": 4, "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
         "delta_vs_base": None, "delta_ci_low": None, "delta_ci_high": None, "win_rate_vs_base": None},
        {"method": "dpo", "suite": "s", "metric": "m", "n": 4, "mean": 0.7, "ci_low": 0.6, "ci_high": 0.8,
         "delta_vs_base": 0.2, "delta_ci_low": 0.1, "delta_ci_high": 0.3, "win_rate_vs_base": 0.75},
    ]
    table = format_table(rows).splitlines()
    assert table[2].split()[:3] == ["dpo", "s", "m"]
    assert "0.2 [0.1, 0.3]" in table[2] and "75.0%" in table[2]


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

    unet_dirs = [row[0] for row in db.execute("SELECT path FROM checkpoints")]
    assert unet_dirs and UNet2DConditionModel.from_pretrained(unet_dirs[-1]) is not None

    result = harness_cli("leaderboard", "--out", str(tiny_run_dir), "--format", "json")
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
    again = harness_cli("run", "--preset", "tiny", "--methods", "dpo", "--out", str(tiny_run_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert sqlite3.connect(tiny_run_dir / "results.db").execute("SELECT COUNT(*) FROM scores").fetchone()[0] == n_scores


def test_real_model_paths_fail_with_one_line_offline(tmp_path):
    """SD1.5 needs downloaded weights: offline, the user gets one line naming the model and the fix."""
    result = harness_cli("run", "--methods", "dpo", "--preset", "sd15", "--pretrained", "--suites", "parti",
                         "--max-prompts", "1", "--out", str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in error and "download" in error
    assert "Traceback" not in result.stderr
    result = harness_cli("run", "--methods", "sft", "--preset", "sd15", "--pretrained", "--out", str(tmp_path))
    assert result.returncode == 2 and "no published weights for 'sft'" in result.stderr


def test_leaderboard_marks_the_metric_a_method_was_trained_on(tmp_path):
    results = build_results_dir(tmp_path / "results")  # dro's experts were ranked by pickscore
    trained = {("dro", suite, "pickscore") for suite in SUITES}

    table = harness_cli("leaderboard", "--out", str(results))
    assert table.returncode == 0, table.stderr
    *rows, note = table.stdout.strip().splitlines()[1:]
    assert note == SIGNAL_NOTE
    assert {tuple(row.split()[:3]) for row in rows if SIGNAL_MARK in row} == trained
    assert all(row.split()[4].endswith(SIGNAL_MARK) for row in rows if SIGNAL_MARK in row)  # on the mean

    marked = json.loads(harness_cli("leaderboard", "--out", str(results), "--format", "json").stdout)
    assert {(r["method"], r["suite"], r["metric"]) for r in marked if r["trained_on_signal"]} == trained
    assert all(isinstance(r["trained_on_signal"], bool) for r in marked)
    table = list(csv.DictReader(harness_cli("leaderboard", "--out", str(results), "--format", "csv").stdout.splitlines()))
    assert {(r["method"], r["suite"], r["metric"]) for r in table if r["trained_on_signal"] == "True"} == trained

    # A results directory of store schema 1 records no signals: the same numbers, nothing marked,
    # and reading it leaves it at schema 1.
    old = as_schema_1(results)
    rows = json.loads(harness_cli("leaderboard", "--out", str(old), "--format", "json").stdout)
    assert rows == [dict(r, trained_on_signal=False) for r in marked]
    with sqlite3.connect(old / "results.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
