"""The command reference, docs/cli.md, written from the parser so that it cannot drift from it:

    python -m harness.cli.reference > docs/cli.md

(tests/test_cli.py fails when docs/cli.md differs from what this prints.)
"""

from __future__ import annotations

import argparse

from harness.cli.parser import HelpFormatter, build_parser

HEADER = """# Command reference

Every `harness` command with its options, written from the parser by `python -m harness.cli.reference >
docs/cli.md` (a test fails when this file is out of date). `harness COMMAND --help` prints the same.
"""


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every command under it, depth first (`harness data score` after `harness data`)."""
    found = [parser]
    for action in parser._actions:  # argparse has no public way to walk a parser
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                found.extend(_commands(command))
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Each option as `--help` shows it (argparse's own formatting, through its private methods)."""
    formatter = HelpFormatter(parser.prog)
    return [
        f"- `{formatter._format_action_invocation(action)}`: {formatter._expand_help(action)}"
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def reference() -> str:
    sections = [HEADER]
    for command in _commands(build_parser()):
        usage = " ".join(command.format_usage().split())  # one line: the terminal's width must not matter
        lines = [f"## `{command.prog}`", "", command.description or "", "", f"```\n{usage}\n```"]
        if command.epilog:
            lines += ["", command.epilog]
        options = _options(command)
        if options:
            lines += ["", *options]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


if __name__ == "__main__":
    print(reference(), end="")
