"""Statistics behind the leaderboard: bootstrap CIs over prompts, paired deltas, win rates.

Input everywhere is the store's scores frame, one row per scored image, with columns
``method, suite, split, metric, metric_version, prompt_id, category, image_index, seed, value``.

Why these choices:
- Prompts, not images, are the sampling unit: the k images of a prompt are correlated, so
  every bootstrap resamples whole prompts (a mean over images of the drawn prompts).
- Two methods are compared on the *same* image slots: rows are paired on
  ``prompt_id, image_index, seed``, so a different seed protocol yields no pairs rather than a
  silently unpaired comparison.
- The win rate is the papers' (Diffusion-DRO): per prompt the median of the k scores of each
  method, a win when the method's median is strictly better, so identical methods score 0.
  Its CI is Wilson's score interval, which stays honest at 0 % and 100 % where a bootstrap
  collapses to a single point.
- Better is the metric's direction: the scores frame's ``higher_is_better`` (the scorer's, as
  the store records it; True when the column is absent).  On a lower-is-better metric (an error,
  a distance) a win is a strictly lower median.  Δ is the plain difference of the means (a - b)
  in the metric's units whatever the direction, so on such a metric a negative Δ is a gain.
  Which value of a column is best and whether a Δ is a gain go through ``toward_better``, the
  one place a direction turns into a sign for outputs.
- Per-category rows (``leaderboard(by=["category"])``) are the overall rows computed on each
  category's prompts alone, by the same code.  A bootstrap over one prompt has nothing to
  resample, so its interval is missing (None), never a zero-width one; few prompts give the
  wide intervals they deserve.
- Every bootstrap starts from its own generator seeded with ``seed``: a row's numbers do not
  depend on which other rows were computed before it.
- A method whose training data was shaped by a metric (experts ranked by it, pairs labelled
  by it) has its rows of that metric flagged ``trained_on_signal``: a gain there is partly
  the training objective, not independent evidence of a better model.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError

COLUMNS = (
    "method",
    "suite",
    "split",
    "metric",
    "metric_version",
    "prompt_id",
    "category",
    "image_index",
    "seed",
    "value",
)
PAIR_KEYS = ["prompt_id", "image_index", "seed"]
DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
_Z95 = 1.959963984540054  # standard normal quantile at 0.975
# How the outputs (CLI table, dashboard) mark a trained_on_signal row, and what the mark means.
SIGNAL_MARK = "†"
SIGNAL_MEANING = "trained on this signal: a gain here is not independent evidence"
SIGNAL_NOTE = f"{SIGNAL_MARK} {SIGNAL_MEANING}"
# How they mark a lower-is-better metric (an error, a distance), and what follows for Δ and the win rate.
LOWER_MARK = "↓"
LOWER_NOTE = (
    f"{LOWER_MARK} lower is better: a negative Δ is a gain, and a win is a prompt where the method's median is lower"
)


def toward_better(value: float, higher_is_better: bool = True) -> float:
    """``value`` signed so that larger is better: the one place a metric's direction becomes a sign
    (which value of a column is best, whether a Δ is a gain)."""
    return value if higher_is_better else -value


def best_flags(values: Iterable[float | None], higher_is_better: bool = True) -> list[bool]:
    """True where a value is its list's best (ties all True); None and NaN are never best."""
    values = list(values)
    known = [toward_better(v, higher_is_better) for v in values if v is not None and not math.isnan(v)]
    best = max(known, default=None)
    return [
        best is not None and v is not None and not math.isnan(v) and toward_better(v, higher_is_better) == best
        for v in values
    ]


VERDICTS = ("better than base", "worse than base", "CI includes 0", "no CI (1 prompt)")


def verdict(ci_low: float | None, ci_high: float | None, higher_is_better: bool = True) -> str:
    """What a Δ's 95 % CI says (one of ``VERDICTS``): a gain, a loss, or no clear difference."""
    if ci_low is None or ci_high is None:
        return VERDICTS[3]
    low, high = sorted((toward_better(ci_low, higher_is_better), toward_better(ci_high, higher_is_better)))
    return VERDICTS[0] if low > 0 else VERDICTS[1] if high < 0 else VERDICTS[2]


def higher_is_better_of(row: Mapping[str, Any]) -> bool:
    """A leaderboard row's direction (True where the row does not say)."""
    return row.get("higher_is_better") is not False


def _check_columns(scores: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in scores.columns]
    if missing:
        raise HarnessError(f"scores frame lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")


def bootstrap_mean_ci(
    values: np.ndarray, groups: np.ndarray, *, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the mean of ``values``, resampling whole ``groups`` (prompts).

    A drawn prompt contributes all its values, so the statistic is the image-level mean of the
    resampled prompts (prompts with more images weigh more, as in the point estimate).  Fewer
    than two prompts give (NaN, NaN): no interval.
    """
    codes, uniques = pd.factorize(pd.Series(groups), sort=True)
    if len(uniques) < 2:  # one prompt: every resample is that prompt, which says nothing about spread
        return math.nan, math.nan
    sums = np.bincount(codes, weights=np.asarray(values, dtype=float), minlength=len(uniques))
    counts = np.bincount(codes, minlength=len(uniques)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniques), size=(n_boot, len(uniques)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def ci_units(ours: float, ci_low: float | None, ci_high: float | None, paper: float) -> float | None:
    """(ours - paper) over the distance from ``ours`` to the CI bound on the paper's side; None for a zero-width
    side or no interval (one prompt)."""
    if ci_low is None or ci_high is None:
        return None
    half = ci_high - ours if paper > ours else ours - ci_low
    if half <= 0:
        return 0.0 if ours == paper else None
    return (ours - paper) / half


def wilson_ci(wins: int, n: int) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion ``wins / n``."""
    if n == 0:
        return math.nan, math.nan
    p = wins / n
    denom = 1 + _Z95**2 / n
    centre = (p + _Z95**2 / (2 * n)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n * n)) / denom
    # At 0 and n wins the bound is exactly 0 (or 1); say so rather than return rounding noise.
    low = 0.0 if wins == 0 else centre - half
    high = 1.0 if wins == n else centre + half
    return low, high


def _select(scores: pd.DataFrame, method: str, metric: str, suite: str, metric_version: str | None) -> pd.DataFrame:
    rows = scores[(scores["method"] == method) & (scores["metric"] == metric) & (scores["suite"] == suite)]
    if metric_version is not None:
        rows = rows[rows["metric_version"] == metric_version]
    return rows


def _pairs(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of a and b on the same image slot, with columns prompt_id, value_a, value_b."""
    # pandas matches NaN keys with each other, so images of unknown seed still pair by index.
    return (
        a[PAIR_KEYS + ["value"]]
        .merge(b[PAIR_KEYS + ["value"]], on=PAIR_KEYS, suffixes=("_a", "_b"))
        .sort_values(PAIR_KEYS)
    )


def higher_is_better(rows: pd.DataFrame) -> bool:
    """The direction of the one metric ``rows`` hold (True when the frame does not say)."""
    if "higher_is_better" not in rows.columns or rows.empty:
        return True
    directions = set(rows["higher_is_better"].astype(bool))
    if len(directions) > 1:
        metric = ", ".join(sorted(set(rows["metric"])))
        raise HarnessError(
            f"{metric!r} is stored as both higher- and lower-is-better; score it again (rerun the "
            "command that scored it) so that its scorer's direction is recorded"
        )
    return directions.pop()


def _wins(pairs: pd.DataFrame, higher: bool) -> tuple[int, int]:
    """(prompts where a's median beats b's strictly, prompts compared); beating is scoring higher, or lower
    when not ``higher``."""
    # Medians over the paired images only, so both sides summarise the same seeds.
    medians = pairs.groupby("prompt_id")[["value_a", "value_b"]].median()
    better = medians["value_a"] > medians["value_b"] if higher else medians["value_a"] < medians["value_b"]
    return int(better.sum()), len(medians)


def _compare(a: pd.DataFrame, b: pd.DataFrame, *, higher: bool, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison of two methods' rows of one (suite, metric, version): a minus b."""
    pairs = _pairs(a, b)
    if pairs.empty:
        return {
            "n_pairs": 0,
            "n_prompts": 0,
            "mean_diff": None,
            "diff_ci_low": None,
            "diff_ci_high": None,
            "win_rate": None,
            "win_ci_low": None,
            "win_ci_high": None,
        }
    diff = (pairs["value_a"] - pairs["value_b"]).to_numpy()
    diff_low, diff_high = bootstrap_mean_ci(diff, pairs["prompt_id"].to_numpy(), n_boot=n_boot, seed=seed)
    wins, n_prompts = _wins(pairs, higher)
    win_low, win_high = wilson_ci(wins, n_prompts)
    return {
        "n_pairs": len(pairs),
        "n_prompts": n_prompts,
        "mean_diff": float(diff.mean()),
        "diff_ci_low": diff_low,
        "diff_ci_high": diff_high,
        "win_rate": wins / n_prompts,
        "win_ci_low": win_low,
        "win_ci_high": win_high,
    }


def paired_comparison(
    scores: pd.DataFrame,
    method_a: str,
    method_b: str,
    metric: str,
    suite: str,
    *,
    metric_version: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """``method_a`` against ``method_b`` on the same prompts and seeds.

    Returns ``n_pairs, n_prompts, mean_diff`` (a - b) with ``diff_ci_low/high`` (bootstrap over
    prompts), and ``win_rate`` of a over b (median-of-k per prompt, strictly better in the metric's
    direction) with ``win_ci_low/high`` (Wilson).  Values are None when the two share no image slot.
    """
    _check_columns(scores)
    a = _select(scores, method_a, metric, suite, metric_version)
    b = _select(scores, method_b, metric, suite, metric_version)
    for method, rows in ((method_a, a), (method_b, b)):
        if rows.empty:
            raise HarnessError(f"no {metric!r} scores for method {method!r} on suite {suite!r}")
    versions = set(a["metric_version"]) | set(b["metric_version"])
    if len(versions) > 1:
        raise HarnessError(
            f"{metric!r} has several versions ({', '.join(sorted(map(str, versions)))}); pass metric_version=..."
        )
    return _compare(a, b, higher=higher_is_better(pd.concat([a, b])), n_boot=n_boot, seed=seed)


def _clean(value: Any) -> Any:
    """Plain Python scalars, NaN -> None: rows go straight to JSON."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def signals_by_method(training_signals: pd.DataFrame) -> dict[str, set[str]]:
    """``{method: metrics}`` from the store's ``training_signals_frame()`` (columns method, metric)."""
    return {method: set(rows["metric"]) for method, rows in training_signals.groupby("method", sort=True)}


def leaderboard(
    scores: pd.DataFrame,
    base: str = "base",
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    signals: Mapping[str, Collection[str]] | None = None,
    by: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per (method, suite, metric, metric_version), with CIs and deltas against ``base``.

    Row keys: method, suite, split, metric, metric_version, higher_is_better, n (images), n_prompts,
    mean, std, ci_low, ci_high, delta_vs_base, delta_ci_low, delta_ci_high, win_rate_vs_base,
    win_ci_low, win_ci_high, trained_on_signal.  The comparison fields are None for the base
    itself and where the base has no paired scores on that suite and metric; the CIs are None
    over a single prompt.  ``signals`` maps a method to
    the metrics that shaped its training data (``signals_by_method``); ``trained_on_signal`` is
    True on those rows only.  ``by`` names columns of ``scores`` (e.g. ``["category"]``) that
    split each row further, every statistic computed within the part; those keys follow
    higher_is_better.  ``higher_is_better`` comes from the frame's column of that name where it
    has one, else True.
    """
    signals = signals or {}
    _check_columns(scores)
    missing = [column for column in by if column not in scores.columns]
    if missing:
        raise HarnessError(f"cannot group the leaderboard by {', '.join(missing)}: the scores have no such column")
    if scores.empty:
        return []
    # A canonical row order makes the float sums, hence every number, independent of how the
    # store happened to return the rows.
    scores = scores.sort_values(["method", "suite", "metric", "metric_version"] + PAIR_KEYS, kind="stable")
    rows: list[dict[str, Any]] = []
    keys = ["suite", "metric", "metric_version", *by]
    for key, block in scores.groupby(keys, sort=True, dropna=False):
        suite, metric, version, *parts = key
        base_rows = block[block["method"] == base]
        higher = higher_is_better(block)
        for method, group in block.groupby("method", sort=True):
            values = group["value"].to_numpy(dtype=float)
            ci_low, ci_high = bootstrap_mean_ci(values, group["prompt_id"].to_numpy(), n_boot=n_boot, seed=seed)
            row = {
                "method": method,
                "suite": suite,
                "split": group["split"].iloc[0],
                "metric": metric,
                "metric_version": version,
                "higher_is_better": higher,
                **dict(zip(by, parts)),
                "n": len(values),
                "n_prompts": group["prompt_id"].nunique(),
                "mean": values.mean(),
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "delta_vs_base": None,
                "delta_ci_low": None,
                "delta_ci_high": None,
                "win_rate_vs_base": None,
                "win_ci_low": None,
                "win_ci_high": None,
                "trained_on_signal": metric in signals.get(method, ()),
            }
            if method != base and not base_rows.empty:
                cmp = _compare(group, base_rows, higher=higher, n_boot=n_boot, seed=seed)
                row.update(
                    delta_vs_base=cmp["mean_diff"],
                    delta_ci_low=cmp["diff_ci_low"],
                    delta_ci_high=cmp["diff_ci_high"],
                    win_rate_vs_base=cmp["win_rate"],
                    win_ci_low=cmp["win_ci_low"],
                    win_ci_high=cmp["win_ci_high"],
                )
            rows.append({k: _clean(v) for k, v in row.items()})
    return rows


def win_rate_matrix(
    scores: pd.DataFrame, metric: str, suite: str, *, metric_version: str | None = None
) -> pd.DataFrame:
    """Square frame: entry [a, b] is a's win rate over b (median-of-k, strictly better in the metric's
    direction); NaN on the diagonal and where two methods share no image slot.  Rows and columns are the
    methods, sorted."""
    _check_columns(scores)
    rows = scores[(scores["metric"] == metric) & (scores["suite"] == suite)]
    if metric_version is not None:
        rows = rows[rows["metric_version"] == metric_version]
    elif rows["metric_version"].nunique() > 1:
        raise HarnessError(f"{metric!r} has several versions on {suite!r}; pass metric_version=...")
    higher = higher_is_better(rows)
    methods = sorted(rows["method"].unique())
    by_method = {m: rows[rows["method"] == m] for m in methods}
    matrix = pd.DataFrame(np.nan, index=pd.Index(methods, name="method"), columns=methods)
    for a in methods:
        for b in methods:
            if a == b:
                continue
            pairs = _pairs(by_method[a], by_method[b])
            if not pairs.empty:
                wins, n_prompts = _wins(pairs, higher)
                matrix.loc[a, b] = wins / n_prompts
    return matrix.astype(float)
