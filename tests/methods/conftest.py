"""The methods' tests run single-threaded, as the training tests do (tests/support/train_fixtures.py says why)."""

from __future__ import annotations

from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture: every module here)
