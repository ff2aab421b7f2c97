"""`harness verify`: a results directory and the caches it reads checked, as `git fsck`."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.api.environment import cache_dir
from harness.cli import options
from harness.cli.parser import Commands
from harness.results.verify import run_verify


def cmd_verify(args: argparse.Namespace) -> int:
    return run_verify(Path(args.out), args.repair, cache_dir())


def register(commands: Commands) -> None:
    p = commands.add("verify", cmd_verify)
    options.add_results_read(p)
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what was found as a rerun would: damaged cache entries discarded or rebuilt, the score cache "
        "refilled from the store; say what only a rerun can redo",
    )
