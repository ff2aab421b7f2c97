"""`harness figure`: the dashboard's charts as files for a paper."""

from __future__ import annotations

import argparse
from pathlib import Path

from dashboard.figures import FigureOptions, write_figures
from harness.cli import options
from harness.cli.parser import Commands


def cmd_figure(args: argparse.Namespace) -> int:
    experiments = options.experiments(args)
    figures = Path(args.figures) if args.figures else options.one_results_directory(experiments, "--figures")
    figure_options = FigureOptions(
        figures=figures,
        formats=args.formats,
        base=args.base,
        grid_prompts=args.grid_prompts,
        grid_image=args.grid_image,
    )
    for path in write_figures(experiments, figure_options):
        print(path)
    return 0


def register(commands: Commands) -> None:
    p = commands.add("figure", cmd_figure)
    options.add_results_compared(p)
    p.add_argument("--figures", help="where to write (default: OUT/figures; required with several --out)")
    p.add_argument("--formats", type=options.comma_list, default=["png", "svg"], help="comma-separated: png, svg, pdf")
    options.add_base(p)
    p.add_argument(
        "--grid-prompts",
        type=options.count,
        default=4,
        help="prompts per image grid, taken in turn from each category of the suite",
    )
    p.add_argument(
        "--grid-image",
        type=int,
        default=0,
        metavar="INDEX",
        help="which image of each prompt (the same seed for every method)",
    )
