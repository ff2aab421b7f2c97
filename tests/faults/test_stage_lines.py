"""The stage lines of `harness run` (``== dpo: training  [9 s]``) come whole, one per line, even when
worker processes print theirs at the same moment into the same pipe: the fault suite kills a run
when a given stage line appears, and a reader of the log needs them intact as well.

Found by the fault suite: with PYTHONUNBUFFERED set, ``print`` writes the text and the newline
separately, and two workers starting their trainings together printed
``== dpo: training  [9 s]== dro: training  [9 s]``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.faults

# Two forked processes print stage lines as fast as they can into one pipe, as `harness run`'s
# workers do.
PRINTERS = textwrap.dedent("""
    import os
    from harness.run import _Stages

    stage = _Stages()
    children = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:
            for step in range(2000):
                stage(f"worker {worker}: step {step}")
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
""")


def test_stage_lines_of_concurrent_workers_stay_whole() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PRINTERS],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    broken = [line for line in lines if not re.fullmatch(r"== worker [01]: step \d+  \[\d+ s\]", line)]
    assert broken == [] and len(lines) == 4000
