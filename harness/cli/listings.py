"""`harness methods|scorers|suites|presets`: what is registered, and one suite's or preset's details."""

from __future__ import annotations

import argparse

from harness.api.registry import METHODS, PRESETS, SCORERS
from harness.cli.parser import Commands
from harness.errors import HarnessError
from harness.evaluation.suites import check_suite_name, get_suite, list_suites, show_suite
from harness.plan.presets import get_preset, preset_summary, show_method, show_preset
from harness.results.text_table import text_table
from harness.scoring.environments import build_environments, describe_environment, environment_of


def cmd_methods(args: argparse.Namespace) -> int:
    if args.show:
        print(show_method(args.show))
        return 0
    print(
        text_table(
            [["method", "description"], *([name, getattr(cls, "description", "")] for name, cls in METHODS.items())]
        )
    )
    return 0


def cmd_scorers(args: argparse.Namespace) -> int:
    if args.build:
        for name in args.build.split(","):
            if environment_of(SCORERS.get(name)) is None:
                raise HarnessError(f"scorer {name!r} is native: it runs in the harness's own environment")
        build_environments(args.build.split(","), SCORERS)
        return 0
    print(
        text_table(
            [
                ["scorer", "version", "scale", "environment", "description"],
                *(
                    [name, cls.version, cls.scale, describe_environment(cls), getattr(cls, "description", "")]
                    for name, cls in SCORERS.items()
                ),
            ]
        )
    )
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    if args.show:
        check_suite_name(args.show)
        print(show_suite(get_suite(args.show)))
        return 0
    print(
        text_table(
            [
                ["suite", "split", "prompts", "version", "description", "categories"],
                *(info.cells() for info in list_suites()),
            ]
        )
    )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.show:
        print(show_preset(get_preset(args.show)))
        return 0
    rows = [["preset", "description and main settings (`harness presets --show PRESET`: every method's)"]]
    for name in PRESETS.names():
        preset = get_preset(name)
        rows.append([name, preset.description + ("  (the default)" if preset.default else "")])
        rows.extend(["", line] for line in preset_summary(preset))
    print(text_table(rows))
    return 0


def register(commands: Commands) -> None:
    p = commands.add("methods", cmd_methods)
    p.add_argument(
        "--show",
        metavar="METHOD",
        help="print the method's settings (what --set takes): each one's default and meaning, and the presets it has "
        "recipes for",
    )
    p = commands.add("scorers", cmd_scorers)
    p.add_argument(
        "--build",
        metavar="SCORER[,SCORER]",
        help="build the environments of these scorers (those that run in their own: see the environment column) "
        "ahead of a run, showing progress; `harness run` builds what it needs before its first job",
    )
    p = commands.add("suites", cmd_suites)
    p.add_argument(
        "--show",
        metavar="SUITE",
        help="print the suite's split, size, version and source, and every prompt (a registered suite, NAME:PATH for "
        "its local copy, or NAME=FILE for a prompt file)",
    )
    p = commands.add("presets", cmd_presets)
    p.add_argument("--show", metavar="PRESET", help="print every method's resolved settings under this preset")
