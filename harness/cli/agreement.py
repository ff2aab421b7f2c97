"""`harness agreement`: each scorer's accuracy against human preference pairs, with a 95% CI, beside the published
accuracies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.api.environment import cache_dir
from harness.atomic import replacing
from harness.cli import options
from harness.cli.parser import Commands
from harness.data.judged import load_judged
from harness.results.agreement import (
    DEFAULT_TIES,
    FORMATS,
    TIE_RULES,
    agreement,
    build_scorers,
    check_scorers,
    report_text,
    score_pairs,
)
from harness.results.layout import ResultsDir

REPORT_NAME = "agreement.json"


def cmd_agreement(args: argparse.Namespace) -> int:
    scorer_options = options.parse_scorer_options(args.scorer_option)
    check_scorers(args.scorers, scorer_options)
    judged = load_judged(args.data)
    # Under --out where a results directory keeps it (cache/scores.sqlite), else in the harness's cache.
    cache = ResultsDir(args.out).score_cache if args.out else cache_dir() / "agreement" / "scores.sqlite"
    scores = score_pairs(judged, build_scorers(args.scorers, scorer_options), cache)
    rows = agreement(judged, scores, ties=args.ties)
    if args.out:
        report = [row.to_json() for row in rows]
        with replacing(Path(args.out) / REPORT_NAME) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(report_text(rows, args.format))
    return 0


def register(commands: Commands) -> None:
    p = commands.add("agreement", cmd_agreement)
    p.epilog = (
        "Accuracy: the share of a set's decisive pairs on which the scorer prefers the image people preferred; "
        "its 95% CI a bootstrap over prompts (a prompt's pairs drawn together; seeded). Images are scored through "
        "the score cache, so a rerun scores nothing again."
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SET[:DIR]|DIR",
        help="the human-judged pairs: pickapic-test, pickapic-test_unique, hpdv2-test, imagereward-test, mmrb2-t2i, "
        "a world's (toy-panel), NAME:DIR for a local copy in the official layout, or a directory with pairs.jsonl",
    )
    p.add_argument("--scorers", type=options.comma_list, required=True, help="comma-separated, e.g. pickscore,hpsv2")
    p.add_argument(
        "--ties",
        choices=list(TIE_RULES),
        default=DEFAULT_TIES,
        help="what a scorer tie (equal values) counts as: half a correct answer, or a wrong one (human ties are "
        "always skipped)",
    )
    options.add_output_directory(
        p,
        f"the report, {REPORT_NAME}, and the score cache, cache/scores.sqlite (without it: the report on stdout only, "
        "the scores cached in $HARNESS_CACHE)",
        required=False,
    )
    options.add_printed_format(
        p,
        list(FORMATS),
        "a table with the published accuracies beside ours, CSV or JSON for programs, LaTeX or Markdown for a paper",
    )
    options.add_scorer_options(p)
