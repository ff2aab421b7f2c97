"""Paper tables (`harness leaderboard --format latex|markdown`): best per column by direction, versions
in the headers, CIs on request, names escaped, and LaTeX that compiles."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.stats import leaderboard
from harness.tables import latex_escape, markdown_escape, paper_tables, to_latex, to_markdown

NASTY_METHOD = "my_method 100% & #1"
NASTY_CATEGORY = "Food & Beverage_2 #x 5%"
# Each method's offset: "good" is best on a higher-is-better metric, "low" on the lower-is-better one.
OFFSETS = {"base": 0.0, "good": 1.0, "low": -1.0, NASTY_METHOD: 0.5}


def scores() -> pd.DataFrame:
    """Two metrics on one suite (pickscore, higher is better; a distance, lower is better), 12 prompts in
    two categories, one of them a single prompt."""
    rng = np.random.default_rng(0)
    rows = []
    for metric, version, higher in (("pickscore", "v1", True), ("fid_like", "v2#b", False)):
        noise = rng.normal(scale=0.1, size=(12, 2))
        for method, offset in OFFSETS.items():
            for p in range(12):
                for j in range(2):
                    rows.append(dict(method=method, suite="parti", split="unseen", metric=metric,
                                     metric_version=version, prompt_id=f"p{p}", image_index=j, seed=p + 12 * j,
                                     category="Animals" if p else NASTY_CATEGORY, higher_is_better=higher,
                                     value=20.0 + offset + noise[p, j]))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return leaderboard(scores(), n_boot=200)


@pytest.fixture(scope="module")
def category_rows() -> list[dict]:
    return leaderboard(scores(), n_boot=200, by=["category"])


def test_the_best_value_of_each_column_is_bold_by_the_metrics_direction(rows):
    (table,) = paper_tables(rows)
    assert table.methods[0] == "base"
    markdown = to_markdown([table]).splitlines()
    header = markdown[2]
    assert "parti · pickscore (v1)" in header and r"parti · fid\_like (v2\#b) ↓" in header  # versions shown
    cells = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in markdown[4:8]}
    metrics = [h.strip() for h in header.strip("| ").split(" | ")[1:]]
    higher, lower = metrics.index("parti · pickscore (v1)"), metrics.index(r"parti · fid\_like (v2\#b) ↓")
    bold = {(method, column) for method, values in cells.items() for column, value in enumerate(values) if "**" in value}
    assert bold == {("good", higher), ("low", lower)}
    # One number format per column: as many decimals on every row.
    assert {len(values[higher].strip("* |").split(".")[1]) for values in cells.values()} == {2}

    latex = to_latex([table])
    assert r"\textbf{21.00}" in latex or r"\textbf{20.99}" in latex or r"\textbf{21.01}" in latex
    assert latex.count(r"\textbf") == 2 and "[" not in latex.split(r"\hline")[2]


def test_cis_are_shown_on_request_and_a_single_prompt_says_it_has_none(category_rows):
    (table,) = paper_tables(category_rows, by="category")
    markdown = to_markdown([table], ci=True)
    assert "Animals (11 prompts)" in markdown and f"{markdown_escape(NASTY_CATEGORY)} (1 prompt)" in markdown
    base = next(line for line in markdown.splitlines() if line.startswith("| base |")).split(" | ")[1:]
    assert sum("[–]" in cell for cell in base) == 2  # the single-prompt category, on both metrics
    assert sum(cell.count("[") == 1 and "–" not in cell for cell in base) == 2
    assert "[" not in to_markdown([table]).split("|:--|")[1]  # no CI unless asked
    latex = to_latex([table], ci=True)
    assert r"{\scriptsize [--]}" in latex and r"\scriptsize [" in latex


def test_names_are_escaped_for_latex_and_markdown(category_rows):
    assert latex_escape("a_b 5% & #1 {x} ~^\\") == r"a\_b 5\% \& \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
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


def test_the_latex_compiles(rows, category_rows, tmp_path: Path):
    """Both tables, CIs on, the names full of LaTeX's special characters: pdflatex makes a PDF."""
    pdflatex = _require_pdflatex()
    body = to_latex(paper_tables(rows), ci=True) + "\n\n" + to_latex(paper_tables(category_rows, by="category"), ci=True)
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\begin{document}\n" + body + "\n\\end{document}\n")
    result = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "paper.pdf").read_bytes().startswith(b"%PDF")
    assert "Missing character" not in (tmp_path / "paper.log").read_text(errors="replace")
