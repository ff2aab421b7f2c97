"""SQLite caches that heal: a cache file that is not a whole database is moved aside and made anew.

The score cache (``DIR/cache/scores.sqlite``) and the data-score tables (``$HARNESS_CACHE/data-scores``)
only spare work: whatever they lose is computed again.  So a damaged one (a truncated copy, garbage, a
bad disk) is no reason to stop a run: it is renamed ``NAME.damaged-<UTC time>`` (kept for a post-mortem)
and an empty one takes its place, with one warning line.  ``results.db`` is the record, not a cache,
and never goes through here (``harness.results.store`` stops with an error instead).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.api.environment import say

_COMPANIONS = ("", "-wal", "-shm")  # a database's own file and SQLite's files beside it in WAL mode


def open_cache_db(path: Path, schema: str, *, wal: bool = False) -> sqlite3.Connection:
    """A connection to the cache database ``path`` with ``schema`` made; a damaged file is moved aside first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _healing(path):  # several processes may open it at once: one of them heals, the others wait
        db, problem = _connect(path, schema, wal)
        if db is None:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            for suffix in _COMPANIONS:
                companion = Path(f"{path}{suffix}")
                if companion.exists():
                    os.replace(companion, f"{aside}{suffix}")
            say(
                f"   warning: {path} was damaged ({problem}); it is only a cache: moved aside to {aside.name} "
                "and rebuilt"
            )
            db, problem = _connect(path, schema, wal)
            if db is None:
                raise sqlite3.DatabaseError(f"{path}: {problem}")
    return db


def damage(path: Path) -> str | None:
    """What is wrong with the cache database ``path`` (None: nothing), read without changing it."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    try:
        return _check(db)
    finally:
        db.close()


def _connect(path: Path, schema: str, wal: bool) -> tuple[sqlite3.Connection | None, str]:
    db = sqlite3.connect(path, timeout=60)
    try:
        if wal:  # several processes may read while one writes
            db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        problem = _check(db)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem is None:
        return db, ""
    db.close()
    return None, problem


def _check(db: sqlite3.Connection) -> str | None:
    """SQLite's quick check (every page and index read; linear in the file's size)."""
    try:
        rows = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if rows == ["ok"] else rows[0]


@contextmanager
def _healing(path: Path) -> Iterator[None]:
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:  # beside it: copied or ignored with it
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
