"""Progress lines of the long commands (`harness run`, `evaluate`, `score`): ``== dpo: training  [9 s]``."""

from __future__ import annotations

import sys
import time


def say(line: str) -> None:
    """Print ``line`` in one write: the workers print to the same stdout, and unbuffered (PYTHONUNBUFFERED)
    ``print`` writes the text and the newline apart, so another process's line could land in between."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Stages:
    """Prints each stage's name with the time since the run started (where the minutes go)."""

    def __init__(self) -> None:
        self.started = time.time()  # wall clock: worker processes print stages too

    def __call__(self, name: str) -> None:
        say(f"== {name}  [{self.elapsed():.0f} s]")

    def elapsed(self) -> float:
        return time.time() - self.started
