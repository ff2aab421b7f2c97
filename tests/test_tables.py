"""Paper tables (`harness leaderboard --format latex|markdown`): mean, Δ vs base and win rate columns,
best per column by direction, versions in the headers where they differ, intervals on request, names
escaped, and LaTeX that compiles and fits the page."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.results.stats import leaderboard
from harness.results.tables import latex_escape, markdown_escape, paper_tables, to_latex, to_markdown

NASTY_METHOD = "my_method 100% & #1"
NASTY_CATEGORY = "Food & Beverage_2 #x 5%"
# Each method's offset: "good" is best on a higher-is-better metric, "low" on the lower-is-better one.
OFFSETS = {"base": 0.0, "good": 1.0, "low": -1.0, NASTY_METHOD: 0.5}


def scores(categories: int = 2, metrics: int = 2) -> pd.DataFrame:
    """Two metrics on one suite (pickscore, higher is better; a distance, lower is better), 12 prompts in
    two categories, one of them a single prompt; each method's images vary on their own (so win rates are
    not all 0 or 100%).  More ``categories`` and ``metrics`` make a wide table."""
    rng = np.random.default_rng(0)
    rows = []
    kinds = [("pickscore", "v1", True), ("fid_like", "v2#b", False)]
    kinds += [(f"metric_{i}", "1", True) for i in range(metrics - 2)]
    for metric, version, higher in kinds:
        noise = rng.normal(scale=0.1, size=(12, 2))
        for method, offset in OFFSETS.items():
            own = rng.normal(scale=0.4, size=(12, 2))
            for p in range(12):
                category = (
                    NASTY_CATEGORY if p == 0 else f"Category {p % (categories - 1)}" if categories > 2 else "Animals"
                )
                for j in range(2):
                    rows.append(
                        dict(
                            method=method,
                            suite="parti",
                            split="unseen",
                            metric=metric,
                            metric_version=version,
                            prompt_id=f"p{p}",
                            image_index=j,
                            seed=p + 12 * j,
                            category=category,
                            higher_is_better=higher,
                            value=20.0 + offset + noise[p, j] + own[p, j],
                        )
                    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return leaderboard(scores(), n_boot=200)


@pytest.fixture(scope="module")
def category_rows() -> list[dict]:
    return leaderboard(scores(), n_boot=200, by=["category"])


def _markdown_cells(markdown: str) -> dict[tuple[str, str], str]:
    """{(method, header): cell} of a one-table Markdown output."""
    lines = markdown.splitlines()
    header = [h.strip() for h in lines[2].strip("| ").split(" | ")]
    return {
        (values[0], column): value
        for line in lines[4:]
        if line.startswith("| ")
        for values in [[v.strip() for v in line.strip("| ").split(" | ")]]
        for column, value in zip(header[1:], values[1:])
    }


def test_the_best_value_of_each_column_is_bold_by_the_metrics_direction(rows):
    (table,) = paper_tables(rows)
    assert table.methods[0] == "base"
    markdown = to_markdown([table], statistics=["mean"])
    cells = _markdown_cells(markdown)
    higher, lower = "parti · pickscore", r"parti · fid\_like ↓"  # one version each: no version tag
    bold = {(method, column) for (method, column), value in cells.items() if "**" in value}
    assert bold == {("good", higher), ("low", lower)}
    assert r"fid\_like v2\#b, pickscore v1" in markdown.splitlines()[0]  # the versions, once, in the caption
    # One number format per column: as many decimals on every row.
    assert {len(value.strip("*").split(".")[1]) for (_, column), value in cells.items() if column == higher} == {2}

    latex = to_latex([table], statistics=["mean"])
    assert latex.count(r"\textbf") == 2 and "[" not in latex.split(r"\hline")[2]
    good = next(r["mean"] for r in rows if r["method"] == "good" and r["metric"] == "pickscore")
    assert rf"\textbf{{{good:.2f}}}" in latex


def test_delta_and_win_rate_columns_are_the_paired_comparison_with_the_base(rows):
    """Δ is the mean of the paired differences, the win rate the share of prompts whose median image beats the
    base's (in the metric's direction), with a Wilson interval: each computed here from the scores alone."""
    frame = scores()
    cells = _markdown_cells(to_markdown(paper_tables(rows), ci=True))
    z, tested = 1.959963984540054, set()
    for metric, column, higher in (
        ("pickscore", "parti · pickscore", True),
        ("fid_like", r"parti · fid\_like ↓", False),
    ):
        of = frame[frame["metric"] == metric].set_index(["method", "prompt_id", "image_index"])["value"]
        assert cells["base", f"{column} · Δ"] == cells["base", f"{column} · win %"] == "–"
        for method in OFFSETS.keys() - {"base"}:
            difference = of.loc[method] - of.loc["base"]
            medians = of.loc[method].groupby("prompt_id").median() - of.loc["base"].groupby("prompt_id").median()
            wins, n = int(((medians > 0) if higher else (medians < 0)).sum()), len(medians)
            p = wins / n
            centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            low, high = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
            delta = cells[markdown_escape(method), f"{column} · Δ"].replace("**", "")
            assert delta.split(" [")[0] == f"{difference.mean():+.2f}"
            win = cells[markdown_escape(method), f"{column} · win %"].replace("**", "")
            assert win == f"{100 * p:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
            tested.add(p)
    assert tested - {0.0, 1.0}  # not only the trivial win rates
    # The best Δ is the best by the metric's direction: the lowest on a lower-is-better metric.
    assert cells["low", r"parti · fid\_like ↓ · Δ"].startswith("**-")
    assert cells["good", "parti · pickscore · Δ"].startswith("**+")


def test_values_that_print_the_same_are_bold_alike():
    def row(method: str, mean: float, delta: float | None, win: float | None) -> dict:
        return dict(
            method=method,
            suite="s",
            metric="m",
            metric_version="1",
            higher_is_better=True,
            n_prompts=40,
            mean=mean,
            ci_low=None,
            ci_high=None,
            delta_vs_base=delta,
            delta_ci_low=None,
            delta_ci_high=None,
            win_rate_vs_base=win,
            win_ci_low=None,
            win_ci_high=None,
            trained_on_signal=False,
        )

    rows = [row("base", 0.4369, None, None), row("a", 0.4366, -0.000262, 0.45), row("b", 0.4365, -0.000333, 0.4250)]
    cells = _markdown_cells(to_markdown(paper_tables(rows)))
    assert [cells[m, "s · m · Δ"] for m in ("a", "b")] == ["**-0.0003**", "**-0.0003**"]  # -0.000262 vs -0.000333
    assert [cells[m, "s · m · win %"] for m in ("a", "b")] == ["**45.0**", "42.5"]


def test_columns_are_chosen_and_versions_tagged_only_where_they_differ(rows):
    markdown = to_markdown(paper_tables(rows), statistics=["delta", "win"])
    header = markdown.splitlines()[2]
    assert "mean" not in header and header.count("· Δ") == 2 and header.count("· win %") == 2
    with pytest.raises(HarnessError, match="--columns: unknown column median"):
        to_latex(paper_tables(rows), statistics=["mean", "median"])
    two_versions = scores()
    again = two_versions[two_versions["metric"] == "pickscore"].assign(metric_version="v2")
    two_versions = pd.concat([two_versions, again])
    header = to_markdown(paper_tables(leaderboard(two_versions, n_boot=50)), statistics=["mean"]).splitlines()[2]
    assert "parti · pickscore (v1)" in header and "parti · pickscore (v2)" in header
    assert r"parti · fid\_like ↓" in header and "v2\\#b" not in header


def test_per_category_tables_have_a_block_of_rows_per_category_and_cis_on_request(category_rows):
    """A row per category and method (the table grows down, not across), the category with its prompt
    count; bold marks each category's best; a single prompt says it has no interval."""
    (table,) = paper_tables(category_rows, by="category")
    markdown = to_markdown([table], ci=True)
    rows = {
        tuple(line.strip("| ").split(" | ")[:2]): line.strip("| ").split(" | ")[2:]
        for line in markdown.splitlines()[4:]
        if line.startswith("| ")
    }
    single, many = f"{markdown_escape(NASTY_CATEGORY)} (1 prompt)", "Animals (11 prompts)"
    assert sorted({category for category, _ in rows}) == [many, single]
    methods = [markdown_escape(method) for method in table.methods]
    assert [method for category, method in rows if category == many] == methods
    assert {cell for cell in rows[single, "base"]} >= {"–"} and all(
        cell.endswith("[–]") for cell in rows[single, "base"] if cell != "–"
    )  # the means: no interval
    assert all(cell.count("[") == 1 and "–" not in cell for cell in rows[many, "base"] if cell != "–")
    for category in (single, many):  # each column's best (ties all), within the category
        bold = [sum("**" in rows[category, m][i] for m in methods) for i in range(len(rows[category, "base"]))]
        assert min(bold) >= 1 and bold[0] == 1
    assert "[" not in to_markdown([table]).split("|:--|:--|")[1]  # no CI unless asked
    latex = to_latex([table], ci=True)
    assert r"{\scriptsize [--]}" in latex and r"\scriptsize [" in latex and r"\textit{Animals (11 prompts)}" in latex


def test_names_are_escaped_for_latex_and_markdown(category_rows):
    assert (
        latex_escape("a_b 5% & #1 {x} ~^\\")
        == r"a\_b 5\% \& \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )
    assert markdown_escape("a_b|c *d* #1 <i>") == r"a\_b\|c \*d\* \#1 \<i\>"
    latex = to_latex(paper_tables(category_rows, by="category"))
    assert r"my\_method 100\% \& \#1" in latex and r"Food \& Beverage\_2 \#x 5\%" in latex
    assert NASTY_METHOD not in latex and NASTY_CATEGORY not in latex
    markdown = to_markdown(paper_tables(category_rows, by="category"))
    assert r"| my\_method 100% & \#1 |" in markdown


def _require_pdflatex() -> str:
    found = shutil.which("pdflatex")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("pdflatex missing on CI: .ci/install-tex.sh should have installed texlive-latex-base")
    pytest.skip("pdflatex is not installed (run .ci/install-tex.sh)")


@pytest.mark.slow  # runs pdflatex
def test_the_latex_compiles_and_fits_the_page(rows, category_rows, tmp_path: Path):
    """Every table, all columns and intervals on, the names full of LaTeX's special characters, among them one
    of 6 metrics (18 columns) and one per category with 12 categories (longer than a page): pdflatex makes a
    PDF, no box runs over and no float is taller than the page."""
    pdflatex = _require_pdflatex()
    wide = leaderboard(scores(metrics=6), n_boot=50)
    long = paper_tables(leaderboard(scores(categories=12, metrics=3), n_boot=50, by=["category"]), by="category")
    assert len(long[0].blocks) == 12
    body = "\n\n".join(
        [
            to_latex(paper_tables(rows), ci=True),
            to_latex(paper_tables(category_rows, by="category"), ci=True),
            to_latex(paper_tables(wide), ci=True),
            to_latex(long, ci=True),
            to_latex(paper_tables(rows)),
        ]
    )
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{graphicx}\n\\begin{document}\n" + body + "\n\\end{document}\n"
    )
    result = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "paper.pdf").read_bytes().startswith(b"%PDF")
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Missing character" not in log
    assert not re.findall(r"Overfull \\[hv]box.*", log), re.findall(r"Overfull \\[hv]box.*", log)
    assert "Float too large" not in log
