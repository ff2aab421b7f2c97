"""`harness reproduce`: the published checkpoints run and set beside the paper's numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli import options
from harness.cli.parser import Commands
from harness.libraries import quiet_libraries
from harness.results.reproduce import format_report, reproduce


def cmd_reproduce(args: argparse.Namespace) -> int:
    quiet_libraries()
    report = reproduce(
        options.run_options(
            args,
            methods=args.methods or [],
            pretrained=True,
            out=Path(args.out or Path("runs") / f"reproduce-{args.preset}"),
        )
    )
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else format_report(report))
    return 0


def register(commands: Commands) -> None:
    p = commands.add("reproduce", cmd_reproduce)
    options.add_preset(p, "one with published tables", default="sd15")
    options.add_results_written(p, default=None, shown="runs/reproduce-PRESET")
    p.add_argument(
        "--methods", type=options.comma_list, help="default: every method the paper has a published checkpoint of"
    )
    options.add_model(p)
    options.add_method_unets(p)
    options.add_evaluation(p, scorers="the paper's metrics")
    p.add_argument("--images-per-prompt", type=options.count, help="default: the paper's 5")
    options.add_printed_format(p, ["table", "json"], "a table of ours beside the paper's, or the same as JSON")
