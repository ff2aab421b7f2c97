"""`harness agreement`: how often each scorer prefers the image people preferred, with a 95% CI, beside the
published accuracies.

Accuracy is the mean over a set's decisive pairs (human ties skipped: they say nothing about which image is
better) of 1 when the scorer ranks the preferred image higher (lower, for a lower-is-better scorer), 0 when
lower, and, when the scorer gives both images the same value, 0.5 (``ties="half"``, the default: a tie is a
coin flip) or 0 (``ties="wrong"``, as ImageReward's ``test.py`` counts it).  Its CI is the harness's bootstrap
over prompts (``harness.results.stats.bootstrap_mean_ci``): the pairs of one prompt are drawn together, since a
prompt with many pairs (HPDv2: 36 from 9 ranked images) is one draw of difficulty, not 36.  Seeded, so the
same inputs give the same interval.  A published accuracy is set beside ours with the difference in units of
our CI (``harness.results.stats.ci_units``: |z| <= 1 when it lies inside our CI).

Images are scored through the score cache, keyed by content, prompt and scorer version, as `harness score`
scores them: a rerun, or another set sharing images, scores nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.api.data import JudgedSet
from harness.api.registry import SCORERS
from harness.api.scorer import Scorer, weights_of
from harness.data.readers import decode_image
from harness.errors import HarnessError
from harness.evaluation.evaluate import check_scorer_options
from harness.results.published_agreement import PUBLISHED_ACCURACIES, VERSION_UNSTATED, PublishedAccuracy
from harness.results.run_details import MISSING
from harness.results.stats import DEFAULT_N_BOOT, DEFAULT_SEED, bootstrap_mean_ci, ci_units
from harness.results.tables import paper_tables, to_latex, to_markdown
from harness.results.text_table import text_table
from harness.scoring import get_scorer
from harness.scoring.cache import ScoreCache, image_sha256, score_images

TIE_RULES = {"half": 0.5, "wrong": 0.0}  # what a scorer tie counts as
DEFAULT_TIES = "half"


def tie_rule_text(ties: str, ties_skipped: int | None = None) -> str:
    """The tie rule as the output states it."""
    skipped = "" if ties_skipped is None else f" ({ties_skipped} here)"
    scorer = "half a correct answer" if ties == "half" else "a wrong answer"
    return f"human ties skipped{skipped}; a scorer tie (equal values) counts as {scorer} (--ties {ties})"


def correctness(preferred: np.ndarray, other: np.ndarray, *, higher_is_better: bool, ties: str) -> np.ndarray:
    """Per pair: 1 where the scorer agrees with people, 0 where not, ``TIE_RULES[ties]`` where it cannot tell."""
    if ties not in TIE_RULES:
        raise HarnessError(f"--ties {ties!r}: expected one of {', '.join(TIE_RULES)}")
    better = preferred > other if higher_is_better else preferred < other
    return np.where(preferred == other, TIE_RULES[ties], better.astype(float))


@dataclass(frozen=True)
class Comparison:
    """A published accuracy beside ours."""

    publisher: str
    label: str
    published: float
    diff: float  # ours - published
    z: float | None  # the difference in units of our CI (``ci_units``)
    flag: str  # why this is not a reproduction ("" where it is one)


@dataclass(frozen=True)
class Agreement:
    """One scorer on one set."""

    data: str
    scorer: str
    version: str
    n_pairs: int
    n_prompts: int
    ties_skipped: int
    scorer_ties: int
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    ties: str  # the rule a scorer tie counted by (``TIE_RULES``)
    expected: float | None = None  # the accuracy the judges' known noise implies (simulated judges only)
    note: str = ""  # the set's own note (who judged, how)
    published: list[Comparison] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "tie_rule": tie_rule_text(self.ties, self.ties_skipped),
            "ci_covers_expected": covers(self),
            "published": [c.__dict__ for c in self.published],
        }


def agreement(
    judged: JudgedSet,
    scores: dict[str, tuple[str, bool, np.ndarray]],
    *,
    ties: str = DEFAULT_TIES,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    published: Sequence[PublishedAccuracy] = PUBLISHED_ACCURACIES,
) -> list[Agreement]:
    """Each scorer's accuracy on ``judged``; ``scores``: scorer -> (version, higher_is_better, an array (pairs, 2)
    of the preferred and the other image's values)."""
    prompts = np.array([pair.prompt for pair in judged.pairs], dtype=object)
    known = [pair.p_preferred for pair in judged.pairs]
    p_preferred = None if None in known else np.asarray(known, dtype=float)
    rows = []
    for name, (version, higher, values) in scores.items():
        correct = correctness(values[:, 0], values[:, 1], higher_is_better=higher, ties=ties)
        low, high = bootstrap_mean_ci(correct, prompts, n_boot=n_boot, seed=seed)
        accuracy = float(correct.mean())
        ci_low, ci_high = (None, None) if math.isnan(low) else (low, high)
        rows.append(
            Agreement(
                data=judged.name,
                scorer=name,
                version=version,
                n_pairs=len(correct),
                n_prompts=len(set(prompts)),
                ties_skipped=judged.ties_skipped,
                scorer_ties=int((values[:, 0] == values[:, 1]).sum()),
                accuracy=accuracy,
                ci_low=ci_low,
                ci_high=ci_high,
                ties=ties,
                expected=None if p_preferred is None else expected_accuracy(values, p_preferred, higher, ties),
                note=judged.note,
                published=[
                    Comparison(
                        p.publisher,
                        p.label,
                        p.value,
                        accuracy - p.value,
                        ci_units(accuracy, ci_low, ci_high, p.value),
                        "; ".join(filter(None, [_version_flag(p, version), p.note])),
                    )
                    for p in published
                    if p.data == judged.name and p.scorer == name
                ],
            )
        )
    return rows


def expected_accuracy(values: np.ndarray, p_preferred: np.ndarray, higher_is_better: bool, ties: str) -> float:
    """The mean over pairs of the chance that judges who prefer ``preferred`` with probability ``p_preferred``
    agree with the scorer (``values``: (pairs, 2), preferred then other): the accuracy a scorer would have over
    endless redraws of the judges' verdicts on these pairs."""
    choice = correctness(values[:, 0], values[:, 1], higher_is_better=higher_is_better, ties=ties)
    # The scorer's pick is right with the judges' chance of picking it; a scorer tie scores the tie rule either way.
    agree = np.where(choice == 1.0, p_preferred, 1.0 - p_preferred)
    return float(np.where(values[:, 0] == values[:, 1], TIE_RULES[ties], agree).mean())


def covers(row: Agreement) -> bool | None:
    """Whether the row's CI holds its expected accuracy (None: no expectation, or no CI)."""
    if row.expected is None or row.ci_low is None:
        return None
    return row.ci_low <= row.expected <= row.ci_high


def _version_flag(published: PublishedAccuracy, version: str) -> str:
    if published.version is None:
        return VERSION_UNSTATED
    return "" if published.version == weights_of(version) else f"their weights {published.version}, ours {version}"


def _content_key(image) -> str:
    """The score cache's key of an image: the sha256 of its file's bytes, as `harness score` keys files."""
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    try:
        return image_sha256(image)
    except OSError as exc:
        raise HarnessError(f"cannot read image {image}: {exc.strerror or exc}") from None


class _Decoded(Sequence):
    """Images decoded only when the cache lacks their score."""

    def __init__(self, sources: list) -> None:
        self._sources = sources

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        source = self._sources[index]
        try:
            return decode_image(source)
        except (OSError, ValueError) as exc:
            name = source if isinstance(source, Path) else f"an image of {len(source)} bytes"
            raise HarnessError(f"cannot read {name}: {exc}") from None


def check_scorers(scorers: Sequence[str], scorer_options: dict[str, dict[str, Any]]) -> None:
    """Every scorer registered and every option aimed at one of them, before anything is read or scored."""
    for name in scorers:
        SCORERS.get(name)
    unused = sorted(set(scorer_options) - set(scorers))
    if unused:
        raise HarnessError(f"--scorer-option for {', '.join(unused)}, which --scorers does not name")
    for name, keywords in scorer_options.items():
        check_scorer_options(name, keywords)


def score_pairs(
    judged: JudgedSet, scorers: Mapping[str, Scorer], cache: Path
) -> dict[str, tuple[str, bool, np.ndarray]]:
    """Every image of ``judged`` scored by each of ``scorers`` (name -> a built scorer) through the score cache at
    ``cache``: name -> (version, higher_is_better, (pairs, 2) values of the preferred and the other image)."""
    if not len(judged.pairs):
        raise HarnessError(f"{judged.name}: no decisive pairs to check a scorer against")
    sources = [image for pair in judged.pairs for image in (pair.preferred, pair.other)]
    prompts = [pair.prompt for pair in judged.pairs for _ in range(2)]
    keys = [_content_key(image) for image in sources]
    images = _Decoded(sources)
    cache.parent.mkdir(parents=True, exist_ok=True)
    found = {}
    with ScoreCache(cache) as opened:
        for name, scorer in scorers.items():
            values = score_images(scorer, images, prompts, keys, cache=opened)
            found[name] = (scorer.version, scorer.higher_is_better, np.asarray(values, dtype=float).reshape(-1, 2))
    return found


def build_scorers(names: Sequence[str], scorer_options: dict[str, dict[str, Any]]) -> dict[str, Scorer]:
    """Each named scorer with its options (its weights found or an error), after ``check_scorers``."""
    return {name: get_scorer(name, **scorer_options.get(name, {})) for name in names}


# --- The report in each format ------------------------------------------------------------------------------
Z_NOTE = (
    "z = (ours - published) / (our accuracy's distance to our 95% CI bound on the published side): |z| <= 1 when "
    "the published value lies inside our CI"
)
FLAG_MARK = "!"
EXPECTED_NOTE = (
    "expected: the accuracy the simulated judges' known noise implies for that scorer on these pairs; its 95% CI "
    "should hold it (in CI)"
)


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


def format_table(rows: Sequence[Agreement]) -> str:
    """People's table: accuracy [95% CI] per set and scorer, then each published value beside ours."""
    simulated = any(r.expected is not None for r in rows)
    lines = [["data", "scorer", "version", "pairs", "prompts", "scorer ties", "accuracy % [95% CI]"]]
    lines[0] += ["expected %", "in CI"] if simulated else []
    for r in rows:
        ci = "[no CI: 1 prompt]" if r.ci_low is None else f"[{_percent(r.ci_low)}, {_percent(r.ci_high)}]"
        line = [r.data, r.scorer, r.version, str(r.n_pairs), str(r.n_prompts), str(r.scorer_ties)]
        line.append(f"{_percent(r.accuracy)} {ci}")
        if simulated:
            inside = covers(r)
            line += [_percent(r.expected), MISSING if inside is None else "yes" if inside else "NO"]
        lines.append(line)
    parts = [text_table(lines)]
    parts += sorted({f"{r.data}: {tie_rule_text(r.ties, r.ties_skipped)}" for r in rows})
    parts += sorted({f"{r.data}: {r.note}" for r in rows if r.note})
    if simulated:
        parts.append(EXPECTED_NOTE)
    compared = [(r, c) for r in rows for c in r.published]
    if compared:
        table = [["data", "scorer", "published by", "as", "published %", "ours %", "ours - published", "z", "note"]]
        for r, c in compared:
            table.append(
                [
                    r.data,
                    r.scorer,
                    c.publisher.split(" (")[0],
                    c.label,
                    _percent(c.published),
                    _percent(r.accuracy),
                    f"{100 * c.diff:+.1f}",
                    MISSING if c.z is None else f"{c.z:+.2f}",
                    f"{FLAG_MARK} {c.flag}" if c.flag else "",
                ]
            )
        sources = sorted({c.publisher for _, c in compared})
        parts += ["", "Published accuracies beside ours", text_table(table), Z_NOTE]
        parts += [f"{FLAG_MARK} not a reproduction: other weights or another protocol than ours, as the note says"]
        parts += ["Sources:"] + [f"  {source}" for source in sources]
    return "\n".join(parts)


def leaderboard_rows(rows: Sequence[Agreement]) -> list[dict[str, Any]]:
    """The rows as the leaderboard's paper tables read them (``harness.results.tables.paper_tables``): a scorer
    is a row, a set a column, the tie rule the metric's version; each published value a row of its own (its
    publisher's name after the scorer's), without an interval."""
    out = []
    for r in rows:
        common = {
            "suite": r.data,
            "metric": "accuracy",
            "metric_version": f"scorer ties {r.ties}",
            "higher_is_better": True,
        }
        out.append(
            {
                **common,
                "method": r.scorer,
                "mean": r.accuracy,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "n_prompts": r.n_prompts,
            }
        )
        out += [
            {
                **common,
                "method": f"{r.scorer} ({c.publisher.split(' (')[0]})",
                "mean": c.published,
                "ci_low": None,
                "ci_high": None,
                "n_prompts": 0,
            }
            for c in r.published
        ]
    return out


CSV_COLUMNS = [
    "data",
    "scorer",
    "version",
    "n_pairs",
    "n_prompts",
    "ties_skipped",
    "scorer_ties",
    "accuracy",
    "ci_low",
    "ci_high",
    "ties",
]


FORMATS = ("table", "csv", "json", "latex", "markdown")


def report_text(rows: Sequence[Agreement], fmt: str) -> str:
    """``rows`` in ``fmt`` (one of ``FORMATS``): the people's table, CSV (one line per set and scorer), JSON (with
    the published comparisons), or the leaderboard's LaTeX / Markdown paper table (the tie rule in its title)."""
    if fmt in ("latex", "markdown"):
        tables = paper_tables(leaderboard_rows(rows))
        rules = "; ".join(sorted({f"{r.data}: {tie_rule_text(r.ties, r.ties_skipped)}" for r in rows}))
        for table in tables:
            table.title = f"Agreement with human preferences ({rules})"
        return (to_latex if fmt == "latex" else to_markdown)(tables, ci=True, statistics=["mean"])
    if fmt == "json":
        return json.dumps([row.to_json() for row in rows], indent=2)
    if fmt == "csv":
        written = io.StringIO()
        writer = csv.DictWriter(written, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.to_json() for row in rows)
        return written.getvalue().rstrip("\n")
    return format_table(rows)
