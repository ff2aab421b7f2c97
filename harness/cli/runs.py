"""`harness runs`: each run's own start, end, wall time, compute and peak memory."""

from __future__ import annotations

import argparse

from harness.cli import options
from harness.cli.parser import Commands
from harness.errors import HarnessError
from harness.results.layout import ResultsDir
from harness.results.run_details import format_run_details, run_details
from harness.results.store import Store


def cmd_runs(args: argparse.Namespace) -> int:
    db = ResultsDir(args.out).db
    if not db.exists():
        raise HarnessError(f"no results in {args.out}: {db} does not exist (run `harness run --out {args.out}` first)")
    with Store(db, readonly=True) as store:
        print(format_run_details(run_details(store.runs_frame())))
    return 0


def register(commands: Commands) -> None:
    p = commands.add("runs", cmd_runs)
    options.add_results_read(p)
