"""The parser of the `harness` command line: one-line usage mistakes, defaults in the help, the options of every
command, and each command's module (``COMMAND_MODULES``) registering its commands."""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable
from typing import NoReturn

from harness import cli

# The modules of harness/cli/ that register commands, in the order `harness --help` lists them.  Each has
# ``register(commands: Commands)``, and imports nothing heavy at its top: every one is imported to build the parser.
COMMAND_MODULES = (
    "run",
    "evaluate",
    "score",
    "reproduce",
    "train",
    "generate",
    "leaderboard",
    "figure",
    "runs",
    "verify",
    "export",
    "dashboard",
    "data",
    "listings",
)

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
        # The command's name: the first one that is no option's value (`harness --out runs leaderboard`).
        at = next(
            (
                i
                for i, word in enumerate(given)
                if word in commands and not (i and given[i - 1].startswith("-") and "=" not in given[i - 1])
            ),
            None,
        )
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

    def add(self, name: str, run: Run, help: str) -> argparse.ArgumentParser:
        """A command ``name`` that ``run`` carries out; ``help``: one line, its description too."""
        parser = self._within.add_parser(
            name, help=help, description=help, parents=self._every_command, formatter_class=HelpFormatter
        )
        parser.set_defaults(func=run)
        return parser

    def group(self, name: str, help: str, metavar: str) -> Commands:
        """A command whose first word, ``metavar``, names one of the commands added to what this returns."""
        parser = self._within.add_parser(name, help=help, description=help)
        steps = parser.add_subparsers(dest=metavar.lower(), required=True, metavar=metavar)
        return Commands(steps, self._every_command)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="harness",
        description=cli.__doc__.splitlines()[0] if cli.__doc__ else None,
        parents=[_global_options(after_command=False)],
        formatter_class=HelpFormatter,
    )
    commands = Commands(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), [_global_options(after_command=True)]
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"harness.cli.{name}").register(commands)
    return parser
