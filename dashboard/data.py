"""What the dashboard shows, as plain pandas: loading, tables, safe image paths.

Nothing here imports Streamlit, so every table the pages draw can be built (and tested)
without a browser.  The pages in ``views.py`` only lay these out.
"""

from __future__ import annotations

import argparse
import base64
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from harness.errors import HarnessError
from harness.evaluation.curves import curve_points, split_snapshots
from harness.results.experiments import (
    SEPARATOR,
    Experiment,
    check_comparable,
    leaderboard,
    parse_experiments,
    qualified,
    versions_of,
)
from harness.results.hacking import HACKING_COLUMNS, experiments_diversity, hacking_report
from harness.results.layout import ResultsDir
from harness.results.stats import higher_is_better_of, signals_by_method, verdict
from harness.results.store import Store
from harness.results.tables import metric_label

BASE = "base"
OUT_ENV = "HARNESS_OUT"


def experiments_from(argv: Sequence[str], environ: Mapping[str, str]) -> list[Experiment]:
    """The results directories: ``--out [NAME=]DIR``, repeated for several experiments (after ``--`` on the
    streamlit command line), or $HARNESS_OUT (a comma list for several)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", action="append")
    # Unknown arguments are ignored: under AppTest, sys.argv is pytest's.
    args, _ = parser.parse_known_args(list(argv))
    outs = args.out or ([environ[OUT_ENV]] if environ.get(OUT_ENV) else [])
    if not outs:
        raise HarnessError(f"no results directory: pass `-- --out DIR` or set {OUT_ENV}")
    return [Experiment(e.name, ResultsDir(e.results.root.resolve())) for e in parse_experiments(outs)]


def fingerprint(results_dir: Path) -> tuple[int, ...]:
    """Changes whenever a writer commits (the database or its WAL grows or is touched): a cache key."""
    db = ResultsDir(results_dir).db
    stats = [p.stat() for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return tuple(v for s in stats for v in (s.st_mtime_ns, s.st_size))


def is_base(method: str) -> bool:
    """The base model's run: ``base``, or an experiment's ``NAME/base`` when several are side by side."""
    return method.rpartition(SEPARATOR)[2] == BASE


@dataclass(frozen=True)
class Results:
    """Everything the pages read, loaded once per database change through a read-only connection."""

    results_dir: Path
    fingerprint: tuple[int, ...]  # of the database when loading began: the key of derived caches
    scores: pd.DataFrame
    images: pd.DataFrame
    training: pd.DataFrame
    runs: pd.DataFrame
    checkpoints: pd.DataFrame
    overlaps: pd.DataFrame
    training_signals: pd.DataFrame
    diversity: pd.DataFrame  # per prompt of each run's suite (the store's diversity_frame), METHOD@STEP runs left out
    curve_scores: (
        pd.DataFrame
    )  # the scores of --eval-every's METHOD@STEP runs (harness.evaluation.curves), none of the above's
    # Several results directories side by side (``load_experiments``): (name, directory) of each; their
    # methods are named NAME/method, their runs numbered anew, their image paths start with NAME/.
    experiments: tuple[tuple[str, Path], ...] = ()
    # Each directory's last `harness verify` (harness.results.verify): (experiment name, "" for one directory, its record
    # or None: never verified).
    verified: tuple[tuple[str, dict | None], ...] = ()

    @property
    def names(self) -> list[str]:
        """The experiments' names (none for one results directory)."""
        return [name for name, _ in self.experiments]

    @property
    def methods(self) -> list[str]:
        """Methods in display order: by experiment in the order given, each with its base first, then
        alphabetical (--eval-every's METHOD@STEP runs are no methods: they are the Curves page's)."""
        names = {name: i for i, name in enumerate(self.names)}
        return sorted(
            set(split_snapshots(self.runs)[0]["method"]),
            key=lambda m: (names.get(m.rpartition(SEPARATOR)[0], 0), not is_base(m), m),
        )

    def image_file(self, path: str) -> Path | None:
        """``image_file`` of a stored path (an experiment's, when several are side by side)."""
        if not self.experiments:
            return image_file(self.results_dir, path)
        name, _, path = path.partition(SEPARATOR)
        return image_file(dict(self.experiments)[name], path)


# What the frames of several experiments are made of; each has run_id and method columns.
FRAMES = (
    "scores",
    "images",
    "training",
    "runs",
    "checkpoints",
    "overlaps",
    "training_signals",
    "diversity",
    "curve_scores",
)


def load_experiments(experiments: Sequence[Experiment]) -> Results:
    """One results directory as it is, or several side by side (``harness.results.experiments``), refused when a
    suite or metric differs in version between them."""
    if len(experiments) == 1:
        return load_results(experiments[0].results.root)
    loaded = [load_results(e.results.root) for e in experiments]
    check_comparable({e.name: versions_of(r.images, r.scores) for e, r in zip(experiments, loaded)})
    run_ids = {
        (e.name, run_id): new
        for new, (e, run_id) in enumerate(
            ((e, run_id) for e, r in zip(experiments, loaded) for run_id in r.runs["run_id"]), start=1
        )
    }
    frames = {}
    for field in FRAMES:
        parts = []
        for experiment, results in zip(experiments, loaded):
            frame = getattr(results, field)
            frame = frame.assign(
                run_id=[run_ids[experiment.name, r] for r in frame["run_id"]],
                method=[qualified(experiment.name, m) for m in frame["method"]],
            )
            if "path" in frame.columns and field != "checkpoints":
                frame["path"] = [qualified(experiment.name, p) for p in frame["path"]]
            parts.append(frame)
        frames[field] = pd.concat(parts, ignore_index=True)
    return Results(
        results_dir=experiments[0].results.root,
        fingerprint=sum((r.fingerprint for r in loaded), ()),
        experiments=tuple((e.name, e.results.root) for e in experiments),
        verified=tuple((e.name, r.verified[0][1]) for e, r in zip(experiments, loaded)),
        **frames,
    )


def load_results(results_dir: Path) -> Results:
    stamp = fingerprint(results_dir)
    with Store(results_dir, readonly=True) as store:
        scores, curve_scores = split_snapshots(store.scores_frame())
        return Results(
            results_dir=Path(results_dir),
            fingerprint=stamp,
            scores=scores,
            curve_scores=curve_scores,
            images=split_snapshots(store.images_frame())[0],  # the intermediate UNets' images are on no page
            training=store.training_frame(),
            runs=store.runs_frame(),
            checkpoints=store.checkpoints_frame(),
            overlaps=store.overlaps_frame(),
            training_signals=store.training_signals_frame(),
            diversity=split_snapshots(store.diversity_frame())[0],
            verified=(("", store.last_verified()),),
        )


def metric_labels(frame: pd.DataFrame) -> list[str]:
    """``metric_label`` of each row of a leaderboard or scores frame."""
    return [
        metric_label(*row) for row in frame[["metric", "metric_version", "higher_is_better"]].itertuples(index=False)
    ]


def leaderboard_frame(rows: list[dict]) -> pd.DataFrame:
    """``harness.results.stats.leaderboard`` rows as a frame with a ``metric_label`` column."""
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["metric_label"] = metric_labels(board)
    return board


def statistics(results: Results, base: str = BASE, by: Sequence[str] = ()) -> pd.DataFrame:
    """The leaderboard of ``results`` (split further by the columns ``by``, e.g. per category) as a frame."""
    signals = signals_by_method(results.training_signals)
    return leaderboard_frame(leaderboard(results.scores, results.names, base, signals=signals, by=by))


def hacking(results: Results, base: str = BASE) -> pd.DataFrame:
    """The reward-hacking report of ``results`` (``harness.results.hacking.hacking_report``) as a frame."""
    signals = signals_by_method(results.training_signals)
    rows = leaderboard(results.scores, results.names, base, signals=signals)
    diversity = experiments_diversity(results.diversity, results.names, base)
    return pd.DataFrame(hacking_report(rows, diversity, base=base), columns=HACKING_COLUMNS)


def curves(results: Results, base: str = BASE) -> pd.DataFrame:
    """``harness.evaluation.curves.curve_points`` of every experiment shown (each against its own base), with a
    ``metric_label`` column."""
    scores = pd.concat([results.scores, results.curve_scores], ignore_index=True)
    parts = (
        [(scores, base)]
        if not results.names
        else [
            (scores[scores["method"].str.startswith(qualified(name, ""))], qualified(name, base))
            for name in results.names
        ]
    )
    points = pd.concat([curve_points(own, own_base) for own, own_base in parts], ignore_index=True)
    return leaderboard_frame(points.to_dict("records"))


def filter_split(board: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split ('seen' / 'unseen'), or all of them for 'all'."""
    return board if split == "all" or board.empty else board[board["split"] == split]


def overview_table(board: pd.DataFrame, methods: Sequence[str], values: str = "mean") -> pd.DataFrame:
    """One row per method, one column per (suite, metric): the mean score (or another field).

    Methods come in ``methods`` order so the table does not reshuffle between reloads.
    """
    board = board.assign(column=board["suite"] + " · " + board["metric_label"])
    table = board.pivot_table(index="method", columns="column", values=values, aggfunc="first", sort=True)
    table = table.reindex([m for m in methods if m in table.index])
    table.columns.name = None
    return table.reset_index()


def signal_cells(board: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Boolean frame shaped like ``overview_table``: True where the row's method was trained on
    the column's metric."""
    flags = overview_table(board, methods, values="trained_on_signal")
    mask = flags.drop(columns="method").eq(True)  # a method without that column's scores: False
    mask.insert(0, "method", False)
    return mask


def column_directions(board: pd.DataFrame) -> dict[str, bool]:
    """``{overview column: higher_is_better}``, as the statistics found it in the scores."""
    return {
        f"{suite} · {label}": bool(higher)
        for suite, label, higher in board[["suite", "metric_label", "higher_is_better"]]
        .drop_duplicates()
        .itertuples(index=False)
    }


def best_cells(table: pd.DataFrame, directions: Mapping[str, bool]) -> pd.DataFrame:
    """Boolean frame: True where a cell holds its column's best value (ties all marked)."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column, higher in directions.items():
        if column in table.columns and table[column].notna().any():
            best = table[column].max() if higher else table[column].min()
            mask[column] = table[column] == best
    return mask


NO_INTERVAL = "none (1 prompt)"


def _interval(low: float | None, high: float | None, fmt: str, value: float | None = None) -> str:
    """``[low, high]``; where a ``value`` has no interval (one prompt) says so, else empty (no value)."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "" if value is None or pd.isna(value) else NO_INTERVAL
    return f"[{low:{fmt}}, {high:{fmt}}]"


def detail_table(board: pd.DataFrame, label: str, methods: Sequence[str], by: str | None = None) -> pd.DataFrame:
    """One metric: a row per (method, suite) — or (method, suite, ``by``) with the part's prompt
    count — with mean, CI, delta and win rate vs the base.

    Numbers stay numeric (so columns sort); intervals are text next to them.
    """
    rows = board[board["metric_label"] == label].copy()
    order = {m: i for i, m in enumerate(methods)}
    keys = ["suite", *([by] if by else []), "method"]
    rows = rows.sort_values(keys, key=lambda c: c.map(order) if c.name == "method" else c)
    parts = {by: rows[by], "prompts": rows["n_prompts"]} if by else {}
    return pd.DataFrame(
        {
            "method": rows["method"],
            "suite": rows["suite"],
            "split": rows["split"],
            **parts,
            "n": rows["n"],
            "mean": rows["mean"],
            "trained_on_signal": rows["trained_on_signal"],
            "95% CI": [_interval(lo, hi, ".4g", v) for lo, hi, v in zip(rows["ci_low"], rows["ci_high"], rows["mean"])],
            "Δ vs base": pd.to_numeric(rows["delta_vs_base"]),
            "Δ 95% CI": [
                _interval(lo, hi, ".3g", v)
                for lo, hi, v in zip(rows["delta_ci_low"], rows["delta_ci_high"], rows["delta_vs_base"])
            ],
            "win rate vs base": pd.to_numeric(rows["win_rate_vs_base"]),
            "win 95% CI": [_interval(lo, hi, ".0%") for lo, hi in zip(rows["win_ci_low"], rows["win_ci_high"])],
        }
    ).reset_index(drop=True)


def category_label(category: str | None, n_prompts: int) -> str:
    """A category with its prompt count, which tells how wide its CIs may be."""
    return f"{category or 'no category'} ({n_prompts} prompt{'' if n_prompts == 1 else 's'})"


def delta_frame(board: pd.DataFrame, label: str, *, y: str, facet: str) -> pd.DataFrame:
    """The rows of one metric that have a Δ vs the base, shaped for ``dashboard.charts.delta_chart``:
    columns y, facet (labels: method, suite, or a category with its prompt count), method, delta,
    low, high (NaN where there is no interval), n_prompts and verdict (``harness.results.stats.verdict``)."""
    rows = board[(board["metric_label"] == label) & board["delta_vs_base"].notna()]

    def labels(field: str) -> list[str]:
        if field == "category":
            return [category_label(c, n) for c, n in zip(rows["category"], rows["n_prompts"])]
        return rows[field].tolist()

    return pd.DataFrame(
        {
            "y": labels(y),
            "facet": labels(facet),
            "method": rows["method"].tolist(),
            "delta": pd.to_numeric(rows["delta_vs_base"]).tolist(),
            "low": pd.to_numeric(rows["delta_ci_low"]).tolist(),
            "high": pd.to_numeric(rows["delta_ci_high"]).tolist(),
            "n_prompts": rows["n_prompts"].tolist(),
            "verdict": [
                verdict(r.get("delta_ci_low"), r.get("delta_ci_high"), higher_is_better_of(r)) for r in _records(rows)
            ],
        }
    )


def _records(rows: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for missing values (a frame turns None into NaN)."""
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in rows.to_dict("records")]


def direction_title(board: pd.DataFrame, label: str, base: str) -> str:
    """The Δ axis of a metric: what is compared, and which way is better."""
    higher = higher_is_better_of(_records(board[board["metric_label"] == label].head(1))[0])
    return f"Δ vs {base} with 95% CI ({'higher' if higher else 'lower'} is better)"


def best_per_suite(detail: pd.DataFrame, higher: bool) -> pd.Series:
    """True on the rows whose mean is the best of their suite."""
    best = detail.groupby("suite")["mean"].transform("max" if higher else "min")
    return detail["mean"] == best


def image_file(results_dir: Path, path: str) -> Path | None:
    """The file of a stored image path, or None when it is missing or lies outside the results dir.

    Paths come from the database, never from the browser, and are relative to the results directory.
    """
    root = Path(results_dir).resolve()
    resolved = ResultsDir(root).file(path).resolve()
    return resolved if resolved.is_relative_to(root) and resolved.is_file() else None


def thumbnail(path: Path, size: int) -> bytes:
    """What the browser loads per image, no larger than ``size`` pixels on its longer side: a JPEG of a large
    image made smaller; a small image (the toy world's 32 px) enlarged by a whole factor, each pixel a block
    (no smoothing, which would blur shapes drawn pixel by pixel), as a PNG (JPEG would blur the blocks' edges)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        factor = size // max(image.size)
        buffer = io.BytesIO()
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
            image.save(buffer, format="PNG")
        else:
            image.thumbnail((size, size))
            image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    """A ``thumbnail`` as a data URL (PNG or JPEG, as its bytes say)."""
    kind = "png" if data.startswith(b"\x89PNG") else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def spread_prompts(images: pd.DataFrame, n: int) -> list[str]:
    """``n`` prompt ids of one suite's images, taken in turn from each category (in name order; each
    category's prompts in id order), so that a grid shows the suite's range rather than its first prompts."""
    prompts = images.drop_duplicates("prompt_id").sort_values("prompt_id")
    by_category = [list(rows["prompt_id"]) for _, rows in prompts.groupby(prompts["category"].fillna(""), sort=True)]
    longest = max(map(len, by_category), default=0)
    return [ids[i] for i in range(longest) for ids in by_category if i < len(ids)][:n]


def prompt_table(images: pd.DataFrame, suite: str, categories: Sequence[str]) -> pd.DataFrame:
    """The prompts of a suite (optionally of some categories), one row each, in prompt_id order."""
    rows = images[images["suite"] == suite]
    if categories:
        rows = rows[rows["category"].isin(categories)]
    return rows.drop_duplicates("prompt_id")[["prompt_id", "prompt", "category"]].sort_values("prompt_id")


def image_grid(
    results: Results,
    suite: str,
    prompt_ids: Sequence[str],
    image_index: int,
    px: int,
    thumb: Callable[[Path, int], bytes] = thumbnail,
) -> pd.DataFrame:
    """One image per (prompt, method) at ``image_index`` — the same seed for every method — shaped for
    ``dashboard.charts.image_grid_chart``: columns row (the prompt and its seed), prompt, method, seed,
    url (a data URL of a ``px`` thumbnail; None where the file is missing)."""
    images = results.images
    images = images[
        (images["suite"] == suite) & images["prompt_id"].isin(prompt_ids) & (images["image_index"] == image_index)
    ]
    rows = []
    for prompt_id in prompt_ids:
        of_prompt = images[images["prompt_id"] == prompt_id]
        if of_prompt.empty:
            continue
        seeds = set(of_prompt["seed"])
        prompt = of_prompt["prompt"].iloc[0]
        short = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        row = f"{short} · seed {seeds.pop()}" if len(seeds) == 1 else f"{short} · seeds differ"
        for image in of_prompt.itertuples():
            path = results.image_file(image.path)
            url = None if path is None else data_url(thumb(path, px))
            rows.append({"row": row, "prompt": prompt, "method": image.method, "seed": image.seed, "url": url})
    return pd.DataFrame(rows, columns=["row", "prompt", "method", "seed", "url"])


def prompt_grid(results: Results, suite: str, prompt_id: str) -> pd.DataFrame:
    """Images of one prompt across methods: a row per (image_index, method) with path, seed and scores.

    Score columns are the metric labels, so each image's caption can list them.
    """
    images = results.images[(results.images["suite"] == suite) & (results.images["prompt_id"] == prompt_id)]
    scores = results.scores[(results.scores["suite"] == suite) & (results.scores["prompt_id"] == prompt_id)]
    wide = pd.DataFrame(index=pd.MultiIndex.from_arrays([[], []], names=["run_id", "image_index"]))
    if not scores.empty:
        scores = scores.assign(label=metric_labels(scores))
        wide = scores.pivot_table(index=["run_id", "image_index"], columns="label", values="value", aggfunc="first")
        wide.columns.name = None
    grid = images[["run_id", "method", "image_index", "seed", "path"]].merge(
        wide.reset_index(), on=["run_id", "image_index"], how="left"
    )
    return grid.sort_values(["image_index", "method"]).reset_index(drop=True)


def verification_lines(results: Results) -> list[str]:
    """When each results directory was last checked by `harness verify`, and what it found."""
    lines = []
    for name, record in results.verified:
        where = f"{name}: " if name else ""
        if record is None:
            lines.append(
                f"{where}never verified (`harness verify --out DIR` checks every image, score, checkpoint "
                "and cache entry)"
            )
        else:
            found = "no problems" if not record["problems"] else f"{record['problems']} problem(s) left"
            lines.append(f"{where}last verified {record['at'].replace('T', ' ').replace('+00:00', ' UTC')}: {found}")
    return lines


def overlap_warnings(results: Results) -> list[str]:
    """One sentence per trained method and unseen suite whose prompts appear in its training captions."""
    overlaps = results.overlaps
    rows = overlaps[(overlaps["n_overlap"] > 0) & (overlaps["split"] == "unseen") & ~overlaps["method"].map(is_base)]
    return [
        f"{r.method}: {r.n_overlap} prompt(s) of the unseen suite '{r.suite}' appear in its training "
        "captions, so that suite is not entirely unseen for it."
        for r in rows.itertuples()
    ]
