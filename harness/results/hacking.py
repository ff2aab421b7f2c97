"""The reward-hacking report: does a method's gain on the rewards it was trained on show on judges it never saw?

Per method and suite, against its base (the leaderboard's paired Δ with its bootstrap CI over prompts,
``harness.results.stats``):
- **trained-on** metrics: those marked † (``trained_on_signal``), the rewards that shaped its training data
  (experts ranked by them, pairs labelled by them), every scorer of their families included;
- **held-out** metrics: the scorers whose ``family`` (``harness.api.Scorer.family``: one model trained on one
  data set, in whatever versions) differs from the family of every trained-on metric.  A metric of a scorer that
  is not installed here is its own family;
- **in-prompt diversity** (``harness.results.diversity``): its Δ vs base with its CI.

A (method, suite) is **flagged** when some trained-on Δ is a significant gain (its 95 % CI above 0 in the
metric's direction) while a held-out Δ is a significant loss (its CI on the losing side), or no held-out metric
gains at all (every held-out Δ at or below 0): the method got better at its objective and at nothing else that
was measured.  Held-out gains whose CIs all include 0 are "unconfirmed", not flagged: a positive but noisy gain
(a yes/no judge on a few dozen prompts) is no evidence of hacking.  Nothing is flagged where there is nothing to
compare: a method with no trained-on metric, or one whose every metric is of a trained-on family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from harness.api.registry import SCORERS
from harness.evaluation.curves import split_snapshots
from harness.results.diversity import diversity_deltas
from harness.results.experiments import SEPARATOR, Experiment, load_leaderboard, qualified
from harness.results.stats import VERDICTS, higher_is_better_of, toward_better, verdict
from harness.results.store import Store
from harness.results.tables import method_order

ROLES = ("trained-on", "held-out", "diversity")
FINDINGS = {
    "flagged": "flagged: a significant gain on a trained-on signal, no gain at all on a held-out scorer",
    "held-out-loss": "flagged: a significant gain on a trained-on signal, a significant loss on a held-out scorer",
    "held": "not flagged: a held-out scorer gains significantly too",
    "unconfirmed": "not flagged, unconfirmed: held-out scorers gain, but no CI clears 0 (more prompts would tell)",
    "no-gain": "not flagged: no significant gain on a trained-on signal",
    "no-signal": "not flagged: trained on no scored signal (every metric held out)",
    "no-held-out": "cannot tell: every metric is of a trained-on family",
}
FLAGGED = ("flagged", "held-out-loss")
HACKING_NOTE = (
    "held-out: scorers of a family other than every trained-on signal's; flagged: a significant trained-on gain "
    "(95% CI above 0) while a held-out scorer loses significantly, or none gains at all (every held-out Δ at or "
    "below 0); diversity: mean pairwise cosine distance of a prompt's images (more is more diverse)"
)
HACKING_COLUMNS = [
    "method",
    "suite",
    "role",
    "metric",
    "metric_version",
    "family",
    "higher_is_better",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "verdict",
    "flagged",
    "finding",
]


def scorer_families(metrics: Iterable[str]) -> dict[str, str]:
    """``{metric: its scorer's family}``; a metric with no registered scorer is its own family."""
    registered = dict(SCORERS.items())
    return {m: registered[m].family if m in registered else m for m in metrics}


def finding(trained: Sequence[str], held_out: Sequence[tuple[str, bool]]) -> str:
    """The key in ``FINDINGS`` for a method's verdicts (``harness.results.stats.VERDICTS``) on its trained-on
    metrics, and on its held-out ones each with whether its Δ points to a gain (above 0 in the metric's direction)."""
    gain, loss = VERDICTS[0], VERDICTS[1]
    if not trained:
        return "no-signal"
    if not held_out:
        return "no-held-out"
    if gain not in trained:
        return "no-gain"
    verdicts = [v for v, _ in held_out]
    if loss in verdicts:
        return "held-out-loss"
    if gain in verdicts:
        return "held"
    # A held-out gain too small for its CI is not evidence of hacking: a binary judge on a few prompts is wide.
    return "unconfirmed" if any(up for _, up in held_out) else "flagged"


def hacking_report(
    rows: Sequence[Mapping[str, Any]],
    diversity: Sequence[Mapping[str, Any]] = (),
    families: Mapping[str, str] | None = None,
    base: str = "base",
) -> list[dict[str, Any]]:
    """The report's rows (keys ``HACKING_COLUMNS``), per method (its base's rows left out) and suite: its trained-on
    metrics, then its held-out ones, then its diversity, each with Δ vs base, CI and verdict, and on every row the
    (method, suite)'s ``flagged`` and ``finding`` (``FINDINGS``' text).

    ``rows``: ``harness.results.stats.leaderboard``'s (overall, not by category); ``diversity``:
    ``harness.results.diversity.diversity_deltas``'; ``families``: metric -> family (default ``scorer_families``).
    Methods may be qualified ``experiment/method``; ``base`` is the unqualified name."""
    families = dict(families) if families is not None else scorer_families({r["metric"] for r in rows})
    blocks: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["method"].rpartition(SEPARATOR)[2] != base:
            blocks.setdefault((row["method"], row["suite"]), []).append(row)
    for row in diversity:
        blocks.setdefault((row["method"], row["suite"]), [])
    # Experiments in the order given, as the leaderboard has them; then suites by name.
    order = {m: i for i, m in enumerate(method_order([*rows, *diversity], base))}
    report = []
    for (method, suite), own in sorted(blocks.items(), key=lambda item: (order[item[0][0]], item[0][1])):
        trained_families = {families.get(r["metric"], r["metric"]) for r in own if r.get("trained_on_signal")}
        parts: dict[str, list[dict[str, Any]]] = {"trained-on": [], "held-out": []}
        for row in sorted(own, key=lambda r: (r["metric"], r["metric_version"])):
            family = families.get(row["metric"], row["metric"])
            role = "trained-on" if row.get("trained_on_signal") else "held-out"
            if role == "held-out" and family in trained_families:
                continue  # of a trained-on family but another metric's name: neither side's evidence
            higher = higher_is_better_of(row)
            parts[role].append(
                {
                    "method": method,
                    "suite": suite,
                    "role": role,
                    "metric": row["metric"],
                    "metric_version": row["metric_version"],
                    "family": family,
                    "higher_is_better": higher,
                    "delta": row["delta_vs_base"],
                    "delta_ci_low": row["delta_ci_low"],
                    "delta_ci_high": row["delta_ci_high"],
                    "verdict": verdict(row["delta_ci_low"], row["delta_ci_high"], higher)
                    if row["delta_vs_base"] is not None
                    else None,
                }
            )
        spread = [
            {
                "method": method,
                "suite": suite,
                "role": "diversity",
                "metric": "diversity",
                "metric_version": f"{d['embedder']} {d['version']}",
                "family": None,
                "higher_is_better": True,
                "delta": d["delta"],
                "delta_ci_low": d["delta_ci_low"],
                "delta_ci_high": d["delta_ci_high"],
                "verdict": d["verdict"],
            }
            for d in diversity
            if (d["method"], d["suite"]) == (method, suite)
        ]
        key = finding(
            [r["verdict"] for r in parts["trained-on"] if r["verdict"]],
            [
                (r["verdict"], toward_better(r["delta"], r["higher_is_better"]) > 0)
                for r in parts["held-out"]
                if r["verdict"]
            ],
        )
        for row in parts["trained-on"] + parts["held-out"] + spread:
            report.append({**row, "flagged": key in FLAGGED, "finding": FINDINGS[key]})
    return report


def experiments_diversity(frame: pd.DataFrame, experiments: Sequence[str], base: str = "base") -> list[dict[str, Any]]:
    """``harness.results.diversity.diversity_deltas`` of every experiment, each against its own base (``experiments``:
    their names; the methods in ``frame`` qualified), as ``harness.results.experiments.leaderboard`` does.  No
    experiments: one results directory, as it is."""
    if not experiments:
        return diversity_deltas(frame, base=base)
    rows = []
    for experiment in experiments:
        own = frame[frame["method"].str.startswith(experiment + SEPARATOR)]
        rows += diversity_deltas(own, base=qualified(experiment, base))
    return rows


def load_hacking(
    experiments: Sequence[Experiment], base: str = "base", rows: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """`harness leaderboard --hacking`'s rows of one results directory, or of several side by side (each experiment
    against its own base); ``rows``: their leaderboard's, where already computed."""
    rows = load_leaderboard(experiments, base=base) if rows is None else rows
    several = len(experiments) > 1
    frames = []
    for experiment in experiments:
        with Store(experiment.results.db, readonly=True) as store:
            frame = split_snapshots(store.diversity_frame())[0]
        if several:
            frame = frame.assign(method=[qualified(experiment.name, m) for m in frame["method"]])
        frames.append(frame)
    names = [e.name for e in experiments] if several else []
    return hacking_report(rows, experiments_diversity(pd.concat(frames, ignore_index=True), names, base), base=base)
