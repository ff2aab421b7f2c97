"""`harness leaderboard`: the leaderboard of a results directory, or of several side by side."""

from __future__ import annotations

import argparse

from harness.cli import options
from harness.cli.output import print_hacking, print_leaderboard
from harness.cli.parser import Commands
from harness.errors import HarnessError
from harness.results.experiments import load_leaderboard
from harness.results.hacking import load_hacking
from harness.results.tables import FORMATS, check_statistics


def cmd_leaderboard(args: argparse.Namespace) -> int:
    by = [args.by] if args.by else []
    if args.hacking:
        if args.by or args.columns is not None or args.ci:
            raise HarnessError("--hacking prints its own table: it takes none of --by, --columns, --ci")
        print_hacking(load_hacking(options.experiments(args), base=args.base), args.format)
        return 0
    if args.columns is not None:
        if args.format not in FORMATS:
            raise HarnessError(f"--columns chooses the columns of --format {' or '.join(FORMATS)}, not {args.format}")
        check_statistics(args.columns)
    rows = load_leaderboard(options.experiments(args), base=args.base, by=by)
    print_leaderboard(rows, args.format, base=args.base, ci=args.ci, by=args.by, statistics=args.columns)
    return 0


def register(commands: Commands) -> None:
    p = commands.add("leaderboard", cmd_leaderboard)
    options.add_results_compared(p)
    options.add_printed_format(
        p,
        ["table", "csv", "json", "latex", "markdown"],
        "table: for people; csv, json: for programs; latex, markdown: a table for a paper, the best value per column "
        "in bold",
    )
    options.add_base(p)
    p.add_argument(
        "--by",
        choices=["category"],
        help="a row per category of each suite, each with the whole leaderboard's statistics computed on its prompts "
        "alone",
    )
    p.add_argument(
        "--columns",
        type=options.comma_list,
        metavar="STAT,...",
        help="latex/markdown: the columns per suite and metric, some of mean (the mean score), delta (Δ vs base) and "
        "win (win rate vs base, %%) (default: mean,delta,win)",
    )
    p.add_argument(
        "--hacking",
        action="store_true",
        help="the reward-hacking report instead: per method, Δ vs base on the signals it was trained on beside Δ on "
        "held-out scorers of other families and on in-prompt diversity, each with its 95%% CI, flagged where only "
        "the trained-on signals gain (docs/results.md)",
    )
    p.add_argument(
        "--ci",
        action="store_true",
        help="latex/markdown: each value's 95%% interval beside it (bootstrap over prompts for means and Δ, Wilson "
        "for win rates); table: the win rate's Wilson interval",
    )
