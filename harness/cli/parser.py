"""The parser of the `harness` command line: one-line usage mistakes, defaults in the help, the options of every
command, and each command's module (``COMMANDS``) registering it, imported only when the command is invoked."""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, NoReturn


class Command(NamedTuple):
    module: str  # the module of harness/cli/ whose ``register(commands: Commands)`` declares the command
    help: str  # one line: what `harness --help` lists it with, and its description


# Every command, in the order `harness --help` lists them.  Only the invoked command's module is imported, so
# `harness --help` and a mistyped command start quickly (a command's module imports what the command runs).
COMMANDS = {
    "run": Command("run", "train each method from one base, generate the suites, score, store and rank"),
    "evaluate": Command(
        "evaluate",
        "evaluate any checkpoint into a results directory: generate the suites with the preset's protocol, "
        "score, store, rank against the base",
    ),
    "score": Command("score", "score images made elsewhere into a results directory, as a run of their own"),
    "reproduce": Command(
        "reproduce",
        "run the published checkpoints (harness run --pretrained) and set our numbers beside the paper's, "
        "each difference in units of our confidence interval",
    ),
    "agreement": Command(
        "agreement",
        "each scorer's accuracy against human preference pairs (Pick-a-Pic, HPDv2, ImageReward, MMRB2, pairs.jsonl) "
        "with its bootstrap CI over prompts, beside the published accuracies",
    ),
    "train": Command("train", "train one method and write its UNet in diffusers format"),
    "generate": Command(
        "generate",
        "generate images for a prompt suite with the preset's evaluation protocol (per-image deterministic seeds)",
    ),
    "leaderboard": Command("leaderboard", "print the leaderboard of a results directory, or of several side by side"),
    "figure": Command(
        "figure",
        "write the dashboard's charts as files for a paper: Δ vs base with CIs (overall and per category), "
        "win-rate heatmaps, image grids (prompts × methods, same seeds)",
    ),
    "runs": Command(
        "runs",
        "print each run's own start, end, wall time, CPU- or GPU-hours, UNet evaluations and reward-model calls "
        "per training sample, and peak memory",
    ),
    "verify": Command(
        "verify",
        "check a results directory and the caches it reads, as `git fsck`: the store, every image against its"
        " manifest hash, every score against the score cache, every checkpoint and final/ network, the "
        "journals, $HARNESS_CACHE's entries; exit status 1 if anything is wrong",
    ),
    "export": Command("export", "export the results for pandas / notebooks"),
    "dashboard": Command("dashboard", "open the Streamlit leaderboard on 127.0.0.1"),
    "data": Command("data", "data steps: score the training images with a reward, pick experts"),
    "methods": Command("listings", "list registered methods, or show one's settings"),
    "scorers": Command("listings", "list registered scorers"),
    "suites": Command("listings", "list prompt suites, or show one's prompts"),
    "presets": Command("listings", "list presets, or show one's resolved recipe per method"),
}

GLOBAL_OPTIONS = ("--plugin", "-h", "--help")  # what may come before a command's name


class Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, as every other mistake (argparse would print the whole usage first), saying
    what was meant where it can tell: an option before the command's name, a misspelt option."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self.given = list(sys.argv[1:] if args is None else args)  # what error() reads the user's words from
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        meant, prog = self._meant() or (message, self.prog)
        self.exit(2, f"harness: error: {meant} (see `{prog} --help`)\n")

    def _meant(self) -> tuple[str, str] | None:
        """The message for a mistake whose cause is plain from the words given, and the command it is about."""
        given = getattr(self, "given", [])
        commands = next(
            (action.choices for action in self._actions if isinstance(action, argparse._SubParsersAction)), {}
        )
        at = command_at(given)
        if at is not None:
            misplaced = [
                word for word in given[:at] if word.startswith("-") and word.split("=")[0] not in GLOBAL_OPTIONS
            ]
            if misplaced:
                fixed = " ".join([given[at], *given[:at], *given[at + 1 :]])
                return (
                    f"{misplaced[0].split('=')[0]} is an option of the command: write it after the command's name, "
                    f"`harness {fixed}` (only {', '.join(GLOBAL_OPTIONS)} may come before it)",
                    self.prog,
                )
        parser = commands.get(given[at], self) if at is not None else self  # the top parser reports unknown words
        known = [option for action in parser._actions for option in action.option_strings]
        for word in given:
            option = word.split("=")[0]
            if option.startswith("--") and option not in known:
                close = difflib.get_close_matches(option, known, n=1)
                if close:
                    return f"{option} is not an option of `{parser.prog}`: did you mean {close[0]}?", parser.prog
        return None


def command_at(given: Sequence[str]) -> int | None:
    """Where the command's name is in the words ``given``: the first command that is no option's value (`harness
    --out runs leaderboard`: leaderboard); None without one."""
    return next(
        (
            i
            for i, word in enumerate(given)
            if word in COMMANDS and not (i and given[i - 1].startswith("-") and "=" not in given[i - 1])
        ),
        None,
    )


class HelpFormatter(argparse.HelpFormatter):
    """`--help` and docs/cli.md: each option's default at the end of its help, where it has one worth saying
    (argparse's ArgumentDefaultsHelpFormatter also prints "default: None" and "default: False")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return action.help or ""
        shown = ",".join(default) if isinstance(default, list) else str(default)
        return f"{action.help} (default: {shown.replace('%', '%%')})"


def _global_options(after_command: bool) -> argparse.ArgumentParser:
    """The options every command takes, before its name (`harness --plugin my.py run ...`) or after it
    (`harness run --plugin my.py ...`).  After it they land in ``*_after`` (``main`` joins the two): argparse
    gives a command a fresh namespace whose default would replace what came before."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("options of every command (before or after its name)")
    where = dict(dest="plugin_after", default=argparse.SUPPRESS) if after_command else dict(default=[])
    group.add_argument(
        "--plugin",
        action="append",
        metavar="FILE|MODULE",
        **where,
        help="load a plugin: a .py file or a module registering methods, scorers, suites or presets (repeatable)",
    )
    return options


Run = Callable[[argparse.Namespace], int]  # a command: its parsed options -> the exit status


class Commands:
    """Where a command module adds its commands: ``add`` one, or ``group`` commands under a name of their own
    (`harness data score`)."""

    def __init__(self, within: argparse._SubParsersAction, every_command: list[argparse.ArgumentParser]):
        self._within = within
        self._every_command = every_command

    def add(self, name: str, run: Run, help: str | None = None) -> argparse.ArgumentParser:
        """A command ``name`` that ``run`` carries out; ``help``: one line, its description too (default: its line
        in ``COMMANDS``, for a command of `harness` itself)."""
        help = help or COMMANDS[name].help
        parser = self._within.add_parser(
            name, help=help, description=help, parents=self._every_command, formatter_class=HelpFormatter
        )
        parser.set_defaults(func=run)
        return parser

    def group(self, name: str, metavar: str) -> Commands:
        """A command of `harness` whose first word, ``metavar``, names one of the commands added to what this
        returns."""
        help = COMMANDS[name].help
        parser = self._within.add_parser(name, help=help, description=help)
        steps = parser.add_subparsers(dest=metavar.lower(), required=True, metavar=metavar)
        return Commands(steps, self._every_command)


class _Only(Commands):
    """Where a command's module declares the command invoked, ``name``, and none of the others it may declare
    (`harness methods`, `scorers`, ...: one module): those are listed by their line in ``COMMANDS`` only."""

    def __init__(self, commands: Commands, name: str):
        super().__init__(commands._within, commands._every_command)
        self._name = name

    def add(self, name: str, run: Run, help: str | None = None) -> argparse.ArgumentParser:
        return super().add(name, run, help) if name == self._name else argparse.ArgumentParser()

    def group(self, name: str, metavar: str) -> Commands:
        if name == self._name:
            return super().group(name, metavar)
        return Commands(argparse.ArgumentParser().add_subparsers(), self._every_command)


def build_parser(commands: Iterable[str] = COMMANDS) -> Parser:
    """The parser of `harness` with the options of ``commands`` (default: every command), whose modules it imports;
    the other commands are listed by name and help only (``COMMANDS``), their modules not imported."""
    declared = set(commands)
    parser = Parser(
        prog="harness",
        description="The `harness` command line.",
        parents=[_global_options(after_command=False)],
        formatter_class=HelpFormatter,
    )
    within = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    every = Commands(within, [_global_options(after_command=True)])
    for name, command in COMMANDS.items():
        if name in declared:
            importlib.import_module(f"harness.cli.{command.module}").register(_Only(every, name))
        else:
            within.add_parser(name, help=command.help)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of the command the words ``argv`` (default: the process's arguments) invoke, only its module
    imported to parse them; a usage mistake exits with one line."""
    given = list(sys.argv[1:] if argv is None else argv)
    at = command_at(given)
    return build_parser([] if at is None else [given[at]]).parse_args(given)
