"""`harness export`: the results as files for pandas and notebooks."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import options
from harness.cli.parser import Commands
from harness.results.store import export_experiments


def cmd_export(args: argparse.Namespace) -> int:
    experiments = options.experiments(args)
    dest = Path(args.dest) if args.dest else options.one_results_directory(experiments, "--dest")
    for path in export_experiments({e.name: e.results for e in experiments}, dest, args.format):
        print(path)
    return 0


def register(commands: Commands) -> None:
    p = commands.add("export", cmd_export)
    options.add_results_compared(p)
    # The files' format, not what is printed (add_printed_format): so declared here, once.
    p.add_argument(
        "--format", choices=["csv", "parquet", "json"], default="csv", help="the files' format, one file per table"
    )
    p.add_argument("--dest", help="where to write (default: OUT/export; required with several --out)")
