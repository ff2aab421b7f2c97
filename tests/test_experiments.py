"""Experiments side by side: several results directories in one leaderboard and one dashboard."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from harness.cli import main
from harness.errors import HarnessError
from harness.results.experiments import parse_experiments
from harness.run import leaderboard

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
SHIFT = 0.05  # what the second experiment's dpo gained on every score


def _second_experiment(tiny_run_dir: Path, tmp_path: Path, sql: str) -> Path:
    """A copy of the tiny run, changed by ``sql`` (through SQLite, as another run's results would differ)."""
    copy = shutil.copytree(tiny_run_dir, tmp_path / "second")
    with closing(sqlite3.connect(copy / "results.db")) as conn, conn:
        conn.execute(sql)
    return copy


def _app(outs: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("HARNESS_OUT", outs)
    return AppTest.from_file(str(APP), default_timeout=60).run()


def test_two_experiments_compare_in_one_leaderboard_each_against_its_own_base(
    tiny_run_dir, tmp_path, capsys, monkeypatch
):
    second = _second_experiment(
        tiny_run_dir,
        tmp_path,
        f"""
        UPDATE scores SET value = value + {SHIFT} WHERE image_id IN
        (SELECT image_id FROM images JOIN runs USING (run_id) WHERE runs.method = 'dpo')""",
    )
    assert main(["leaderboard", "--out", f"A={tiny_run_dir}", "--out", f"B={second}", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted({r["method"] for r in rows}) == ["A/base", "A/dpo", "B/base", "B/dpo"]

    def renamed(experiment: str, own: list[dict]) -> list[dict]:
        return [{**r, "method": f"{experiment}/{r['method']}"} for r in own]

    # Each experiment's rows are its own leaderboard's, Δ and win rate against its own base.
    assert [r for r in rows if r["method"].startswith("A/")] == renamed("A", leaderboard(tiny_run_dir))
    assert [r for r in rows if r["method"].startswith("B/")] == renamed("B", leaderboard(second))
    deltas = {(r["method"], r["suite"], r["metric"]): r["delta_vs_base"] for r in rows}
    for (method, suite, metric), delta in deltas.items():
        if method == "B/dpo":
            assert delta == pytest.approx(deltas["A/dpo", suite, metric] + SHIFT)

    at = _app(f"A={tiny_run_dir},B={second}", monkeypatch)
    assert not at.exception, at.exception
    assert at.dataframe[0].value["method"].tolist() == ["A/base", "A/dpo", "B/base", "B/dpo"]
    at.sidebar.radio(key="page").set_value("Compare").run()
    assert not at.exception, at.exception
    captions = [img.caption for image in at.image for img in image.proto.imgs]
    # Every method's images, read from its own experiment's directory.
    assert len(captions) == 4 * len({r["image_index"] for r in _images(tiny_run_dir, "toy-seen")})
    assert not [c for c in at.caption if c.value.startswith("missing file")]
    at.sidebar.radio(key="page").set_value("Run details").run()
    runs = at.dataframe[0].value
    assert runs["method"].tolist() == ["A/base", "A/dpo", "B/base", "B/dpo"] and runs["run"].is_unique


def _images(results_dir: Path, suite: str) -> list[dict]:
    with closing(sqlite3.connect(results_dir / "results.db")) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM images WHERE suite = ? AND prompt_id = (SELECT MIN(prompt_id) FROM images "
            "WHERE suite = ?) AND run_id = 1",
            (suite, suite),
        ).fetchall()
    return [dict(r) for r in rows]


def test_experiments_with_another_suite_version_are_refused_in_one_line(tiny_run_dir, tmp_path, capsys, monkeypatch):
    second = _second_experiment(
        tiny_run_dir, tmp_path, "UPDATE images SET suite_version = 'other' WHERE suite = 'toy-seen'"
    )
    assert main(["leaderboard", "--out", f"{tiny_run_dir},{second}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "suite 'toy-seen'" in error and "other prompts" in error
    assert f"in {tiny_run_dir.name}" in error and "in second" in error  # named after their directories

    at = _app(f"{tiny_run_dir},{second}", monkeypatch)
    assert not at.exception
    assert [e.value for e in at.error] == [error.removeprefix("harness: error: ").strip()]


def test_experiments_need_names_of_their_own(tmp_path):
    assert [e.name for e in parse_experiments([f"{tmp_path}/a,x={tmp_path}/b", f"{tmp_path}/c"])] == ["a", "x", "c"]
    with pytest.raises(HarnessError, match="two experiments named 'run'.*NAME=DIR"):
        parse_experiments([f"{tmp_path}/one/run", f"{tmp_path}/two/run"])


def _two_experiments(tmp_path: Path) -> tuple[Path, Path]:
    from support.results_fixture import build_results_dir

    return build_results_dir(tmp_path / "a"), build_results_dir(tmp_path / "b")


def test_side_by_side_rows_interleave_the_experiments_in_the_order_given(tmp_path, capsys):
    """Each suite and metric holds every experiment's rows together, B (given first) before A, each base
    first: the rows compared stand next to each other, in the leaderboard and in the paper tables."""
    a, b = _two_experiments(tmp_path)
    assert main(["leaderboard", "--out", f"B={b}", "--out", f"A={a}", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    groups = [(r["suite"], r["metric"]) for r in rows]
    assert len([1 for before, after in zip(groups, groups[1:]) if before != after]) == len(set(groups)) - 1
    assert [r["method"] for r in rows[:6]] == ["B/base", "B/dpo", "B/dro", "A/base", "A/dpo", "A/dro"]
    assert main(["leaderboard", "--out", f"B={b}", "--out", f"A={a}", "--format", "markdown"]) == 0
    methods = [line.split(" | ")[0].removeprefix("| ") for line in capsys.readouterr().out.splitlines()[4:10]]
    assert methods == ["B/base", "B/dpo", "B/dro", "A/base", "A/dpo", "A/dro"]
    from dashboard.data import load_experiments  # the dashboard's pages, the figures' charts

    assert load_experiments(parse_experiments([f"B={b}", f"A={a}"])).methods == methods


@pytest.mark.slow  # renders the figures, as tests/test_figures.py
def test_figure_and_export_use_every_out_side_by_side(tmp_path, capsys):
    a, b = _two_experiments(tmp_path)
    figures, export = tmp_path / "figures", tmp_path / "export"
    assert main(["figure", "--out", f"B={b}", "--out", f"A={a}", "--figures", str(figures), "--formats", "png"]) == 0
    spec = json.loads((figures / "delta-pickscore-v1.vl.json").read_text())
    (drawn,) = spec["datasets"].values()
    assert {row["method"] for row in drawn} == {"B/dpo", "B/dro", "A/dpo", "A/dro"}
    grid = json.loads((figures / "grid-toy-seen.vl.json").read_text())
    assert {row["method"] for rows in grid["datasets"].values() for row in rows} == {
        f"{e}/{m}" for e in "AB" for m in ("base", "dpo", "dro")
    }
    assert main(["export", "--out", f"B={b}", "--out", f"A={a}", "--dest", str(export)]) == 0
    import pandas as pd

    scores = pd.read_csv(export / "scores.csv")
    assert scores.columns[0] == "experiment" and scores["experiment"].tolist()[0] == "B"
    assert scores.groupby("experiment").size().to_dict() == {"A": len(scores) // 2, "B": len(scores) // 2}
    capsys.readouterr()
    # Of several directories none is the obvious place to write: the user names it, before anything is made.
    for command, option in (("figure", "--figures"), ("export", "--dest")):
        assert main([command, "--out", str(a), "--out", str(b)]) == 2
        error = capsys.readouterr().err
        assert error == f"harness: error: several --out side by side: say where to write with {option} DIR\n"
    assert not (a / "figures").exists() and not (b / "export").exists()
