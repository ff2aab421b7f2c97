"""`harness agreement`: each scorer's accuracy against human preference pairs, with a 95% CI, beside the published
accuracies."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from harness.api.environment import cache_dir
from harness.atomic import replacing
from harness.cli import options
from harness.cli.parser import Commands
from harness.data.judged import load_judged
from harness.libraries import quiet_libraries
from harness.results.agreement import (
    CSV_COLUMNS,
    DEFAULT_TIES,
    TIE_RULES,
    agreement,
    check_scorers,
    format_table,
    leaderboard_rows,
    score_pairs,
    tie_rule_text,
)
from harness.results.layout import ResultsDir
from harness.results.tables import paper_tables, to_latex, to_markdown

REPORT_NAME = "agreement.json"


def cmd_agreement(args: argparse.Namespace) -> int:
    quiet_libraries()
    scorer_options = options.parse_scorer_options(args.scorer_option)
    check_scorers(args.scorers, scorer_options)
    judged = load_judged(args.data)
    # Beside a results directory's own score cache with --out, else the harness's cache: scored once either way.
    cache = ResultsDir(args.out).score_cache if args.out else cache_dir() / "agreement" / "scores.sqlite"
    rows = agreement(judged, score_pairs(judged, args.scorers, scorer_options, cache), ties=args.ties)
    report = [row.to_json() for row in rows]
    if args.out:
        with replacing(Path(args.out) / REPORT_NAME) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.format in ("latex", "markdown"):
        tables = paper_tables(leaderboard_rows(rows))
        for table in tables:
            table.title = f"Agreement with human preferences ({tie_rule_text(args.ties, judged.ties_skipped)})"
        print((to_latex if args.format == "latex" else to_markdown)(tables, ci=True, statistics=["mean"]))
    elif args.format == "json":
        print(json.dumps(report, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report)
    else:
        print(format_table(rows))
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
    p.add_argument(
        "--out",
        help=f"also write the report, {REPORT_NAME}, there, and keep its score cache there (default: the "
        "harness's cache, $HARNESS_CACHE)",
    )
    options.add_printed_format(
        p,
        ["table", "csv", "json", "latex", "markdown"],
        "a table with the published accuracies beside ours, CSV or JSON for programs, LaTeX or Markdown for a paper",
    )
    options.add_scorer_options(p)
