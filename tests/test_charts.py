"""The charts `harness figure` writes and the dashboard draws, read back from the files: a Δ axis labels 0,
the legend lists the verdicts drawn, and an image grid spans a suite's categories with small images
enlarged by whole pixels."""

from __future__ import annotations

import base64
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import vl_convert
from PIL import Image

from dashboard.charts import delta_chart
from dashboard.data import spread_prompts, thumbnail
from harness.cli import main
from support.results_fixture import SUITES, build_results_dir


def _frame(deltas: list[tuple[float, float, float]], verdict: str) -> pd.DataFrame:
    methods = [f"m{i}" for i in range(len(deltas))]
    return pd.DataFrame(
        {
            "y": methods,
            "facet": "suite",
            "method": methods,
            "delta": [d for d, _, _ in deltas],
            "low": [low for _, low, _ in deltas],
            "high": [high for _, _, high in deltas],
            "n_prompts": 10,
            "verdict": verdict,
        }
    )


def _shown_texts(chart) -> list[str]:
    """The texts the SVG of ``chart`` shows (Vega keeps labels it hides for overlap, at opacity 0)."""
    root = ET.fromstring(vl_convert.vegalite_to_svg(chart.to_dict()))
    return [node.text for node in root.iter() if node.tag.endswith("text") and node.text and node.get("opacity") != "0"]


def _number(text: str) -> float | None:
    try:
        return float(text.replace("−", "-"))
    except ValueError:
        return None


@pytest.mark.parametrize(
    "deltas",
    [
        [(-0.019, -0.0215, -0.017), (-0.005, -0.007, -0.004)],  # Vega's own ticks hid 0 at the axis's end
        [(0.5, 0.45, 0.56), (1.0, 0.93, 1.08)],
        [(-0.001, -0.02, 0.019), (0.007, -0.024, 0.046), (-0.03, -0.052, -0.006)],
        [(3e-5, 1e-5, 6e-5)],
        [(0.0, 0.0, 0.0)],  # a method identical to the base
    ],
)
def test_the_delta_axis_always_labels_zero(deltas):
    verdict = "worse than base" if deltas[0][2] < 0 else "better than base"
    chart = delta_chart(_frame(deltas, verdict), y_title="method", facet_title="suite", x_title="Δ", order=[])
    ticks = [value for value in map(_number, _shown_texts(chart)) if value is not None]
    assert 0 in ticks, ticks
    assert min(ticks) <= min(low for _, low, _ in deltas) and max(ticks) >= max(high for _, _, high in deltas)


def test_the_legend_lists_only_the_verdicts_drawn():
    chart = delta_chart(
        _frame([(-0.02, -0.03, -0.01), (-0.01, -0.015, -0.005)], "worse than base"),
        y_title="method",
        facet_title="suite",
        x_title="Δ",
        order=[],
    )
    texts = _shown_texts(chart)
    assert "worse than base" in texts
    assert not {"better than base", "CI includes 0", "no CI (1 prompt)"} & set(texts)


def test_a_small_image_is_enlarged_by_whole_pixels_and_a_large_one_made_smaller(tmp_path: Path):
    small = Image.new("RGB", (32, 32), "white")
    small.putdata([(255, 0, 0) if (x // 3 + y // 5) % 2 else (0, 0, 255) for y in range(32) for x in range(32)])
    small.save(tmp_path / "small.png")
    with Image.open(io.BytesIO(thumbnail(tmp_path / "small.png", 128))) as enlarged:
        assert enlarged.format == "PNG" and enlarged.size == (128, 128)
        assert enlarged.convert("RGB").tobytes() == small.resize((128, 128), Image.Resampling.NEAREST).tobytes()
    Image.new("RGB", (512, 384), "green").save(tmp_path / "large.png")
    with Image.open(io.BytesIO(thumbnail(tmp_path / "large.png", 128))) as smaller:
        assert smaller.format == "JPEG" and smaller.size == (128, 96)


def test_the_grid_takes_its_prompts_in_turn_from_each_category(tmp_path: Path, capsys: pytest.CaptureFixture):
    prompts = pd.DataFrame(
        {"prompt_id": ["a1", "a2", "a3", "b1", "c1", "c2"], "category": ["a", "a", "a", "b", "c", None]}
    )
    assert spread_prompts(prompts, 4) == ["c2", "a1", "b1", "c1"]  # no category, then a, b, c: each a prompt in turn
    assert spread_prompts(prompts, 9) == ["c2", "a1", "b1", "c1", "a2", "a3"]

    results = build_results_dir(tmp_path / "results")
    assert (
        main(
            [
                "figure",
                "--out",
                str(results),
                "--figures",
                str(tmp_path / "figures"),
                "--formats",
                "png",
                "--grid-prompts",
                "2",
            ]
        )
        == 0
    )
    (grid,) = json.loads((tmp_path / "figures" / "grid-toy-seen.vl.json").read_text())["datasets"].values()
    categories = {prompt: category for _, prompt, category in SUITES["toy-seen"][1]}
    assert sorted({categories[cell["prompt"]] for cell in grid}) == ["animals", "shapes"]  # not the first two
    for cell in grid:  # the fixture's 32 px images, enlarged four times without smoothing
        with Image.open(io.BytesIO(base64.b64decode(cell["url"].split(",", 1)[1]))) as image:
            assert cell["url"].startswith("data:image/png;base64,") and image.size == (128, 128)
