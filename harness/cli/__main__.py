"""`python -m harness.cli` (torchrun and accelerate launch start the command line this way)."""

import sys

from harness.cli import main

sys.exit(main())
