"""The `harness` command line.

One module per command (harness/cli/run.py, ...: its options and what it calls), the options several commands
share declared once (options.py), the parser (parser.py), which imports only the invoked command's module: a
command's module imports what the command runs (torch, for most), so `harness --help` starts quickly.  A mistake
the user can fix is a ``HarnessError``: one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys

from harness.api.registry import load_plugin
from harness.atomic import disk_full_error
from harness.cli.parser import parse
from harness.errors import HarnessError


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments) names; its exit status."""
    args = parse(argv)
    try:
        for plugin in [*args.plugin, *getattr(args, "plugin_after", [])]:
            load_plugin(plugin)
        status = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except BrokenPipeError:
        # The reader stopped early (`harness leaderboard | head -1`): nothing left to say to anyone.  Output
        # still buffered goes to /dev/null, or the flush at exit would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        full = disk_full_error(exc)  # a write that no code path named (most are named where they happen)
        if full is None:
            raise
        print(f"harness: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
