"""`harness` commands run in the test's own process, for tests about what a command says rather than about
processes: no new interpreter importing torch again (conftest.harness_cli runs the console script instead)."""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout

from harness.cli import main


def harness_main(*args: str) -> subprocess.CompletedProcess:
    """``harness ARGS`` through ``harness.cli.main``: its exit status and what it wrote, as conftest.harness_cli
    returns them.  Not for ``--plugin`` (a plugin stays registered in this process) nor for real runs."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(["harness", *args], code, out.getvalue(), err.getvalue())
