"""Reward scores of a training set's images, one SQLite table per (data set, split, scorer).

Keyed by (image uid, caption): the same picture shown with two captions is scored twice, as
the public expert-selection code does (DiffusionDRO tools/pickapic.py:105-110).  A NULL value marks an image that could not be decoded
(so a rerun does not try it again).  The table records the scorer's name, version, scale and
family and where the data came from, so a reader can check what the numbers mean.

Tables live under ``$HARNESS_CACHE/data-scores/<data set key>/<scorer>.sqlite``: scoring the
~1M images of Pick-a-Pic v2's train split is GPU-hours, worth keeping across experiments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from harness.api.environment import cache_dir
from harness.cache_db import open_cache_db
from harness.errors import HarnessError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    uid     TEXT NOT NULL,
    caption TEXT NOT NULL,
    value   REAL,
    PRIMARY KEY (uid, caption)
);
"""


def dataset_key(source: str | Path, split: str) -> str:
    """A name for a data set and split: a hub id as is, a local copy by its files' names and sizes
    (so a moved or copied directory keeps its scores, and a changed one does not)."""
    path = Path(source)
    digest = hashlib.sha256(split.encode())
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        for file in files:
            digest.update(f"{file.relative_to(path)}:{file.stat().st_size}\n".encode())
        return f"{path.name}-{split}-{digest.hexdigest()[:12]}"
    digest.update(str(source).encode())
    return f"{str(source).replace('/', '--')}-{split}-{digest.hexdigest()[:12]}"


def table_path(source: str | Path, split: str, scorer: str) -> Path:
    return cache_dir() / "data-scores" / dataset_key(source, split) / f"{scorer}.sqlite"


class ScoreTable:
    """``(uid, caption) -> score`` with the scorer's identity; every ``put`` is one transaction."""

    def __init__(self, path: Path, meta: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._db = open_cache_db(self.path, _SCHEMA)  # a damaged table is moved aside: its images are scored again
        stored = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta:
            clash = {k: (stored[k], v) for k, v in meta.items() if k in stored and stored[k] != v}
            if clash:
                key, (old, new) = next(iter(clash.items()))
                raise HarnessError(f"{self.path} holds scores with {key} {old!r}, not {new!r}; move it away to rescore")
            with self._db:
                self._db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", meta.items())
            stored = {**meta, **stored}
        self.meta = stored

    @classmethod
    def find(cls, source: str | Path, split: str, scorer: str) -> ScoreTable | None:
        """The table of ``scorer`` for this data set, if a data step made one."""
        path = table_path(source, split, scorer)
        return cls(path) if path.exists() else None

    def known(self) -> set[tuple[str, str]]:
        return set(self._db.execute("SELECT uid, caption FROM scores"))

    def values(self) -> dict[tuple[str, str], float | None]:
        return {
            (uid, caption): value for uid, caption, value in self._db.execute("SELECT uid, caption, value FROM scores")
        }

    def put(self, rows: Iterable[tuple[str, str, float | None]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", rows)

    def ranked(self, k: int) -> list[tuple[float, str, str]]:
        """The k best (score, uid, caption), ties broken by uid then caption, descending as the public code sorts (DiffusionDRO
        tools/pickapic.py:281-284)."""
        query = "SELECT value, uid, caption FROM scores WHERE value IS NOT NULL ORDER BY value DESC, uid DESC, caption DESC LIMIT ?"
        return list(self._db.execute(query, (k,)))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
