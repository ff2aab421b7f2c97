"""`python -m harness.backends.train_process EXCHANGE`: one process of a multi-process training where torch's
elastic launcher spawns them (on GPUs), running ``harness.backends.jobs.training_process``.  On a Linux CPU
machine the launcher forks them instead and calls that function directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.backends.jobs import training_process

if __name__ == "__main__":
    sys.exit(training_process(Path(sys.argv[1])))
