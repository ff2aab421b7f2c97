"""Results a paper can use, on a real run over PartiPrompts: `harness leaderboard --by category`, the
Categories page, and `harness figure` writing the dashboard's own charts as files."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from conftest import PARTI_CATEGORIES
from dashboard.data import NO_INTERVAL, thumbnail
from harness.cli import main
from harness.results.stats import leaderboard, signals_by_method
from harness.results.store import Store

pytestmark = pytest.mark.slow
APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
GRID_PROMPTS = 3


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_leaderboard_by_category_on_parti(tiny_parti_run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tiny_parti_run_dir)
    rows = json.loads(run_cli(capsys, "leaderboard", "--out", out, "--by", "category", "--format", "json"))
    assert {(r["category"], r["n_prompts"]) for r in rows} == set(PARTI_CATEGORIES.items())
    assert {r["method"] for r in rows} == {"base", "dpo"}
    # Each category's row is the leaderboard of that category's prompts alone.
    with Store(tiny_parti_run_dir, readonly=True) as store:
        scores, signals = store.scores_frame(), signals_by_method(store.training_signals_frame())
    for category in PARTI_CATEGORIES:
        alone = leaderboard(scores[scores["category"] == category], base="base", signals=signals)
        assert [{k: v for k, v in r.items() if k != "category"} for r in rows if r["category"] == category] == alone
    vehicles = next(r for r in rows if r["category"] == "Vehicles" and r["method"] == "dpo")
    assert vehicles["delta_vs_base"] is not None and vehicles["delta_ci_low"] is None  # shown, without an interval

    table = run_cli(capsys, "leaderboard", "--out", out, "--by", "category").splitlines()
    assert table[0].split()[:4] == ["method", "suite", "category", "prompts"]
    vehicles_line = next(line for line in table if line.startswith("dpo") and "Vehicles" in line)
    assert vehicles_line.split()[3] == "1" and vehicles_line.count("[no CI: 1 prompt]") == 2

    markdown = run_cli(capsys, "leaderboard", "--out", out, "--by", "category", "--format", "markdown", "--ci")
    assert "| Vehicles (1 prompt) | dpo |" in markdown and "[–]" in markdown


def spec_data(spec: dict) -> pd.DataFrame:
    (values,) = spec["datasets"].values()
    return pd.DataFrame(values)


def test_figure_writes_the_dashboards_charts(
    tiny_parti_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = tmp_path / "figures"
    printed = run_cli(
        capsys,
        "figure",
        "--out",
        str(tiny_parti_run_dir),
        "--figures",
        str(figures),
        "--formats",
        "png,svg,pdf",
        "--grid-prompts",
        str(GRID_PROMPTS),
    ).split()
    stems = [
        "delta-toy-quality-1",
        "delta-by-category-parti-toy-quality-1",
        "winrate-parti-toy-quality-1",
        "grid-parti",
    ]
    assert sorted(printed) == sorted(
        str(figures / f"{stem}.{ext}") for stem in stems for ext in ("vl.json", "png", "svg", "pdf")
    )
    for stem in stems:
        with Image.open(figures / f"{stem}.png") as png:
            assert png.format == "PNG" and min(png.size) > 100
        assert (figures / f"{stem}.pdf").read_bytes().startswith(b"%PDF")

    def svg_text(stem: str) -> str:
        root = ET.parse(figures / f"{stem}.svg").getroot()
        return " ".join(node.text or "" for node in root.iter() if node.tag.endswith("text"))

    # The per-category chart names every category with its prompt count, the one without a CI too.
    text = svg_text("delta-by-category-parti-toy-quality-1")
    for category, n in PARTI_CATEGORIES.items():
        assert f"{category} ({n} prompt{'s' * (n > 1)})" in text
    assert "no CI (1 prompt)" in text and "higher is better" in text

    # The image grid: a prompt of each category × both methods, each image the stored one at image index 0.
    grid = spec_data(json.loads((figures / "grid-parti.vl.json").read_text()))
    assert len(grid) == GRID_PROMPTS * 2 and set(grid["method"]) == {"base", "dpo"}
    svg = ET.parse(figures / "grid-parti.svg").getroot()
    assert sum(node.tag.endswith("image") for node in svg.iter()) == GRID_PROMPTS * 2
    with Store(tiny_parti_run_dir, readonly=True) as store:
        images = store.images_frame().set_index(["method", "prompt", "image_index"])
    for cell in grid.itertuples():
        stored = images.loc[(cell.method, cell.prompt, 0)]
        assert cell.seed == stored["seed"]
        assert base64.b64decode(cell.url.split(",", 1)[1]) == thumbnail(tiny_parti_run_dir / stored["path"], 128)
    assert {images.loc[(cell.method, cell.prompt, 0), "category"] for cell in grid.itertuples()} == set(
        PARTI_CATEGORIES
    )

    # The dashboard's Categories page draws the same chart from the same numbers.
    monkeypatch.setenv("HARNESS_OUT", str(tiny_parti_run_dir))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.sidebar.radio(key="page").set_value("Categories").run()
    assert not at.exception, at.exception
    (chart,) = at.get("vega_lite_chart")
    shown, saved = (
        json.loads(chart.proto.spec),
        json.loads((figures / "delta-by-category-parti-toy-quality-1.vl.json").read_text()),
    )
    assert shown["spec"] == saved["spec"] and shown["facet"] == saved["facet"] and shown["title"] == saved["title"]
    (dataset,) = chart.proto.datasets
    drawn = convert_arrow_bytes_to_pandas_df(dataset.data.data)
    pd.testing.assert_frame_equal(drawn, spec_data(saved), check_dtype=False)
    table = at.dataframe[0].value.set_index(["category", "method"])
    assert table.loc[("Vehicles", "dpo"), "Δ 95% CI"] == NO_INTERVAL and table.loc[("Vehicles", "dpo"), "prompts"] == 1


def test_figure_refuses_bad_input_in_one_line(
    tiny_parti_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for args, message in (
        (["--formats", "png,gif"], "unknown figure format gif"),
        (["--base", "nosuch"], "no scores of the base 'nosuch'"),
        (["--grid-image", "7"], "no image 7 of any prompt of parti"),
    ):
        assert main(["figure", "--out", str(tiny_parti_run_dir), "--figures", str(tmp_path / "f"), *args]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "f").exists()  # checked before anything is written
    assert main(["figure", "--out", str(tmp_path / "empty")]) == 2
    assert "no results in" in capsys.readouterr().err
