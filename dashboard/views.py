"""The dashboard's pages.  Each page is a function of the loaded ``Results``; the tables
come from ``dashboard.data`` and the statistics from ``harness.results.stats``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from dashboard import charts, figures
from dashboard.data import (
    BASE,
    NO_INTERVAL,
    Results,
    best_cells,
    best_per_suite,
    column_directions,
    curves,
    detail_table,
    filter_split,
    hacking,
    image_grid,
    is_base,
    load_experiments,
    overlap_warnings,
    overview_table,
    prompt_grid,
    prompt_table,
    signal_cells,
    spread_prompts,
    statistics,
    thumbnail,
    verification_lines,
)
from harness.results.experiments import Experiment
from harness.results.hacking import HACKING_NOTE
from harness.results.layout import ResultsDir
from harness.results.run_details import MISSING, run_details, shown_run_details
from harness.results.stats import SIGNAL_MARK, SIGNAL_NOTE, win_rate_matrix
from harness.results.tables import metric_label

HIGHLIGHT = "background-color: rgba(46, 160, 67, 0.30); font-weight: bold"
THUMBNAIL_PX = 256


# -- caches: keyed by the database fingerprint, so a committed write shows on the next rerun ------
@st.cache_data(max_entries=4, show_spinner="Loading results…")
def cached_results(experiments: tuple[tuple[str, str], ...], fingerprint: tuple[int, ...]) -> Results:
    """``experiments``: (name, directory) of each results directory shown."""
    return load_experiments([Experiment(name, ResultsDir(root)) for name, root in experiments])


def _results_key(results: Results) -> tuple:
    # Hashing the frames would cost as much as the work cached; the fingerprint identifies them.
    return str(results.results_dir), results.experiments, results.fingerprint


@st.cache_data(max_entries=4, show_spinner="Computing confidence intervals…", hash_funcs={Results: _results_key})
def cached_leaderboard(results: Results) -> pd.DataFrame:
    return statistics(results, BASE)


@st.cache_data(
    max_entries=4, show_spinner="Computing confidence intervals per category…", hash_funcs={Results: _results_key}
)
def cached_category_board(results: Results) -> pd.DataFrame:
    return statistics(results, BASE, by=["category"])


@st.cache_data(max_entries=32, hash_funcs={Results: _results_key})
def cached_win_matrix(results: Results, metric: str, version: str, suite: str) -> pd.DataFrame:
    return win_rate_matrix(results.scores, metric, suite, metric_version=version)


@st.cache_data(max_entries=1024)
def cached_thumbnail(path: str, mtime_ns: int, size: int) -> bytes:
    return thumbnail(Path(path), size)


def _format_means(styled: Styler, marked: pd.DataFrame, columns: list[str]) -> Styler:
    """Four decimals, with the signal mark on the cells ``marked`` flags.

    Done in the Styler rather than ``column_config`` (which would override it) so the numbers
    stay numeric for sorting while the mark shows."""
    styled = styled.format("{:.4f}", subset=columns, na_rep="")
    for column in columns:
        rows = marked.index[marked[column]]
        if len(rows):
            styled = styled.format(f"{{:.4f}} {SIGNAL_MARK}", subset=pd.IndexSlice[rows, [column]])
    return styled


# -- pages ------------------------------------------------------------------------------------
def leaderboard_page(results: Results) -> None:
    st.header("Leaderboard")
    board = cached_leaderboard(results)
    if board.empty:
        st.info("No scores stored yet: the run has not reached scoring.")
        return
    for warning in overlap_warnings(results):
        st.warning(warning)
    split = st.radio("Prompt suites", ["all", "seen", "unseen"], horizontal=True, key="leaderboard_split")
    board = filter_split(board, split)
    if board.empty:
        st.info(f"No {split} suite in this run.")
        return

    st.subheader("Mean score per method")
    st.caption(
        "One column per suite and metric (version in brackets; versions are never mixed). "
        "The best value of each column is highlighted. Click a header to sort."
    )
    table = overview_table(board, results.methods)
    directions = column_directions(board)
    mask = best_cells(table, directions)
    styled = table.style.apply(lambda _: mask.replace({True: HIGHLIGHT, False: ""}), axis=None)
    marked = signal_cells(board, results.methods)
    st.dataframe(_format_means(styled, marked, [c for c in table.columns if c in directions]), hide_index=True)
    if marked.to_numpy().any():
        st.caption(SIGNAL_NOTE)

    st.subheader("Confidence intervals and comparison with the base")
    labels = sorted(board["metric_label"].unique())
    label = st.selectbox("Metric", labels, key="leaderboard_metric")
    chosen = board[board["metric_label"] == label].iloc[0]
    higher = bool(chosen["higher_is_better"])
    scores = results.scores
    scale = scores.loc[
        (scores["metric"] == chosen["metric"]) & (scores["metric_version"] == chosen["metric_version"]), "scale"
    ].iloc[0]
    st.caption(
        f"{label}: scale {scale}, {'higher' if higher else 'lower'} is better. 95% bootstrap CIs over "
        f"prompts; Δ (method − {BASE}) and win rate are paired with '{BASE}' on the same prompts and seeds "
        f"(win: the method's median image of a prompt scores strictly {'higher' if higher else 'lower'})."
    )
    detail = detail_table(board, label, results.methods)
    best = best_per_suite(detail, higher)
    styled = detail.style.apply(lambda column: [HIGHLIGHT if b else "" for b in best], subset=["mean"])
    marked = pd.DataFrame({"mean": detail["trained_on_signal"]})
    st.dataframe(
        _format_means(styled, marked, ["mean"]),
        hide_index=True,
        column_config={
            "trained_on_signal": None,  # shown as the mark on the mean
            "Δ vs base": st.column_config.NumberColumn(format="%+.4f"),
            "win rate vs base": st.column_config.NumberColumn(format="percent"),
        },
    )
    if detail["trained_on_signal"].any():
        st.caption(SIGNAL_NOTE)
    if board["delta_vs_base"].notna().any():
        methods = [m for m in results.methods if not is_base(m)]
        st.altair_chart(figures.overall_delta_chart(board, label, methods, BASE))


@st.cache_data(max_entries=4, show_spinner="Computing confidence intervals…", hash_funcs={Results: _results_key})
def cached_hacking(results: Results) -> pd.DataFrame:
    return hacking(results, BASE)


def hacking_page(results: Results) -> None:
    st.header("Reward hacking")
    report = cached_hacking(results)
    if report.empty:
        st.info("Nothing to compare yet: no method beside the base has scores.")
        return
    st.caption(
        f"Per method and suite, Δ vs {BASE} (95% bootstrap CI over prompts) on the signals it was trained on beside "
        f"the scorers held out from its training and its in-prompt diversity. {HACKING_NOTE}."
    )
    findings = report.drop_duplicates(["method", "suite"])
    for row in findings.itertuples(index=False):
        (st.warning if row.flagged else st.caption)(f"{row.method} / {row.suite}: {row.finding}")
    table = report.assign(
        **{
            "95% CI": [
                NO_INTERVAL if pd.isna(low) or pd.isna(high) else f"[{low:+.4g}, {high:+.4g}]"
                for low, high in zip(report["delta_ci_low"], report["delta_ci_high"])
            ]
        }
    )
    st.dataframe(
        table[["method", "suite", "role", "metric", "metric_version", "delta", "95% CI", "verdict", "flagged"]],
        hide_index=True,
        column_config={"delta": st.column_config.NumberColumn("Δ vs base", format="%+.4f")},
    )


def categories_page(results: Results) -> None:
    st.header("Categories")
    board = cached_category_board(results)
    if board.empty:
        st.info("No scores stored yet: the run has not reached scoring.")
        return
    st.caption(
        "Every statistic of the leaderboard, computed on each category's prompts alone, so a category "
        f"with few prompts has a wide CI and one prompt has none ('{NO_INTERVAL}'). Under about ten "
        "prompts a bootstrap interval is itself too narrow to trust: read the prompt count beside it."
    )
    labels = sorted(board["metric_label"].unique())
    label = st.selectbox("Metric", labels, key="categories_metric")
    suites = sorted(board.loc[board["metric_label"] == label, "suite"].unique())
    suite = st.selectbox("Suite", suites, key="categories_suite")
    rows = board[board["suite"] == suite]
    if rows["delta_vs_base"].notna().any():
        st.altair_chart(figures.category_delta_chart(board, label, suite, BASE))
    else:
        st.info(f"Only '{BASE}' has scores on {suite}: there is no Δ to draw.")
    detail = detail_table(rows, label, results.methods, by="category").drop(columns=["suite", "split"])
    marked = pd.DataFrame({"mean": detail["trained_on_signal"]})
    st.dataframe(
        _format_means(detail.style, marked, ["mean"]),
        hide_index=True,
        column_config={
            "trained_on_signal": None,  # shown as the mark on the mean
            "Δ vs base": st.column_config.NumberColumn(format="%+.4f"),
            "win rate vs base": st.column_config.NumberColumn(format="percent"),
        },
    )
    if detail["trained_on_signal"].any():
        st.caption(SIGNAL_NOTE)


def image_grid_page(results: Results) -> None:
    st.header("Image grid")
    images = results.images
    if images.empty:
        st.info("No images stored yet: the run has not reached generation.")
        return
    suite = st.selectbox("Suite", sorted(images["suite"].unique()), key="grid_suite")
    in_suite = images[images["suite"] == suite]
    categories = st.multiselect(
        "Categories", sorted(in_suite["category"].dropna().unique()), key=f"grid_categories:{suite}"
    )
    prompts = prompt_table(images, suite, categories)
    # Keys depend on the filter, so a smaller selection never keeps a count larger than itself.
    filter_id = f"{suite}|{'|'.join(categories)}"
    count = st.number_input(
        "Prompts (taken in turn from each category)",
        1,
        len(prompts),
        min(4, len(prompts)),
        key=f"grid_count:{filter_id}",
    )
    index = st.selectbox(
        "Image of each prompt (the same seed for every method)",
        sorted(in_suite["image_index"].unique()),
        key=f"grid_image:{suite}",
    )
    grid = image_grid(
        results,
        suite,
        spread_prompts(prompts, count),
        index,
        figures.GRID_PX,
        thumb=lambda path, size: cached_thumbnail(str(path), path.stat().st_mtime_ns, size),
    )
    st.altair_chart(charts.image_grid_chart(grid, results.methods, figures.GRID_PX))
    st.caption(
        f"`harness figure --out {results.results_dir}` writes this grid (prompts taken in turn from each "
        "category of each suite) as PNG and SVG, with the Δ charts and win-rate heatmaps."
    )


def _sync_page_from_prompt(prompt_key: str, page_key: str, prompt_ids: list[str]) -> None:
    st.session_state[page_key] = prompt_ids.index(st.session_state[prompt_key]) + 1


def _sync_prompt_from_page(prompt_key: str, page_key: str, prompt_ids: list[str]) -> None:
    st.session_state[prompt_key] = prompt_ids[st.session_state[page_key] - 1]


def compare_page(results: Results) -> None:
    st.header("Compare")
    images = results.images
    if images.empty:
        st.info("No images stored yet: the run has not reached generation.")
        return
    splits = images.drop_duplicates("suite").set_index("suite")["split"]
    suite = st.selectbox("Suite", sorted(splits.index), format_func=lambda s: f"{s} ({splits[s]})", key="compare_suite")
    categories = st.multiselect(
        "Categories",
        sorted(images.loc[images["suite"] == suite, "category"].unique()),
        key=f"compare_categories:{suite}",
    )
    prompts = prompt_table(images, suite, categories)
    prompt_ids = prompts["prompt_id"].tolist()
    # Keys depend on the filter, so a new filter starts from its first prompt.
    filter_id = f"{suite}|{'|'.join(categories)}"
    prompt_key, page_key = f"compare_prompt:{filter_id}", f"compare_page:{filter_id}"
    texts = dict(zip(prompts["prompt_id"], prompts["prompt"]))
    sync_args = (prompt_key, page_key, prompt_ids)
    st.selectbox(
        "Prompt",
        prompt_ids,
        format_func=lambda p: f"{p} — {texts[p]}",
        key=prompt_key,
        on_change=_sync_page_from_prompt,
        args=sync_args,
    )
    page = st.pagination(len(prompt_ids), key=page_key, on_change=_sync_prompt_from_page, args=sync_args)
    prompt = prompts.iloc[page - 1]
    st.markdown(f"**{prompt['prompt_id']}** · *{prompt['category'] or 'no category'}* — {prompt['prompt']}")

    grid = prompt_grid(results, suite, prompt["prompt_id"])
    methods = [m for m in results.methods if m in set(grid["method"])]
    metric_columns = [c for c in grid.columns if c not in ("run_id", "method", "image_index", "seed", "path")]
    for column, method in zip(st.columns(len(methods)), methods):
        column.markdown(f"**{method}**")
    for image_index, row_images in grid.groupby("image_index", sort=True):
        by_method = row_images.set_index("method")
        for column, method in zip(st.columns(len(methods)), methods):
            if method not in by_method.index:
                column.caption("no image")
                continue
            image = by_method.loc[method]
            scores = " · ".join(f"{c} {image[c]:.4g}" for c in metric_columns if pd.notna(image[c]))
            caption = f"image {image_index}, seed {image['seed']}" + (f" · {scores}" if scores else "")
            path = results.image_file(image["path"])
            if path is None:
                column.caption(f"missing file {image['path']} · {caption}")
            else:
                column.image(cached_thumbnail(str(path), path.stat().st_mtime_ns, THUMBNAIL_PX), caption=caption)


def win_rate_page(results: Results) -> None:
    st.header("Win-rate matrix")
    scores = results.scores
    if scores.empty:
        st.info("No scores stored yet.")
        return
    metrics = scores.drop_duplicates(["metric", "metric_version"])[["metric", "metric_version", "higher_is_better"]]
    choices = {metric_label(m, v, h): (m, v, h) for m, v, h in metrics.itertuples(index=False)}
    label = st.selectbox("Metric", sorted(choices), key="winrate_metric")
    metric, version, higher = choices[label]
    suites = sorted(scores.loc[(scores["metric"] == metric) & (scores["metric_version"] == version), "suite"].unique())
    suite = st.selectbox("Suite", suites, key="winrate_suite")
    matrix = cached_win_matrix(results, metric, version, suite)
    order = [m for m in results.methods if m in matrix.index]
    st.altair_chart(charts.win_rate_chart(matrix, order), width="stretch")
    st.caption(
        f"Cell = share of prompts where the row method's median image scores strictly "
        f"{'higher' if higher else 'lower'} ({'higher' if higher else 'lower'} is better) than the column "
        "method's, on the same seeds. Ties count for neither, so a[i,j] + a[j,i] can be below 1."
    )
    st.dataframe(matrix.loc[order, order].reset_index(), hide_index=True)


def training_page(results: Results) -> None:
    st.header("Training")
    training = results.training
    if training.empty:
        st.info("No training logged (only the base model, or training has not started).")
        return
    terms = sorted(training["term"].unique(), key=lambda t: (t != "loss", t))
    chosen = st.multiselect("Terms", terms, default=terms, key="training_terms")
    methods = [m for m in results.methods if m in set(training["method"])]
    for term in chosen:
        rows = training[training["term"] == term]
        chart = (
            alt.Chart(rows)
            .mark_line()
            .encode(
                x=alt.X("step:Q"),
                y=alt.Y("value:Q", title=term, scale=alt.Scale(zero=False)),
                color=alt.Color("method:N", sort=methods),
                tooltip=["method", "step", "value"],
            )
        )
        st.subheader(term)
        st.altair_chart(chart, width="stretch")


@st.cache_data(
    max_entries=4, show_spinner="Computing confidence intervals over training…", hash_funcs={Results: _results_key}
)
def cached_curves(results: Results) -> pd.DataFrame:
    return curves(results, BASE)


def curves_page(results: Results) -> None:
    st.header("Curves")
    points = cached_curves(results)
    if points.empty:
        st.info(
            "No evaluation during training: `harness run --eval-every N` evaluates each method's UNet every N steps."
        )
        return
    label = st.selectbox("Metric", sorted(points["metric_label"].unique()), key="curves_metric")
    suite = st.selectbox(
        "Suite", sorted(points.loc[points["metric_label"] == label, "suite"].unique()), key="curves_suite"
    )
    rows = points[(points["metric_label"] == label) & (points["suite"] == suite)]
    methods = [m for m in results.methods if m in set(rows["method"])]
    st.altair_chart(
        charts.curve_chart(rows[["method", "step", "mean", "ci_low", "ci_high"]], methods, label), width="stretch"
    )
    st.caption(
        "Each point: the method's UNet at that step, evaluated with the run's protocol (the same prompts, "
        "seeds, sampler and scorers as the final evaluation), its mean with the 95% bootstrap CI over "
        "prompts. The last point is the final UNet: the leaderboard's number."
    )
    st.dataframe(detail_table(rows, label, methods, by="step").drop(columns=["trained_on_signal"]), hide_index=True)


def run_details_page(results: Results) -> None:
    st.header("Run details")
    for warning in overlap_warnings(results):
        st.warning(warning)
    runs = results.runs
    st.caption(
        "Each run's own start and end (its first job's start, its last job's end, UTC), wall time (its jobs' "
        "sum), CPU-hours on a CPU or GPU-hours on a GPU, UNet evaluations per training sample, the images each "
        "reward model scored in training per training sample (online methods; 0 offline) and peak "
        f"memory (the largest of its jobs'). '{MISSING}': the run has no such figure."
    )
    st.dataframe(shown_run_details(run_details(runs)), hide_index=True)
    for line in verification_lines(results):
        st.caption(line[0].upper() + line[1:])
    labels = {r.run_id: f"{r.method} — {r.key}" for r in runs.itertuples()}
    run_id = st.selectbox("Run", list(labels), format_func=labels.__getitem__, key="details_run")
    run = runs.set_index("run_id").loc[run_id]
    provenance, compute, config = st.columns(3)
    provenance.markdown("**Provenance**")
    provenance.json(
        {
            "key": run["key"],
            "base_model": run["base_model"],
            "preset": run["preset"],
            "git_commit": run["git_commit"],
            "versions": json.loads(run["versions"]),
        }
    )
    compute.markdown("**Compute**")
    compute.json(json.loads(run["compute"]))
    config.markdown("**Config**")
    config.json(json.loads(run["config"]))
    st.markdown("**Checkpoints**")
    st.dataframe(
        results.checkpoints[results.checkpoints["run_id"] == run_id][["step", "path", "created_at"]], hide_index=True
    )
    overlaps = results.overlaps[results.overlaps["run_id"] == run_id]
    if not overlaps.empty:
        st.markdown("**Training captions found in the evaluation suites**")
        st.dataframe(overlaps[["suite", "split", "n_overlap"]], hide_index=True)
    st.markdown("**Trained on these signals** (metrics whose scores shaped its training data)")
    signals = results.training_signals[results.training_signals["run_id"] == run_id]
    if signals.empty:
        st.caption("None recorded.")
    else:
        st.dataframe(signals[["metric", "source"]], hide_index=True)


PAGES: dict[str, Callable[[Results], None]] = {
    "Leaderboard": leaderboard_page,
    "Categories": categories_page,
    "Compare": compare_page,
    "Image grid": image_grid_page,
    "Win-rate matrix": win_rate_page,
    "Reward hacking": hacking_page,
    "Training": training_page,
    "Curves": curves_page,
    "Run details": run_details_page,
}
