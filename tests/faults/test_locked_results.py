"""A results database that another process keeps locked: a wait, then one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.results import store as store_module
from harness.results.store import Store

# Another process takes the write lock and keeps it (a stuck `harness run`, an open sqlite3 shell).
HOLD_THE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_database_locked_for_long_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path / "results.db")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 1000)  # the harness waits 30 s
        with pytest.raises(HarnessError) as error:
            Store(tmp_path)
        assert str(error.value) == (
            f"{tmp_path / 'results.db'} stayed locked by another process for 1 s (is another "
            "`harness run` writing to this directory?); wait for it to finish or use another --out"
        )
    finally:
        holder.kill()
        holder.wait()
    with Store(tmp_path) as store:  # the lock gone, the database works as before
        store.get_or_create_run("base", method="base", preset=None, base_model="m", config={})
