"""Statistics on synthetic scores whose answers are known in advance."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.results.stats import (
    VERDICTS,
    best_flags,
    bootstrap_mean_ci,
    leaderboard,
    paired_comparison,
    signals_by_method,
    verdict,
    wilson_ci,
    win_rate_matrix,
)


def frame(
    method: str,
    values: np.ndarray,
    *,
    suite: str = "parti",
    metric: str = "pickscore",
    version: str = "v1",
    seed0: int = 0,
    categories: tuple[str, ...] = ("animals", "art"),
) -> pd.DataFrame:
    """values[k, j] = score of image j of prompt k; seeds follow the harness protocol seed0 + k + j*N."""
    n_prompts, k = values.shape
    rows = [
        {
            "method": method,
            "suite": suite,
            "split": "unseen",
            "metric": metric,
            "metric_version": version,
            "prompt_id": f"p{p:04d}",
            "category": categories[p % len(categories)],
            "image_index": j,
            "seed": seed0 + p + j * n_prompts,
            "value": float(values[p, j]),
        }
        for p in range(n_prompts)
        for j in range(k)
    ]
    return pd.DataFrame(rows)


def row_of(rows: list[dict], method: str, **match) -> dict:
    found = [r for r in rows if r["method"] == method and all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def base_values() -> np.ndarray:
    return np.random.default_rng(1).normal(20.0, 1.0, size=(200, 5))


def test_summary_matches_numpy_and_ci_is_the_textbook_one(base_values):
    rows = leaderboard(frame("base", base_values), n_boot=2000)
    row = row_of(rows, "base")
    flat = base_values.ravel()
    assert row["n"] == flat.size and row["n_prompts"] == 200
    assert row["mean"] == pytest.approx(flat.mean())
    assert row["std"] == pytest.approx(flat.std(ddof=1))
    # Independent images: the bootstrap over prompts approximates mean +- 1.96 * sd / sqrt(n), within
    # a few percent here; a 90 % interval (1.645) would be 16 % narrower, a 99 % one (2.576) 31 % wider.
    half = 1.96 * flat.std(ddof=1) / math.sqrt(flat.size)
    assert row["ci_low"] == pytest.approx(flat.mean() - half, abs=0.06 * half)
    assert row["ci_high"] == pytest.approx(flat.mean() + half, abs=0.06 * half)
    assert row["delta_vs_base"] is None and row["win_rate_vs_base"] is None and row["win_ci_low"] is None


def percentile_bootstrap(per_prompt: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, float, float]:
    """(2.5th, 97.5th percentile, std) of the image-level mean over prompts drawn with replacement,
    written independently of harness.results.stats: a resample is a multinomial count of draws per prompt."""
    sums = np.array([values.sum() for values in per_prompt])
    sizes = np.array([len(values) for values in per_prompt], dtype=float)
    n = len(per_prompt)
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot)
    means = (draws @ sums) / (draws @ sizes)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high), float(means.std())


def test_cis_are_the_95_percent_percentile_bootstrap_over_prompts():
    """Skewed scores, prompts with 3 or 4 images, and a paired difference: the leaderboard's CIs are the
    2.5th and 97.5th percentiles of the prompt bootstrap.  With 20000 resamples on each side the
    endpoints agree to ~0.02 bootstrap standard deviations; those of a 90 % interval lie ~0.3 inside."""
    rng = np.random.default_rng(7)
    base = rng.exponential(1.0, size=(60, 4))
    method = base + rng.exponential(0.5, size=base.shape)
    scores = pd.concat([frame("base", base), frame("m", method)])
    scores = scores[~((scores["image_index"] == 3) & (scores["prompt_id"].str[1:].astype(int) % 2 == 0))]
    rows = leaderboard(scores, n_boot=20_000)
    keep = [np.arange(4) if p % 2 else np.arange(3) for p in range(60)]

    low, high, spread = percentile_bootstrap([base[p, k] for p, k in enumerate(keep)], 20_000, seed=123)
    row = row_of(rows, "base")
    assert row["ci_low"] == pytest.approx(low, abs=0.05 * spread)
    assert row["ci_high"] == pytest.approx(high, abs=0.05 * spread)

    low, high, spread = percentile_bootstrap([(method - base)[p, k] for p, k in enumerate(keep)], 20_000, seed=321)
    row = row_of(rows, "m")
    assert row["delta_ci_low"] == pytest.approx(low, abs=0.05 * spread)
    assert row["delta_ci_high"] == pytest.approx(high, abs=0.05 * spread)


def test_bootstrap_resamples_prompts_not_images():
    # Every prompt's 5 images are identical: there are 50 independent observations, not 250,
    # so the CI must be sqrt(5) wider than an image-level bootstrap would make it.
    per_prompt = np.random.default_rng(2).normal(0.0, 1.0, size=50)
    values = np.repeat(per_prompt, 5)
    prompts = np.repeat(np.arange(50), 5)
    low, high = bootstrap_mean_ci(values, prompts, n_boot=4000, seed=0)
    expected_half = 1.96 * per_prompt.std(ddof=1) / math.sqrt(50)
    assert (high - low) / 2 == pytest.approx(expected_half, rel=0.15)


def test_a_fixed_shift_is_found_with_a_ci_excluding_zero(base_values):
    noise = np.random.default_rng(3).normal(0.0, 0.3, size=base_values.shape)
    scores = pd.concat([frame("base", base_values), frame("dpo", base_values + 0.5 + noise)])
    row = row_of(leaderboard(scores), "dpo")
    assert row["delta_vs_base"] == pytest.approx(0.5 + noise.mean())
    assert 0 < row["delta_ci_low"] < 0.5 < row["delta_ci_high"]
    # Paired: the CI width reflects the noise of the difference (0.3), not the spread of scores (1.0).
    assert row["delta_ci_high"] - row["delta_ci_low"] < 2 * 1.96 * 0.4 / math.sqrt(base_values.size / 5)
    treated = base_values + 0.5 + noise
    expected_win = (np.median(treated, axis=1) > np.median(base_values, axis=1)).mean()
    assert row["win_rate_vs_base"] == pytest.approx(expected_win) and expected_win > 0.9
    assert row["win_ci_low"] < expected_win < row["win_ci_high"]


def test_identical_methods_never_win_under_strict_comparison(base_values):
    scores = pd.concat([frame("base", base_values), frame("copy", base_values)])
    row = row_of(leaderboard(scores), "copy")
    assert row["delta_vs_base"] == 0 and row["delta_ci_low"] == 0 and row["delta_ci_high"] == 0
    assert row["win_rate_vs_base"] == 0.0
    assert row["win_ci_low"] == 0.0 and row["win_ci_high"] == pytest.approx(wilson_ci(0, 200)[1])


def test_win_rate_uses_the_median_of_k_not_the_mean():
    base = np.array([[4, 4, 4], [4, 4, 4]], dtype=float)
    # Prompt 0: median 5 > 4 although the mean (4.33) barely moves; prompt 1: median 3 < 4 although
    # the mean (10) is far higher.  The median rule says one win in two.
    method = np.array([[1, 5, 7], [0, 3, 27]], dtype=float)
    row = row_of(leaderboard(pd.concat([frame("base", base), frame("m", method)])), "m")
    assert row["win_rate_vs_base"] == 0.5
    assert row["delta_vs_base"] == pytest.approx((method - base).mean())


def test_wilson_interval_matches_published_values():
    # Reference values of the Wilson score interval at 95 % (e.g. Newcombe 1998, table I).
    low, high = wilson_ci(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_ci(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))


def test_pairing_requires_the_same_seeds_and_the_base_on_the_suite(base_values):
    scores = pd.concat(
        [
            frame("base", base_values),
            frame("dpo", base_values + 1.0, seed0=1000),  # generated with another base seed: nothing pairs
            frame("dpo", base_values, suite="drawbench"),  # no base on this suite
        ]
    )
    rows = leaderboard(scores)
    for suite in ("parti", "drawbench"):
        row = row_of(rows, "dpo", suite=suite)
        assert row["mean"] is not None
        assert row["delta_vs_base"] is None and row["win_rate_vs_base"] is None and row["delta_ci_low"] is None


def test_metric_versions_are_separate_rows_and_compared_within_a_version(base_values):
    scores = pd.concat(
        [
            frame("base", base_values, metric="hpsv2", version="v2.0"),
            frame("base", base_values + 100, metric="hpsv2", version="v2.1"),
            frame("dpo", base_values + 1, metric="hpsv2", version="v2.0"),
        ]
    )
    rows = leaderboard(scores)
    assert len(rows) == 3
    assert row_of(rows, "dpo")["delta_vs_base"] == pytest.approx(1.0)
    assert row_of(rows, "base", metric_version="v2.1")["mean"] == pytest.approx(base_values.mean() + 100)
    with pytest.raises(HarnessError, match="several versions"):
        paired_comparison(scores, "dpo", "base", "hpsv2", "parti")


def test_leaderboard_is_deterministic_and_json_ready(base_values):
    scores = pd.concat([frame("base", base_values), frame("dpo", base_values[:, ::-1] + 0.1)])
    first, again = leaderboard(scores, n_boot=300), leaderboard(scores.sample(frac=1.0, random_state=0), n_boot=300)
    assert first == again
    other_seed = leaderboard(scores, n_boot=300, seed=1)
    assert row_of(other_seed, "dpo")["ci_low"] != row_of(first, "dpo")["ci_low"]
    # One image per method: std is undefined and must come out as null, not NaN.
    single = leaderboard(frame("base", base_values[:1, :1]))
    assert single[0]["std"] is None
    json.dumps(first + single, allow_nan=False)
    assert set(first[0]) >= {
        "method",
        "suite",
        "split",
        "metric",
        "metric_version",
        "n",
        "mean",
        "std",
        "ci_low",
        "ci_high",
        "delta_vs_base",
        "delta_ci_low",
        "delta_ci_high",
        "win_rate_vs_base",
        "win_ci_low",
        "win_ci_high",
    }


def test_rows_of_a_metric_a_method_was_trained_on_are_flagged_and_nothing_else_changes(base_values):
    scores = pd.concat(
        [
            frame(method, base_values + shift, metric=metric)
            for method, shift in (("base", 0), ("dpo", 1), ("dro", 2))
            for metric in ("pickscore", "hpsv2")
        ]
    )
    recorded = pd.DataFrame(
        {
            "run_id": [2, 2, 3],
            "method": ["dro", "dro", "dpo"],
            "metric": ["hpsv2", "hpsv2.1", "aesthetic"],
            "source": ["experts", "experts", "pairs"],
        }
    )
    signals = signals_by_method(recorded)
    assert signals == {"dpo": {"aesthetic"}, "dro": {"hpsv2", "hpsv2.1"}}

    flagged = leaderboard(scores, n_boot=100, signals=signals)
    assert [(r["method"], r["metric"]) for r in flagged if r["trained_on_signal"]] == [("dro", "hpsv2")]
    plain = leaderboard(scores, n_boot=100)
    assert all(r["trained_on_signal"] is False for r in plain)
    # The flag is the only difference, and the last key: every other field keeps its place.
    assert all(list(r)[-1] == "trained_on_signal" for r in flagged)
    assert [dict(r, trained_on_signal=None) for r in flagged] == [dict(r, trained_on_signal=None) for r in plain]


def test_paired_comparison_between_any_two_methods(base_values):
    scores = pd.concat([frame("base", base_values), frame("dro", base_values + 2), frame("dpo", base_values + 1)])
    result = paired_comparison(scores, "dro", "dpo", "pickscore", "parti")
    assert result["mean_diff"] == pytest.approx(1.0)
    assert result["n_pairs"] == base_values.size and result["n_prompts"] == 200
    assert result["win_rate"] == 1.0
    reverse = paired_comparison(scores, "dpo", "dro", "pickscore", "parti")
    assert reverse["mean_diff"] == pytest.approx(-1.0) and reverse["win_rate"] == 0.0
    with pytest.raises(HarnessError, match="no 'pickscore' scores for method 'smpo'"):
        paired_comparison(scores, "smpo", "dpo", "pickscore", "parti")


def test_win_rate_matrix_rows_beat_columns():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(30, 5))
    noisy = base + rng.normal(scale=0.5, size=base.shape)
    scores = pd.concat([frame("base", base), frame("better", base + 1), frame("noisy", noisy)])
    matrix = win_rate_matrix(scores, "pickscore", "parti")
    assert list(matrix.index) == list(matrix.columns) == ["base", "better", "noisy"]
    assert np.isnan(np.diag(matrix.to_numpy())).all()
    assert matrix.loc["better", "base"] == 1.0 and matrix.loc["base", "better"] == 0.0
    # Continuous scores never tie: a's wins over b and b's over a partition the prompts.
    assert matrix.loc["noisy", "base"] + matrix.loc["base", "noisy"] == pytest.approx(1.0)
    expected = (np.median(noisy, axis=1) > np.median(base, axis=1)).mean()
    assert matrix.loc["noisy", "base"] == pytest.approx(expected)


def test_rows_by_category_are_the_overall_statistics_of_each_category_alone(base_values):
    """``by=["category"]`` runs the overall code on each category's prompts: every number of a category's
    row is the one the leaderboard gives for a frame holding that category only."""
    categories = ("animals", "art", "food & drink")
    scores = pd.concat(
        [
            frame("base", base_values, categories=categories),
            frame("dpo", base_values + 0.1 * (np.arange(200) % 3)[:, None], categories=categories),
        ]
    )
    split = leaderboard(scores, n_boot=200, by=["category"])
    assert {r["category"] for r in split} == set(categories) and len(split) == 2 * len(categories)
    for category in categories:
        alone = leaderboard(scores[scores["category"] == category], n_boot=200)
        assert [{k: v for k, v in r.items() if k != "category"} for r in split if r["category"] == category] == alone
    # The part's key comes after the metric's, so the overall rows keep their layout.
    assert list(split[0])[:7] == [
        "method",
        "suite",
        "split",
        "metric",
        "metric_version",
        "higher_is_better",
        "category",
    ]
    assert row_of(split, "dpo", category="art")["delta_vs_base"] == pytest.approx(0.1)
    with pytest.raises(HarnessError, match="no such column"):
        leaderboard(scores, by=["style"])


def test_a_single_prompt_has_no_interval_and_few_prompts_a_wide_one(base_values):
    """One prompt: nothing to resample, so no CI (None), never a zero-width one; the row stays."""
    scores = pd.concat([frame("base", base_values[:41]), frame("dpo", base_values[:41] + 0.5)])
    scores.loc[scores["prompt_id"] == "p0040", "category"] = "lonely"
    scores.loc[scores["prompt_id"].isin(["p0000", "p0001", "p0002"]), "category"] = "few"
    rows = leaderboard(scores, n_boot=500, by=["category"])
    lonely = row_of(rows, "dpo", category="lonely")
    assert lonely["n_prompts"] == 1 and lonely["mean"] is not None and lonely["delta_vs_base"] == pytest.approx(0.5)
    assert lonely["ci_low"] is lonely["ci_high"] is lonely["delta_ci_low"] is lonely["delta_ci_high"] is None
    assert lonely["win_rate_vs_base"] == 1.0 and lonely["win_ci_low"] < 0.25  # Wilson over one prompt: wide
    assert bootstrap_mean_ci(np.array([1.0, 2.0]), np.array(["p", "p"])) != bootstrap_mean_ci(
        np.array([1.0, 2.0]), np.array(["p", "q"])
    )
    few, every = row_of(rows, "base", category="few"), row_of(leaderboard(scores, n_boot=500), "base")
    assert few["n_prompts"] == 3 and every["n_prompts"] == 41
    assert few["ci_high"] - few["ci_low"] > 1.5 * (every["ci_high"] - every["ci_low"])


def test_direction_decides_the_best_value_and_a_deltas_verdict(base_values):
    assert best_flags([0.2, 0.5, None, 0.5, math.nan]) == [False, True, False, True, False]
    assert best_flags([0.2, 0.5, None, 0.5], higher_is_better=False) == [True, False, False, False]
    assert best_flags([None, math.nan]) == [False, False]
    assert verdict(0.1, 0.3) == verdict(-0.3, -0.1, higher_is_better=False) == "better than base"
    assert verdict(-0.3, -0.1) == verdict(0.1, 0.3, higher_is_better=False) == "worse than base"
    assert verdict(-0.1, 0.2) == verdict(-0.1, 0.2, higher_is_better=False) == "CI includes 0"
    assert verdict(None, None) == VERDICTS[3]
    # The direction comes from the scores' higher_is_better column where there is one, else True.
    scores = frame("base", base_values[:5])
    assert leaderboard(scores, n_boot=10)[0]["higher_is_better"] is True
    assert leaderboard(scores.assign(higher_is_better=False), n_boot=10)[0]["higher_is_better"] is False


def test_missing_columns_are_a_user_error():
    with pytest.raises(HarnessError, match="lacks column"):
        leaderboard(pd.DataFrame({"method": ["base"], "value": [1.0]}))
