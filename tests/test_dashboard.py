"""The dashboard: its tables, every page under AppTest, and reading while a run writes."""

from __future__ import annotations

import base64
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

import dashboard.data
from dashboard.data import (
    NO_INTERVAL,
    best_cells,
    experiments_from,
    image_file,
    leaderboard_frame,
    load_results,
    overview_table,
    thumbnail,
)
from dashboard.server import serve
from dashboard.views import PAGES
from harness.errors import HarnessError
from harness.results.hacking import FINDINGS
from harness.results.stats import SIGNAL_MARK, SIGNAL_NOTE, leaderboard
from harness.results.store import Store
from support.results_fixture import (
    DIVERSITY,
    IMAGES_PER_PROMPT,
    METHODS,
    SUITES,
    TRAIN_STEPS,
    TRAINING_SIGNALS,
    as_schema,
    build_results_dir,
)

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_results_dir(tmp_path_factory.mktemp("results"))


def open_app(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("HARNESS_OUT", str(results_dir))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def show(at: AppTest, page: str) -> AppTest:
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def image_captions(at: AppTest) -> list[str]:
    return [img.caption for image in at.image for img in image.proto.imgs]


def shown(table) -> pd.DataFrame:
    """A styled table's cells as the browser shows them (the Styler's display values)."""
    return convert_arrow_bytes_to_pandas_df(table.proto.arrow_data.styler.display_values)


def marked_cells(cells: pd.DataFrame, *keys: str) -> set[tuple]:
    """``(*row keys, column)`` of every cell carrying the signal mark."""
    return {
        (*row[list(keys)], column)
        for _, row in cells.iterrows()
        for column in cells.columns
        if SIGNAL_MARK in str(row[column])
    }


def notes(at: AppTest) -> int:
    return sum(caption.value == SIGNAL_NOTE for caption in at.caption)


def chart_data(at: AppTest) -> pd.DataFrame:
    """The data the page's one Vega-Lite chart draws, as the browser receives it."""
    (chart,) = at.get("vega_lite_chart")
    (dataset,) = chart.proto.datasets
    return convert_arrow_bytes_to_pandas_df(dataset.data.data)


# -- tables, without Streamlit ---------------------------------------------------------------
def test_results_dir_comes_from_out_first_then_the_environment(tmp_path: Path) -> None:
    def roots(argv: list[str], environ: dict[str, str]) -> list[Path]:
        return [e.results.root for e in experiments_from(argv, environ)]

    assert roots(["-x", "--out", str(tmp_path)], {"HARNESS_OUT": "/elsewhere"}) == [tmp_path.resolve()]
    assert roots(["-q"], {"HARNESS_OUT": str(tmp_path)}) == [tmp_path.resolve()]
    assert roots(["--out", "a", "--out", "b"], {}) == [Path("a").resolve(), Path("b").resolve()]
    with pytest.raises(HarnessError, match="HARNESS_OUT"):
        experiments_from([], {})


def test_image_paths_stay_inside_the_results_dir(results_dir: Path, tmp_path: Path) -> None:
    images = load_results(results_dir).images
    row = images.iloc[0]
    assert image_file(results_dir, row["path"]) == (results_dir / row["path"]).resolve()
    outside = tmp_path / "secret.png"
    shutil.copy(results_dir / row["path"], outside)
    assert image_file(results_dir, str(outside)) is None
    assert image_file(results_dir, f"../{outside.parent.name}/secret.png") is None
    assert image_file(results_dir, "images/nothing.png") is None


def test_overview_has_a_row_per_method_and_marks_the_best_by_direction(results_dir: Path) -> None:
    results = load_results(results_dir)
    board = leaderboard_frame(leaderboard(results.scores))
    table = overview_table(board, results.methods)
    assert table["method"].tolist() == ["base", "dpo", "dro"]
    assert set(table.columns[1:]) == {f"{s} · {m} (v1)" for s in SUITES for m in ("pickscore", "aesthetic")}
    column = "toy-seen · pickscore (v1)"
    higher = best_cells(table, {column: True})
    lower = best_cells(table, {column: False})
    assert table.loc[higher[column], "method"].tolist() == ["dro"]
    assert table.loc[lower[column], "method"].tolist() == ["base"]
    assert not higher["method"].any()


# -- every page under AppTest ----------------------------------------------------------------
def test_leaderboard_page_lists_every_method_with_stats(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app(results_dir, monkeypatch)
    overview, detail = at.dataframe[0].value, at.dataframe[1].value
    assert overview["method"].tolist() == list(METHODS)
    assert set(detail["method"]) == set(METHODS) and set(detail["suite"]) == set(SUITES)
    dro = detail[(detail["method"] == "dro") & (detail["suite"] == "toy-seen")].iloc[0]
    assert dro["win rate vs base"] == 1.0 and dro["Δ vs base"] > 0.9
    assert "[" in dro["95% CI"]
    assert any("toy-unseen" in w.value and "dro" in w.value for w in at.warning)

    # The Δ chart of the chosen metric: a point per method and suite, at the table's Δ, within its CI.
    delta = chart_data(at).set_index(["y", "facet"])
    assert set(delta.index) == {(m, suite) for m in ("dpo", "dro") for suite in SUITES}
    assert delta.loc[("dro", "toy-seen"), "delta"] == pytest.approx(dro["Δ vs base"])
    assert (delta["low"] <= delta["delta"]).all() and (delta["delta"] <= delta["high"]).all()
    assert set(delta["verdict"]) == {"better than base"}

    at.radio(key="leaderboard_split").set_value("unseen").run()
    assert all("toy-unseen" in c for c in at.dataframe[0].value.columns[1:])
    assert set(at.dataframe[1].value["split"]) == {"unseen"}


def test_leaderboard_page_marks_only_the_metric_a_method_was_trained_on(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(results_dir, monkeypatch)  # dro's training data was ranked by pickscore, nothing else
    assert TRAINING_SIGNALS == {"dro": (["pickscore"], "experts ranked by pickscore (top 2)")}
    overview = shown(at.dataframe[0])
    assert marked_cells(overview, "method") == {("dro", f"{suite} · pickscore (v1)") for suite in SUITES}
    cells = overview.set_index("method")["toy-seen · pickscore (v1)"]
    assert re.fullmatch(rf"\d+\.\d{{4}} {SIGNAL_MARK}", cells["dro"]) and re.fullmatch(r"\d+\.\d{4}", cells["dpo"])
    assert notes(at) == 1

    assert at.selectbox(key="leaderboard_metric").value == "aesthetic (v1)"
    assert not marked_cells(shown(at.dataframe[1]), "method", "suite")
    at.selectbox(key="leaderboard_metric").set_value("pickscore (v1)").run()
    detail = shown(at.dataframe[1])
    assert marked_cells(detail, "method", "suite") == {("dro", suite, "mean") for suite in SUITES}
    assert notes(at) == 2


def test_a_results_dir_of_store_schema_1_shows_no_mark(
    results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old"
    shutil.copytree(results_dir, old)
    at = open_app(as_schema(old, "1"), monkeypatch)
    assert shown(at.dataframe[0])["method"].tolist() == list(METHODS)
    assert not marked_cells(shown(at.dataframe[0]), "method") and not notes(at)
    show(at, "Run details")
    assert "None recorded." in [c.value for c in at.caption]


def test_categories_page_shows_each_categorys_statistics_with_its_prompt_count(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = show(open_app(results_dir, monkeypatch), "Categories")
    assert at.selectbox(key="categories_metric").value == "aesthetic (v1)"
    at.selectbox(key="categories_suite").set_value("toy-unseen").run()
    # toy-unseen: "shapes" has two prompts, "animals" one (an owl), so no interval, said in words.
    table = at.dataframe[0].value.set_index(["category", "method"])
    assert set(table.index) == {(c, m) for c in ("animals", "shapes") for m in METHODS}
    assert table.loc[("animals", "dro"), "prompts"] == 1 and table.loc[("shapes", "dro"), "prompts"] == 2
    assert table.loc[("animals", "dro"), "95% CI"] == NO_INTERVAL == table.loc[("animals", "dro"), "Δ 95% CI"]
    assert table.loc[("shapes", "dro"), "95% CI"].startswith("[")
    assert table.loc[("animals", "dro"), "win rate vs base"] == 1.0
    # The numbers are the leaderboard's, computed on each category's prompts alone.
    results = load_results(results_dir)
    scores = results.scores
    animals = scores[(scores["suite"] == "toy-unseen") & (scores["category"] == "animals")]
    alone = {r["method"]: r for r in leaderboard(animals) if r["metric"] == "aesthetic"}
    assert table.loc[("animals", "dro"), "mean"] == pytest.approx(alone["dro"]["mean"])
    assert table.loc[("animals", "dro"), "Δ vs base"] == pytest.approx(alone["dro"]["delta_vs_base"])

    delta = chart_data(at).set_index(["y", "facet"])
    assert set(delta.index) == {
        (f"{c} ({n} prompt{'s' * (n > 1)})", m) for c, n in (("animals", 1), ("shapes", 2)) for m in ("dpo", "dro")
    }
    lonely = delta.loc[("animals (1 prompt)", "dro")]
    assert lonely["delta"] == pytest.approx(alone["dro"]["delta_vs_base"]) and pd.isna(lonely["low"])
    assert lonely["verdict"] == "no CI (1 prompt)"
    assert delta.loc[("shapes (2 prompts)", "dro"), "verdict"] == "better than base"


def test_image_grid_page_shows_prompts_by_methods_at_one_seed(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = show(open_app(results_dir, monkeypatch), "Image grid")
    grid = chart_data(at)
    _, prompts = SUITES["toy-seen"]
    # Taken in turn from each category (animals, shapes), not the suite's first prompts.
    assert grid["prompt"].drop_duplicates().tolist() == [
        "a cat on a mat",
        "a red circle",
        "a dog in the park",
        "a blue square",
    ]
    assert len(grid) == len(prompts) * len(METHODS) and set(grid["method"]) == set(METHODS)
    images = load_results(results_dir).images.set_index(["method", "prompt", "image_index"])
    for cell in grid.itertuples():
        stored = images.loc[(cell.method, cell.prompt, 0)]
        assert cell.seed == stored["seed"] and cell.row.endswith(f"seed {stored['seed']}")
        assert base64.b64decode(cell.url.split(",", 1)[1]) == thumbnail(results_dir / stored["path"], 128)

    # The second image of each prompt: another seed, the same for every method.
    at.selectbox(key="grid_image:toy-seen").set_value(1).run()
    again = chart_data(at)
    assert again.groupby("prompt")["seed"].nunique().eq(1).all()
    assert not set(again["seed"]) & set(grid["seed"])
    at.multiselect(key="grid_categories:toy-seen").set_value(["animals"]).run()
    assert chart_data(at)["prompt"].drop_duplicates().tolist() == ["a cat on a mat", "a dog in the park"]


def test_compare_page_pages_through_prompts_and_filters_by_category(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = show(open_app(results_dir, monkeypatch), "Compare")
    captions = image_captions(at)
    assert len(captions) == len(METHODS) * IMAGES_PER_PROMPT
    assert all("pickscore (v1)" in c and "seed" in c for c in captions)
    assert "a red circle" in at.markdown[0].value

    at.pagination[0].set_value(2).run()
    assert "a blue square" in at.markdown[0].value
    assert at.selectbox[1].value == "s1"  # the prompt picker follows the pager

    at.multiselect(key="compare_categories:toy-seen").set_value(["animals"]).run()
    assert "a cat on a mat" in at.markdown[0].value
    assert at.pagination[0].num_pages == 2


def test_win_rate_page_shows_the_matrix(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = show(open_app(results_dir, monkeypatch), "Win-rate matrix")
    matrix = at.dataframe[0].value.set_index("method")
    # dro's every image outscores base's by construction (offset 1.0 against noise of ±0.1).
    assert matrix.loc["dro", "base"] == 1.0 and matrix.loc["base", "dro"] == 0.0
    assert pd.isna(matrix.loc["dpo", "dpo"])
    assert len(at.get("vega_lite_chart")) == 1


def test_hacking_page_sets_trained_on_beside_held_out_and_diversity(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = show(open_app(results_dir, monkeypatch), "Reward hacking")
    table = at.dataframe[0].value
    dro = table[(table["method"] == "dro") & (table["suite"] == "toy-seen")]
    # dro was trained on pickscore; aesthetic is held out and gains too, so nothing is flagged; its images collapse.
    assert dro[["role", "metric", "verdict"]].values.tolist() == [
        ["trained-on", "pickscore", "better than base"],
        ["held-out", "aesthetic", "better than base"],
        ["diversity", "diversity", "worse than base"],
    ]
    assert dro["delta"].iloc[2] == pytest.approx(DIVERSITY["dro"] - DIVERSITY["base"])
    assert not table["flagged"].any() and not at.warning
    assert f"dro / toy-seen: {FINDINGS['held']}" in [c.value for c in at.caption]


def test_training_page_draws_one_chart_per_term(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = show(open_app(results_dir, monkeypatch), "Training")
    assert [h.value for h in at.subheader] == ["loss", "implicit_acc", "lr"]
    assert len(at.get("vega_lite_chart")) == 3
    at.multiselect(key="training_terms").set_value(["loss"]).run()
    assert len(at.get("vega_lite_chart")) == 1


def test_run_details_page_shows_provenance_and_overlaps(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = show(open_app(results_dir, monkeypatch), "Run details")
    assert at.dataframe[0].value["method"].tolist() == list(METHODS)
    # Each run's figures; what the fixture's runs lack (CPU- and GPU-hours, peak memory) shows as '–'.
    cells = at.dataframe[0].value.set_index("method")
    assert cells.loc["dro", ["wall s", "UNet evals / sample", "reward calls / sample"]].tolist() == ["12.5", "4", "0"]
    assert cells.loc["dro", ["CPU-hours", "GPU-hours", "peak memory MiB"]].tolist() == ["–"] * 3
    dro_run = int(cells.loc["dro", "run"])
    at.selectbox(key="details_run").set_value(dro_run).run()
    assert at.dataframe[1].value["step"].tolist() == [TRAIN_STEPS]
    assert at.dataframe[2].value.to_dict("records") == [{"suite": "toy-unseen", "split": "unseen", "n_overlap": 1}]
    assert at.dataframe[3].value.to_dict("records") == [
        {"metric": "pickscore", "source": "experts ranked by pickscore (top 2)"}
    ]
    assert [w.value for w in at.warning] and "dro" in at.warning[0].value
    assert '"beta": 5000' in at.json[2].value
    base_run = int(cells.loc["base", "run"])
    at.selectbox(key="details_run").set_value(base_run).run()
    assert len(at.dataframe) == 2 and "None recorded." in [c.value for c in at.caption]


def test_run_details_shows_when_the_directory_was_last_verified(
    results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "results"
    shutil.copytree(results_dir, copy)
    at = show(open_app(copy, monkeypatch), "Run details")
    assert any(c.value.startswith("Never verified (`harness verify --out DIR`") for c in at.caption)
    with Store(copy) as store:  # what `harness verify` records
        store.set_verified({"at": "2026-12-07T00:15:00+00:00", "problems": 2, "checked": {"images": 48}})
    at = show(open_app(copy, monkeypatch), "Run details")
    assert "Last verified 2026-12-07 00:15:00 UTC: 2 problem(s) left" in [c.value for c in at.caption]


def test_the_dashboard_cannot_write_the_results(
    results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection the dashboard opens refuses a write, and rendering every page leaves
    results.db as it was, byte for byte and mtime."""
    copy = tmp_path / "results"  # a directory the dashboard's cache has not seen: it must load it
    shutil.copytree(results_dir, copy)
    db = copy / "results.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    refusals: list[str | None] = []

    class WriteProbedStore(Store):
        """The store the dashboard opens, plus one write attempt through its connection."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            try:
                self._conn.execute("CREATE TABLE the_dashboard_wrote_here (x)")
                refusals.append(None)
            except sqlite3.OperationalError as exc:
                refusals.append(str(exc))

    monkeypatch.setattr(dashboard.data, "Store", WriteProbedStore)
    at = open_app(copy, monkeypatch)
    for page in PAGES:
        show(at, page)
    assert refusals and all(r is not None and "readonly" in r for r in refusals), refusals
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_missing_results_show_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_OUT", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "no results database" in at.error[0].value


def test_serve_refuses_a_directory_without_results(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no results in"):
        serve(tmp_path, port=1)


@pytest.mark.slow
def test_every_page_renders_a_real_tiny_run(tiny_run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(tiny_run_dir, readonly=True) as store:
        methods = set(store.runs_frame()["method"])
    assert {"base", "dpo"} <= methods
    at = open_app(tiny_run_dir, monkeypatch)
    assert set(at.dataframe[0].value["method"]) == methods
    for page in PAGES:
        show(at, page)
    show(at, "Compare")
    assert image_captions(at), "no image of the run could be shown"
    assert not [c for c in at.caption if c.value.startswith("missing file")]


# -- reading while a run writes --------------------------------------------------------------
# Keeps adding batches of 200 images, then their scores (one transaction each) to the dpo run,
# as a run that is still generating and scoring would, until killed.
WRITER = textwrap.dedent("""
    import itertools, sys, time
    from harness.results.store import Store
    with Store(sys.argv[1]) as store:
        run_id = store.get_or_create_run("dpo", method="dpo", preset="test", base_model="tiny-sd",
                                         config={"method": "dpo", "beta": 5000})
        for n in itertools.count():
            rows = [dict(prompt_id=f"p{n}-{i}", prompt="x", category="c", image_index=0, seed=i,
                         path=f"images/w{n}/{i}.png", sha256=f"{n}-{i}") for i in range(200)]
            store.add_images(run_id, suite="extra", suite_version="v", split="unseen", rows=rows)
            store.add_scores(run_id, suite="extra", rows=[
                dict(prompt_id=r["prompt_id"], image_index=0, scorer="pickscore", version="v1",
                     scale="100*cos", value=20.0) for r in rows])
            store.log_training(run_id, [(100 + n, {"loss": 0.5})])
            time.sleep(0.05)  # a run writes in bursts; leave the two shared cores to the reader too
""")


@pytest.mark.slow
def test_dashboard_reads_while_a_run_writes(results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "live"
    shutil.copytree(results_dir, live)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live)], env={**os.environ})
    try:
        counts: list[int] = []
        # Read until several of the writer's commits have landed in between our reads (the writer
        # needs a moment to start on a loaded machine, hence a deadline rather than a fixed time).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (len(counts) < 5 or counts[-1] - counts[0] < 3 * 200):
            results = load_results(live)  # every query the pages make, through a read-only connection
            leaderboard(results.scores, n_boot=50)
            counts.append(len(results.images))
        at = open_app(live, monkeypatch)
        for page in PAGES:
            show(at, page)
        assert writer.poll() is None, "the writer stopped: it must still be writing while we read"
    finally:
        writer.kill()
        writer.wait()
    assert counts == sorted(counts)
    assert counts[-1] > counts[0], "no write landed while the dashboard was reading"
    # Every read saw whole transactions: the fixture's images plus whole 200-image batches.
    base_images = len(load_results(results_dir).images)
    assert all((c - base_images) % 200 == 0 for c in counts)
