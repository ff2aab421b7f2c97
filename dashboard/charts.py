"""Every chart the dashboard draws and `harness figure` saves, each built by one function.

The dashboard passes a chart to ``st.altair_chart``; ``save_chart`` writes the same chart as PNG,
SVG or PDF (Vega-Lite rendered by vl-convert, no browser) and as its Vega-Lite spec.  So a
figure in a paper is the chart on the page, made by the same code from the same numbers.
Nothing here imports Streamlit; the frames come from ``dashboard.data``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path

import altair as alt
import pandas as pd

from harness.atomic import replacing
from harness.errors import HarnessError
from harness.results.stats import VERDICTS

FORMATS = ("png", "svg", "pdf")
PNG_SCALE = 2  # twice the on-screen pixels: sharp in print
VERDICT_COLOURS = dict(zip(VERDICTS, ["#1a7f37", "#cf222e", "#6e7781", "#bf8700"]))


def zero_ticks(values: Sequence[float]) -> list[float]:
    """The ticks of a Δ axis: round steps spanning ``values`` and 0, with 0 always among them (a Δ is read
    against 0, which an axis left to itself may leave unlabelled)."""
    known = [v for v in values if v is not None and not math.isnan(v)]
    low, high = min([0.0, *known]), max([0.0, *known])
    if high == low:
        return [-1.0, 0.0, 1.0]
    rough = (high - low) / 4
    power = 10.0 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= rough)
    return [round(k * step, 12) for k in range(math.floor(low / step), math.ceil(high / step) + 1)]


def _tick_format(ticks: Sequence[float]) -> str:
    """A d3 format with as many decimals as the ticks' step needs (the same on every label)."""
    step = ticks[1] - ticks[0]
    decimals = next(d for d in range(13) if abs(round(step, d) - step) < 1e-9 * step)
    return f".{decimals}f"


def delta_chart(
    frame: pd.DataFrame, *, y_title: str, facet_title: str, x_title: str, order: Sequence[str], title: str = ""
) -> alt.FacetChart:
    """Δ vs the base with its 95 % CI, a row per ``y``, a panel per ``facet`` (``dashboard.data.delta_frame``).

    The colour is the CI's verdict, the legend listing the verdicts drawn; a row whose CI is missing (one
    prompt) keeps its point.  The Δ axis spans 0 and labels it (``zero_ticks``)."""
    rows = alt.Chart().encode(y=alt.Y("y:N", sort=list(order), title=y_title))
    drawn = [v for v in VERDICT_COLOURS if v in set(frame["verdict"])] or list(VERDICT_COLOURS)
    colour = alt.Color(
        "verdict:N", title="95% CI", scale=alt.Scale(domain=drawn, range=[VERDICT_COLOURS[v] for v in drawn])
    )
    ticks = zero_ticks([*frame["delta"], *frame["low"], *frame["high"]])
    x = alt.X(
        "low:Q",
        title=x_title,
        scale=alt.Scale(domain=[ticks[0], ticks[-1]], nice=False, zero=False),
        axis=alt.Axis(values=ticks, format=_tick_format(ticks), labelOverlap=False),
    )
    intervals = rows.mark_rule(strokeWidth=2).encode(x=x, x2="high:Q", color=colour)
    points = rows.mark_point(filled=True, size=60, opacity=1).encode(
        x="delta:Q",
        color=colour,
        tooltip=[
            "facet:N",
            "y:N",
            alt.Tooltip("delta:Q", format="+.4g", title="Δ"),
            alt.Tooltip("low:Q", format="+.4g", title="CI low"),
            alt.Tooltip("high:Q", format="+.4g", title="CI high"),
            alt.Tooltip("n_prompts:Q", title="prompts"),
            "verdict:N",
        ],
    )
    zero = alt.Chart().mark_rule(color="black", strokeDash=[4, 4]).encode(x=alt.datum(0))
    layers = alt.layer(zero, intervals, points, data=frame).properties(width=260)
    return layers.facet(column=alt.Column("facet:N", title=facet_title)).properties(title=title)


def win_rate_chart(matrix: pd.DataFrame, order: Sequence[str], title: str = "") -> alt.LayerChart:
    """Heatmap of ``harness.results.stats.win_rate_matrix``: cell [row, column] = the row method's win rate."""
    cells = matrix.rename_axis(index="method", columns="against").stack(future_stack=True)
    cells = cells.rename("win_rate").reset_index()
    base = alt.Chart(cells).encode(
        x=alt.X("against:N", sort=list(order), title="against (column)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("method:N", sort=list(order), title="method (row)"),
    )
    heat = base.mark_rect().encode(
        color=alt.Color("win_rate:Q", scale=alt.Scale(domain=[0, 1], scheme="redblue"), title="win rate"),
        tooltip=["method", "against", alt.Tooltip("win_rate:Q", format=".1%")],
    )
    # No label on the diagonal (a method against itself), which holds no number.
    text = (
        base.transform_filter("isValid(datum.win_rate)")
        .mark_text()
        .encode(
            text=alt.Text("win_rate:Q", format=".0%"),
            color=alt.condition("abs(datum.win_rate - 0.5) > 0.3", alt.value("white"), alt.value("black")),
        )
    )
    # A fixed band per method: without it Vega-Lite draws 20-pixel cells.
    return (heat + text).properties(width=alt.Step(64), height=alt.Step(48), title=title)


def image_grid_chart(grid: pd.DataFrame, methods: Sequence[str], px: int, title: str = "") -> alt.LayerChart:
    """Prompts (rows) × methods (columns), one image each at the same seed (``dashboard.data.image_grid``)."""
    order = list(dict.fromkeys(grid["row"]))
    base = alt.Chart(grid).encode(
        x=alt.X(
            "method:N",
            sort=list(methods),
            title=None,
            axis=alt.Axis(orient="top", labelAngle=0, ticks=False, domain=False, labelFontWeight="bold"),
        ),
        y=alt.Y("row:N", sort=order, title=None, axis=alt.Axis(ticks=False, domain=False, labelLimit=320)),
    )
    # Unsmoothed: a small image's thumbnail is already enlarged by whole pixels (``dashboard.data.thumbnail``).
    images = (
        base.transform_filter("isValid(datum.url)")
        .mark_image(width=px, height=px, smooth=False)
        .encode(url="url:N", tooltip=["method", "prompt", "seed"])
    )
    missing = base.transform_filter("!isValid(datum.url)").mark_text(color="#cf222e").encode(text=alt.value("no image"))
    return (
        (images + missing)
        .properties(width=alt.Step(px + 8), height=alt.Step(px + 8), title=title)
        .configure_view(stroke=None)
    )


def curve_chart(points: pd.DataFrame, methods: Sequence[str], y_title: str, title: str = "") -> alt.LayerChart:
    """A metric over training steps (``harness.evaluation.curves.curve_points`` of one suite and metric): a line per method
    through its means, its 95 % CI as a band."""
    base = alt.Chart(points).encode(
        x=alt.X("step:Q", title="training step"), color=alt.Color("method:N", sort=list(methods))
    )
    band = base.mark_area(opacity=0.2).encode(
        y=alt.Y("ci_low:Q", title=y_title, scale=alt.Scale(zero=False)), y2="ci_high:Q"
    )
    line = base.mark_line(point=True).encode(
        y="mean:Q",
        tooltip=[
            "method",
            "step",
            alt.Tooltip("mean:Q", format=".4g"),
            alt.Tooltip("ci_low:Q", format=".4g"),
            alt.Tooltip("ci_high:Q", format=".4g"),
        ],
    )
    return (band + line).properties(title=title)


def check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise HarnessError(f"unknown figure format {', '.join(unknown)}; expected some of {', '.join(FORMATS)}")
    if importlib.util.find_spec("vl_convert") is None:  # altair's renderer for static files
        raise HarnessError("writing figures needs vl-convert-python (pip install vl-convert-python)")


def save_chart(chart: alt.TopLevelMixin, stem: Path, formats: Sequence[str]) -> list[Path]:
    """``stem``.{format} for each format, plus ``stem``.vl.json (the Vega-Lite spec); each written atomically."""
    check_formats(formats)
    written = []
    spec = stem.with_name(stem.name + ".vl.json")
    with replacing(spec) as tmp:
        Path(tmp).write_text(json.dumps(chart.to_dict(), indent=1))
    written.append(spec)
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        with replacing(target) as tmp:
            chart.save(str(tmp), format=fmt, **({"scale_factor": PNG_SCALE} if fmt == "png" else {}))
        written.append(target)
    return written
