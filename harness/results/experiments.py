"""Experiments side by side: several results directories in one leaderboard or dashboard.

`harness leaderboard --out A --out B` (or ``--out A,B``; ``NAME=DIR`` names one), and `harness dashboard`,
`figure` and `export` with the same options, show every run of every directory, its method named
``experiment/method`` (the experiment: the directory's name, or NAME), the experiments in the order given.

How they compare:
- Each experiment keeps its own base: Δ and win rate of ``A/dpo`` are against ``A/base``, paired
  image by image on A's own prompts and seeds, exactly as A's own leaderboard has them.  No Δ is
  computed across experiments, whose bases may differ (another base model, other seeds); read
  their means and CIs side by side instead.
- A column holds one suite version and one metric version.  Two experiments that evaluated a
  suite from other prompts (another version, another --max-prompts) or scored a metric with
  another scorer version are refused, with the first such difference named: their numbers are
  not of the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.evaluation.curves import split_snapshots
from harness.results.layout import ResultsDir
from harness.results.stats import leaderboard as statistics
from harness.results.stats import signals_by_method
from harness.results.store import Store
from harness.run import leaderboard as one_directory

SEPARATOR = "/"  # experiment/method
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Experiment:
    name: str
    results: ResultsDir


def parse_experiments(values: Sequence[str]) -> list[Experiment]:
    """``--out`` values, each a directory, ``NAME=DIR`` or a comma list of them; names must differ."""
    experiments = []
    for value in values:
        for spec in filter(None, (part.strip() for part in value.split(","))):
            name, _, location = spec.partition("=") if "=" in spec else ("", "", spec)
            name = name or Path(location).resolve().name
            if not NAME_PATTERN.fullmatch(name):
                raise HarnessError(
                    f"--out {spec!r}: an experiment's name is letters, digits and . _ + - (name it NAME=DIR)"
                )
            experiments.append(Experiment(name, ResultsDir(location)))
    names = [e.name for e in experiments]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise HarnessError(
            f"two experiments named {twice[0]!r}: name them apart with NAME=DIR, e.g. "
            f"--out a={experiments[names.index(twice[0])].results.root}"
        )
    if not experiments:
        raise HarnessError("--out names no results directory")
    return experiments


def qualified(experiment: str, method: str) -> str:
    return f"{experiment}{SEPARATOR}{method}"


def check_comparable(versions: Mapping[str, pd.DataFrame]) -> None:
    """Refuse experiments whose suites or metrics differ in version.  ``versions``: experiment -> a frame
    with columns kind ('suite' | 'metric'), name, version (every one it holds)."""
    seen: dict[tuple[str, str], tuple[str, frozenset[str]]] = {}
    for experiment, frame in versions.items():
        for (kind, name), rows in frame.groupby(["kind", "name"], sort=True):
            held = frozenset(rows["version"])
            first = seen.setdefault((kind, name), (experiment, held))
            if first[1] != held:
                why = "other prompts" if kind == "suite" else "another scorer version"
                raise HarnessError(
                    f"cannot compare {first[0]} and {experiment}: {kind} {name!r} is version "
                    f"{', '.join(sorted(first[1]))} in {first[0]} and {', '.join(sorted(held))} in {experiment} ({why}), "
                    "and one column holds one version"
                )


def versions_of(images: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The suite and metric versions a results directory holds (``check_comparable``'s frame)."""
    suites = images[["suite", "suite_version"]].drop_duplicates().set_axis(["name", "version"], axis=1)
    metrics = scores[["metric", "metric_version"]].drop_duplicates().set_axis(["name", "version"], axis=1)
    return pd.concat([suites.assign(kind="suite"), metrics.assign(kind="metric")], ignore_index=True)


def leaderboard(
    scores: pd.DataFrame,
    experiments: Sequence[str],
    base: str = "base",
    *,
    signals: Mapping[str, Collection[str]] | None = None,
    by: Sequence[str] = (),
) -> list[dict]:
    """``harness.results.stats.leaderboard`` of every experiment, each against its own base (``experiments``: their
    names; methods in ``scores`` are qualified).  No experiments: one results directory, as it is."""
    if not experiments:
        return statistics(scores, base=base, signals=signals, by=by)
    rows = []
    for experiment in experiments:
        own = scores[scores["method"].str.startswith(experiment + SEPARATOR)]
        rows += statistics(own, base=qualified(experiment, base), signals=signals, by=by)
    # Interleaved: each suite, metric (and part) with every experiment's rows together, the experiments in
    # the order given, each with its base first, so that the rows compared stand next to each other.
    order = {name: i for i, name in enumerate(experiments)}

    def place(row: dict) -> tuple:
        experiment, _, method = row["method"].partition(SEPARATOR)
        parts = tuple((row[c] is None, str(row[c])) for c in by)
        return row["suite"], row["metric"], row["metric_version"], parts, order[experiment], method != base, method

    return sorted(rows, key=place)


def load_leaderboard(experiments: Sequence[Experiment], base: str = "base", by: Sequence[str] = ()) -> list[dict]:
    """`harness leaderboard`'s rows of one results directory, or of several side by side."""
    if len(experiments) == 1:
        return one_directory(experiments[0].results.root, base=base, by=by)
    scores, signals, versions = [], {}, {}
    for experiment in experiments:
        db = experiment.results.db
        if not db.exists():
            raise HarnessError(f"no results in {experiment.results.root}: {db} does not exist")
        with Store(db, readonly=True) as store:
            own, images = split_snapshots(store.scores_frame())[0], store.images_frame()
            own_signals = signals_by_method(store.training_signals_frame())
        versions[experiment.name] = versions_of(images, own)
        scores.append(own.assign(method=[qualified(experiment.name, m) for m in own["method"]]))
        signals |= {qualified(experiment.name, m): metrics for m, metrics in own_signals.items()}
    check_comparable(versions)
    return leaderboard(
        pd.concat(scores, ignore_index=True), [e.name for e in experiments], base, signals=signals, by=by
    )
