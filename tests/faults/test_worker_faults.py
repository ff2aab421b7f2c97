"""When one job fails, the pool stops the others: they unwind and leave no temporary behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.atomic import staging
from harness.errors import HarnessError
from harness.libraries import quiet_libraries
from harness.workers import WorkerPool


def _write_slowly(target: Path) -> None:
    """A job caught writing a temporary (a checkpoint, say) when the pool stops it."""
    temporary = target.with_name(target.name + ".tmp")
    with staging(target, temporary):
        temporary.write_text("half of it")
        time.sleep(120)


def _fail_once_writing(target: Path) -> None:
    while not target.with_name(target.name + ".tmp").exists():
        time.sleep(0.01)
    raise HarnessError("no space left on /disk while writing the images; free space and rerun the same command")


def test_a_failed_job_stops_the_others_without_leaving_their_temporaries(tmp_path: Path) -> None:
    quiet_libraries()  # loaded here once, as `harness run` does, so the forked workers need not load them
    target = tmp_path / "checkpoint-2"
    with pytest.raises(HarnessError, match="no space left"), WorkerPool(2) as pool:
        pool.results([pool.submit(_write_slowly, target), pool.submit(_fail_once_writing, target)])
    assert list(tmp_path.iterdir()) == []
