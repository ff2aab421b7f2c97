"""The results store: one SQLite file, ``DIR/results.db``, per results directory.

Why SQLite: it is embedded (nothing to run), a single file to copy, and in WAL mode
the dashboard reads while a run writes.  Under torchrun only rank 0 writes; `harness run`'s
worker processes each write their own model's rows (on Ray, whose workers may be on other
machines, where SQLite's locks do not hold, they record them in a ``StoreJournal`` instead,
and the driver makes them).  Every public write method is one
``BEGIN IMMEDIATE ... COMMIT`` transaction, so a run killed at any point leaves whole
batches or nothing, and a rerun (idempotent upserts) fills in
only what is missing.

Schema (version 2; ``meta.schema_version``)
-------------------------------------------
``runs``          one row per trained or evaluated model (the base model is a run too)
    run_id INTEGER PK, key TEXT UNIQUE (what makes a run resumable), method, preset,
    base_model, config (JSON), git_commit, versions (JSON: python, torch, diffusers,
    transformers, harness), status ('created' | 'running' | 'trained' | 'done' | 'failed'),
    started_at, ended_at (ISO-8601 UTC: the run's own, from the start of its first job to the
    end of its last; created, a run has its creation time until a job starts it), wall_s,
    gpu_hours, unet_evals_per_sample,
    compute (JSON: every compute figure reported, the three above included; on a CPU
    ``cpu_hours`` instead of ``gpu_hours``; ``peak_memory_mb``; ``train_processes``;
    ``reward_calls_per_sample``, {scorer: images it scored in training per training sample}, {} for an
    offline method; ``runs_frame()`` shows these four as columns too; see ``harness.results.compute``)
``checkpoints``   (run_id, step) PK, path (relative to the results directory), created_at
``training_log``  (run_id, step, term) PK, value — long format, one row per logged term
                  (loss, lr, and whatever terms a method logs)
``images``        image_id INTEGER PK, UNIQUE (run_id, suite, prompt_id, image_index),
                  suite_version, split ('seen' | 'unseen'), prompt, category, seed,
                  path (relative to the results directory), sha256
``scores``        (image_id, scorer, version) PK, scale, higher_is_better, value;
                  deleted with their image (ON DELETE CASCADE) and whenever the image's
                  sha256 changes
``overlaps``      (run_id, suite) PK, n_overlap — training captions found in that suite
``training_signals`` (run_id, metric) PK, source — the metrics whose values shaped this run's
                  training data (e.g. experts ranked by hpsv2), with ``source`` describing how;
                  the leaderboard marks these metrics for the run's method
``diversity``     (run_id, suite, prompt_id, embedder, version) PK, n_images, value — the mean pairwise
                  cosine distance between a prompt's images in the embedder's image embedding space
                  (``harness.results.diversity``; the reward-hacking report's in-prompt diversity)

Versions: 1 lacked ``training_signals``, 2 lacked ``diversity``.  Opening an older database for
writing adds what it lacks and records version 3; a read-only open reads it as is (no training
signals, no diversity).

Read side: ``scores_frame()`` is the input of ``harness.results.stats`` (one row per image and
metric), ``images_frame()``, ``training_frame()``, ``runs_frame()``, ``checkpoints_frame()``,
``overlaps_frame()``, ``training_signals_frame()``, ``diversity_frame()``; ``export()`` writes all of them as csv,
parquet or json.
"""

from __future__ import annotations

import functools
import json
import platform
import sqlite3
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd

from harness.atomic import replacing, writing
from harness.errors import HarnessError
from harness.results.compute import combine
from harness.results.identity import difference
from harness.results.layout import ResultsDir

SCHEMA_VERSION = "3"
# Older versions this harness reads; opening one for writing upgrades it (CREATE TABLE IF NOT
# EXISTS adds what it lacks).
UPGRADABLE_SCHEMAS = ("1", "2")
RUN_STATUSES = ("created", "running", "trained", "done", "failed")
EXPORT_FORMATS = ("csv", "parquet", "json")
# Long enough that a reader never sees "database is locked" while a writer commits
# or checkpoints the WAL; transactions here last milliseconds.
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id     INTEGER PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    method     TEXT NOT NULL,
    preset     TEXT,
    base_model TEXT NOT NULL,
    config     TEXT NOT NULL,
    git_commit TEXT,
    versions   TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('created', 'running', 'trained', 'done', 'failed')),
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    wall_s     REAL,
    gpu_hours  REAL,
    unet_evals_per_sample REAL,
    compute    TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id     INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS training_log (
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    term   TEXT NOT NULL,
    value  REAL NOT NULL,
    PRIMARY KEY (run_id, step, term)
);
CREATE TABLE IF NOT EXISTS images (
    image_id      INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    suite         TEXT NOT NULL,
    suite_version TEXT NOT NULL,
    split         TEXT NOT NULL CHECK (split IN ('seen', 'unseen')),
    prompt_id     TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    category      TEXT NOT NULL,
    image_index   INTEGER NOT NULL,
    seed          INTEGER NOT NULL,
    path          TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    UNIQUE (run_id, suite, prompt_id, image_index)
);
CREATE TABLE IF NOT EXISTS scores (
    image_id INTEGER NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    scorer   TEXT NOT NULL,
    version  TEXT NOT NULL,
    scale    TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL DEFAULT 1,
    value    REAL NOT NULL,
    PRIMARY KEY (image_id, scorer, version)
);
CREATE TABLE IF NOT EXISTS overlaps (
    run_id    INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    suite     TEXT NOT NULL,
    n_overlap INTEGER NOT NULL,
    PRIMARY KEY (run_id, suite)
);
CREATE TABLE IF NOT EXISTS training_signals (
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (run_id, metric)
);
CREATE TABLE IF NOT EXISTS diversity (
    run_id    INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    suite     TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    embedder  TEXT NOT NULL,
    version   TEXT NOT NULL,
    n_images  INTEGER NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (run_id, suite, prompt_id, embedder, version)
);
CREATE INDEX IF NOT EXISTS images_by_suite ON images (suite, prompt_id, image_index);
"""

# Scores are joined to their images in pandas: fetching the image columns once per image
# instead of once per score reads a paper-sized run about twice as fast.
_SCORES_QUERY = """
SELECT image_id, scorer AS metric, version AS metric_version, scale, higher_is_better, value
FROM scores ORDER BY image_id, scorer, version
"""
SCORES_COLUMNS = [
    "run_id",
    "method",
    "suite",
    "split",
    "metric",
    "metric_version",
    "scale",
    "higher_is_better",
    "prompt_id",
    "category",
    "image_index",
    "seed",
    "path",
    "value",
]
_IMAGES_QUERY = """
SELECT i.image_id, i.run_id, r.method, i.suite, i.suite_version, i.split, i.prompt_id, i.prompt,
       i.category, i.image_index, i.seed, i.path, i.sha256
FROM images i JOIN runs r USING (run_id)
ORDER BY i.run_id, i.suite, i.prompt_id, i.image_index
"""
_TRAINING_QUERY = """
SELECT t.run_id, r.method, t.step, t.term, t.value
FROM training_log t JOIN runs r USING (run_id)
ORDER BY t.run_id, t.term, t.step
"""
_RUNS_QUERY = """
SELECT run_id, key, method, preset, base_model, status, started_at, ended_at, wall_s, gpu_hours,
       json_extract(compute, '$.cpu_hours') AS cpu_hours, unet_evals_per_sample,
       json_extract(compute, '$.peak_memory_mb') AS peak_memory_mb,
       json_extract(compute, '$.train_processes') AS train_processes,
       json_extract(compute, '$.reward_calls_per_sample') AS reward_calls_per_sample,
       git_commit, versions, config, compute
FROM runs ORDER BY run_id
"""
_CHECKPOINTS_QUERY = """
SELECT c.run_id, r.method, c.step, c.path, c.created_at
FROM checkpoints c JOIN runs r USING (run_id) ORDER BY c.run_id, c.step
"""
# The split of an overlap's suite comes from the images generated for it (NULL before any).
_OVERLAPS_QUERY = """
SELECT o.run_id, r.method, o.suite,
       (SELECT i.split FROM images i WHERE i.suite = o.suite LIMIT 1) AS split, o.n_overlap
FROM overlaps o JOIN runs r USING (run_id) ORDER BY o.run_id, o.suite
"""
TRAINING_SIGNALS_COLUMNS = ["run_id", "method", "metric", "source"]
_TRAINING_SIGNALS_QUERY = """
SELECT s.run_id, r.method, s.metric, s.source
FROM training_signals s JOIN runs r USING (run_id) ORDER BY s.run_id, s.metric
"""
DIVERSITY_COLUMNS = ["run_id", "method", "suite", "prompt_id", "embedder", "version", "n_images", "value"]
_DIVERSITY_QUERY = """
SELECT d.run_id, r.method, d.suite, d.prompt_id, d.embedder, d.version, d.n_images, d.value
FROM diversity d JOIN runs r USING (run_id) ORDER BY d.run_id, d.suite, d.prompt_id, d.embedder, d.version
"""

_IMAGE_FIELDS = ("prompt_id", "prompt", "category", "image_index", "seed", "path", "sha256")
_SCORE_FIELDS = ("prompt_id", "image_index", "scorer", "version", "scale", "value")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _canonical_json(obj: object) -> str:
    # Sorted keys so that the same config always serialises to the same text (compared on resume).
    return json.dumps(obj, sort_keys=True, default=str)


def _git_commit() -> str | None:
    """The commit of the checkout the harness runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# What the provenance records, as {name shown: installed distribution}.
_PROVENANCE_PACKAGES = {
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "harness": "diffusion-alignment-harness",
}


def _package_versions() -> dict[str, str | None]:
    # importlib.metadata reads the installed metadata without importing torch (which takes seconds).
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in _PROVENANCE_PACKAGES.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _require_fields(row: dict, fields: tuple[str, ...], what: str) -> None:
    absent = [f for f in fields if f not in row]
    if absent:
        raise HarnessError(f"{what} row is missing {', '.join(absent)}: {row!r}")


def mismatch(key: str, results: Path, differs: str) -> str:
    """The one line refusing to resume run ``key`` of ``results`` with other inputs (``differs``:
    ``harness.results.identity.difference``'s)."""
    return (
        f"run {key!r} in {results} was made with other inputs: {differs}; rerun it with the inputs it was made "
        "with, or use another --out directory to start a new experiment"
    )


def db_path(path: Path | str) -> Path:
    """The database file of a results directory (a path ending in .db is kept as is)."""
    path = Path(path)
    return path if path.suffix == ".db" else ResultsDir(path).db


def damaged_record(path: Path, problem: str) -> HarnessError:
    """The one line for a damaged results database: the record of the experiment, unlike a cache, is not rebuilt."""
    return HarnessError(
        f"{path} is damaged ({problem}); it is the record of this experiment, not a cache, so nothing "
        "rebuilds it: restore it from a copy (or `sqlite3 results.db .recover`), or use another --out"
    )


class StoreJournal:
    """The writes of a job that must not open the results database, for the process that owns it to make.

    ``with journal.recording():`` every ``Store`` opened for writing in this process records its write
    calls here instead of making them: in memory, or appended to ``path`` (one JSON line each, flushed,
    so what an attempt killed later recorded is kept).  ``replay(store)`` makes them in order.  The
    writes are upserts, so making one again leaves the database as making it once does, except
    ``add_compute``, which adds (a job records it once, at its end).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: list[dict[str, Any]] = []

    @contextmanager
    def recording(self) -> Iterator[StoreJournal]:
        global _recording
        if self.path is not None and self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):  # a killed writer's half line: the next line starts clean
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        previous, _recording = _recording, self
        try:
            yield self
        finally:
            _recording = previous

    def record(self, write: str, args: tuple, kwargs: dict[str, Any]) -> None:
        entry = {"write": write, "args": list(args), "kwargs": kwargs}
        if self.path is None:
            self._entries.append(entry)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writing(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def entries(self, start: int = 0) -> list[dict[str, Any]]:
        """The writes recorded, from the ``start``-th on: ``{"write": method name, "args", "kwargs"}``."""
        if self.path is None:
            return self._entries[start:]
        if not self.path.exists():
            return []
        # Only whole lines: the last piece is empty, or a line its writer is still writing.
        lines = self.path.read_text(encoding="utf-8").split("\n")[:-1]
        return [json.loads(line) for line in lines[start:]]

    def replay(self, store: Store, start: int = 0) -> int:
        """Make the writes recorded from the ``start``-th on; returns where the next replay starts."""
        entries = self.entries(start)
        for entry in entries:
            getattr(store, entry["write"])(*entry["args"], **entry["kwargs"])
        return start + len(entries)


_recording: StoreJournal | None = None  # set by StoreJournal.recording()
Write = TypeVar("Write", bound=Callable[..., None])


def _journaled(write: Write) -> Write:
    """A write that a ``Store`` opened under ``StoreJournal.recording()`` records instead of making."""

    @functools.wraps(write)
    def write_or_record(self: Store, *args: Any, **kwargs: Any) -> None:
        if self._journal is not None:
            self._journal.record(write.__name__, args, kwargs)
            return
        write(self, *args, **kwargs)

    return write_or_record  # type: ignore[return-value]


class Store:
    """A connection to a results database; use as a context manager or call ``close()``.

    ``readonly=True`` opens with a ``file:...?mode=ro`` URI (the dashboard): nothing through
    this connection can change the file, and a missing database is an error instead of
    being created.  ``schema_version`` is the version read (an older one only when read-only).
    Opened for writing under ``StoreJournal.recording()``, it does not open the file at all:
    its writes are recorded in the journal (and anything else it is asked is an error).
    """

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        self.path = db_path(path)
        self.readonly = readonly
        self._journal = None if readonly else _recording
        if self._journal is not None:
            self._conn = None
            self.schema_version = SCHEMA_VERSION
            return
        if readonly:
            if not self.path.is_file():
                raise HarnessError(f"no results database at {self.path} (run `harness run --out DIR` first)")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per public write.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            self.schema_version = self._readable_schema_version()
        else:
            with self._reporting():
                self._create_schema()
            self.schema_version = SCHEMA_VERSION

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: two writers queue on busy_timeout instead of
        # failing when a read lock would have to be upgraded.
        if self._journal is not None:
            raise HarnessError(
                f"this job records its writes to {self.path} for another process to make: "
                "it can only record them (add_*, set_*, log_training)"
            )
        with self._reporting():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _reporting(self) -> Iterator[None]:
        """SQLite's failures the user can act on, as one-line errors naming the file."""
        try:
            with writing(self.path):  # a full disk
                yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise HarnessError(
                    f"{self.path} stayed locked by another process for {BUSY_TIMEOUT_MS // 1000} s (is another "
                    "`harness run` writing to this directory?); wait for it to finish or use another --out"
                ) from None
            raise
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # its subclasses (a constraint, ...) are our own mistakes
                raise
            raise self._not_a_results_database(exc) from None

    def _not_a_results_database(self, exc: sqlite3.DatabaseError) -> HarnessError:
        if "malformed" in str(exc):
            return damaged_record(self.path, str(exc))
        return HarnessError(f"{self.path} is not a harness results database ({exc}); move it away or use another --out")

    def damage(self) -> str | None:
        """What SQLite's quick check finds wrong with the database (a truncated copy, a bad disk), or None."""
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if problems == ["ok"] else problems[0]

    def check_intact(self) -> None:
        """Stop with one line if the database is damaged."""
        problem = self.damage()
        if problem is not None:
            raise damaged_record(self.path, problem)

    def _create_schema(self) -> None:
        """Create a new database, or upgrade an older one in place (one transaction)."""
        # WAL lets the dashboard read while a run writes; it is a property of the file, set once.
        self._conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            # Raising here rolls back: a newer or foreign database is left untouched.
            if self._readable_schema_version() in UPGRADABLE_SCHEMAS:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    def _readable_schema_version(self) -> str:
        """The database's schema version, if this harness reads it."""
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._not_a_results_database(exc) from None
        if row is None or row[0] not in (SCHEMA_VERSION, *UPGRADABLE_SCHEMAS):
            found = None if row is None else row[0]
            raise HarnessError(f"{self.path} has results schema {found}, this harness reads {SCHEMA_VERSION}")
        return row[0]

    # -- runs --------------------------------------------------------------------------------
    def get_or_create_run(self, key: str, *, method: str, preset: str | None, base_model: str, config: dict) -> int:
        """The id of the run called ``key``, created (with provenance) the first time.

        Resuming a run with another method or config (its base model's identity included) would mix results of
        two different experiments under one id, so that is refused, naming the field that differs.  Located
        inputs compare by content (``harness.results.identity``): the same data or model at another path is the same.
        """
        config_json = _canonical_json(config)
        with self._transaction() as conn:
            run_id = self._resumable(conn, key, method, base_model, config)
            if run_id is not None:
                return run_id
            cur = conn.execute(
                "INSERT INTO runs (key, method, preset, base_model, config, git_commit, versions, status,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'created', ?)",
                (
                    key,
                    method,
                    preset,
                    str(base_model),
                    config_json,
                    _git_commit(),
                    json.dumps(_package_versions()),
                    _now(),
                ),
            )
            return int(cur.lastrowid)

    def check_resumable(self, key: str, *, method: str, base_model: str, config: dict) -> bool:
        """Whether run ``key`` exists, refusing (as ``get_or_create_run`` does) one made with other inputs; reads
        only (``harness run`` and ``harness evaluate`` check before anything is made)."""
        return self._resumable(self._conn, key, method, base_model, config) is not None

    def _resumable(self, conn: sqlite3.Connection, key: str, method: str, base_model: str, config: dict) -> int | None:
        row = conn.execute("SELECT run_id, method, base_model, config FROM runs WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        run_id, old_method, old_base, old_config = row
        # The base_model column shows the base; the config holds its identity when it has one.
        columns = "base_model" not in config
        recorded = {"method": old_method, **({"base_model": old_base} if columns else {}), **json.loads(old_config)}
        differs = difference(
            recorded, {"method": method, **({"base_model": str(base_model)} if columns else {}), **config}
        )
        if differs is not None:
            raise HarnessError(mismatch(key, self.path.parent, differs))
        return int(run_id)

    @_journaled
    def set_run_status(self, run_id: int, status: str, compute: dict | None = None) -> None:
        """Record a status change; ``compute`` figures are merged into the run's compute record.

        Known compute keys are also kept in their own columns: ``wall_s``, ``gpu_hours``,
        ``unet_evals_per_sample``.  The first 'running' of a run stamps its start (its first job
        began), 'done' and 'failed' its end.
        """
        if status not in RUN_STATUSES:
            raise HarnessError(f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
        with self._transaction() as conn:
            merged = {**self._compute(conn, run_id), **(compute or {})}
            now = _now()
            ended_at = now if status in ("done", "failed") else None
            conn.execute(
                "UPDATE runs SET started_at = CASE WHEN status = 'created' AND ? = 'running' THEN ? ELSE started_at END,"
                " status = ?, ended_at = ?, compute = ?, wall_s = ?, gpu_hours = ?,"
                " unet_evals_per_sample = ? WHERE run_id = ?",
                (
                    status,
                    now,
                    status,
                    ended_at,
                    _canonical_json(merged),
                    merged.get("wall_s"),
                    merged.get("gpu_hours"),
                    merged.get("unet_evals_per_sample"),
                    run_id,
                ),
            )

    @_journaled
    def add_compute(self, run_id: int, figures: dict[str, float]) -> None:
        """Add a job's ``figures`` (``harness.results.compute.JobClock``'s) to the run's totals, resumed attempts
        included: unlike ``set_run_status``'s, these accumulate (``harness.results.compute.combine``)."""
        with self._transaction() as conn:
            compute = combine(self._compute(conn, run_id), figures)
            conn.execute(
                "UPDATE runs SET compute = ?, wall_s = ?, gpu_hours = ? WHERE run_id = ?",
                (_canonical_json(compute), compute.get("wall_s"), compute.get("gpu_hours"), run_id),
            )

    def _compute(self, conn: sqlite3.Connection, run_id: int) -> dict:
        row = conn.execute("SELECT compute FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise HarnessError(f"no run with id {run_id} in {self.path}")
        return json.loads(row[0])

    @_journaled
    def add_checkpoint(self, run_id: int, step: int, path: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, step) DO UPDATE SET path = excluded.path",
                (run_id, int(step), str(path), _now()),
            )

    @_journaled
    def log_training(self, run_id: int, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Training log rows ``(step, {term: value})``; logging a step again overwrites it."""
        values = [(run_id, int(step), term, float(v)) for step, terms in rows for term, v in terms.items()]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO training_log VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, step, term) DO UPDATE SET value = excluded.value",
                values,
            )

    @_journaled
    def set_overlap(self, run_id: int, *, suite: str, n_overlap: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO overlaps VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, suite) DO UPDATE SET n_overlap = excluded.n_overlap",
                (run_id, suite, int(n_overlap)),
            )

    def set_verified(self, record: dict[str, Any]) -> None:
        """Record the last `harness verify` of this directory (when, what it checked, the problems it found)."""
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_verified', ?)", (json.dumps(record),))

    def last_verified(self) -> dict[str, Any] | None:
        """What ``set_verified`` recorded last, or None: never verified."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'last_verified'").fetchone()
        return None if row is None else json.loads(row[0])

    @_journaled
    def set_training_signals(self, run_id: int, metrics: list[str], source: str) -> None:
        """Record that ``metrics`` shaped this run's training data; ``source`` says how (e.g.
        "experts ranked by hpsv2 (top 500)").  Replaces what the run had: one call records the
        run's whole set (a family's every scorer included, ``harness.scoring.same_signal``), and
        an empty list clears it."""
        if isinstance(metrics, str) or not all(isinstance(m, str) and m for m in metrics):
            raise HarnessError(f"training signals of run {run_id} must be a list of metric names, got {metrics!r}")
        if not source.strip():
            raise HarnessError(f"training signals of run {run_id} need a source (how the metrics shaped the data)")
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise HarnessError(f"no run with id {run_id} in {self.path}")
            conn.execute("DELETE FROM training_signals WHERE run_id = ?", (run_id,))
            conn.executemany(
                "INSERT INTO training_signals VALUES (?, ?, ?)",
                [(run_id, metric, source) for metric in sorted(set(metrics))],
            )

    # -- images and scores -------------------------------------------------------------------
    @_journaled
    def add_images(self, run_id: int, *, suite: str, suite_version: str, split: str, rows: list[dict]) -> None:
        """Record generated images (sampling manifest rows), keyed (run, suite, prompt_id, image_index).

        A row already stored with the same sha256 keeps its scores; a changed sha256 means a
        different picture, so the row is replaced and its scores are dropped.
        """
        if split not in ("seen", "unseen"):
            raise HarnessError(f"split must be 'seen' or 'unseen', got {split!r}")
        for row in rows:
            _require_fields(row, _IMAGE_FIELDS, "image")
        with self._transaction() as conn:
            for row in rows:
                key = (run_id, suite, str(row["prompt_id"]), int(row["image_index"]))
                old = conn.execute(
                    "SELECT image_id, sha256 FROM images"
                    " WHERE run_id = ? AND suite = ? AND prompt_id = ? AND image_index = ?",
                    key,
                ).fetchone()
                if old is not None and old[1] != row["sha256"]:
                    conn.execute("DELETE FROM scores WHERE image_id = ?", (old[0],))
                conn.execute(
                    "INSERT INTO images (run_id, suite, prompt_id, image_index, suite_version, split, prompt,"
                    " category, seed, path, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (run_id, suite, prompt_id, image_index) DO UPDATE SET"
                    " suite_version = excluded.suite_version, split = excluded.split,"
                    " prompt = excluded.prompt, category = excluded.category, seed = excluded.seed,"
                    " path = excluded.path, sha256 = excluded.sha256",
                    (
                        *key,
                        suite_version,
                        split,
                        row["prompt"],
                        row["category"] or "",
                        int(row["seed"]),
                        str(row["path"]),
                        row["sha256"],
                    ),
                )

    @_journaled
    def add_scores(self, run_id: int, *, suite: str, rows: list[dict]) -> None:
        """Record scores of stored images, keyed (image, scorer, version); a rerun overwrites.

        Rows: ``prompt_id, image_index, scorer, version, scale, value`` and optionally
        ``higher_is_better`` (default True: the scorer's direction, which the statistics and the
        dashboard follow).
        """
        for row in rows:
            _require_fields(row, _SCORE_FIELDS, "score")
        with self._transaction() as conn:
            image_ids = dict(
                ((prompt_id, image_index), image_id)
                for image_id, prompt_id, image_index in conn.execute(
                    "SELECT image_id, prompt_id, image_index FROM images WHERE run_id = ? AND suite = ?",
                    (run_id, suite),
                )
            )
            values = []
            for row in rows:
                image_id = image_ids.get((str(row["prompt_id"]), int(row["image_index"])))
                if image_id is None:
                    raise HarnessError(
                        f"score for an image that is not stored: run {run_id}, suite {suite!r}, "
                        f"prompt {row['prompt_id']!r}, image {row['image_index']} (add_images first)"
                    )
                values.append(
                    (
                        image_id,
                        row["scorer"],
                        str(row["version"]),
                        str(row["scale"]),
                        int(bool(row.get("higher_is_better", True))),
                        float(row["value"]),
                    )
                )
            conn.executemany(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (image_id, scorer, version)"
                " DO UPDATE SET scale = excluded.scale, higher_is_better = excluded.higher_is_better,"
                " value = excluded.value",
                values,
            )

    @_journaled
    def add_diversity(self, run_id: int, *, suite: str, embedder: str, version: str, rows: list[dict]) -> None:
        """Record the in-prompt diversity of run ``run_id``'s images of ``suite`` measured with scorer ``embedder``
        (its ``version``); rows: ``prompt_id, n_images, value``.  Keyed (run, suite, prompt, embedder, version):
        a rerun overwrites."""
        for row in rows:
            _require_fields(row, ("prompt_id", "n_images", "value"), "diversity")
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO diversity VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, suite, prompt_id, embedder,"
                " version) DO UPDATE SET n_images = excluded.n_images, value = excluded.value",
                [
                    (run_id, suite, str(r["prompt_id"]), embedder, str(version), int(r["n_images"]), float(r["value"]))
                    for r in rows
                ],
            )

    # -- read side ---------------------------------------------------------------------------
    def _frame(self, query: str) -> pd.DataFrame:
        # One statement is one read transaction: a concurrent writer's commit is all in or all out.
        return pd.read_sql_query(query, self._conn)

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Several queries that see the same committed state."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def scores_frame(self) -> pd.DataFrame:
        """One row per (image, metric): the input of ``harness.results.stats``.

        Columns: run_id, method, suite, split, metric, metric_version, scale, higher_is_better,
        prompt_id, category, image_index, seed, path, value.
        """
        with self._snapshot():
            images = self._frame(_IMAGES_QUERY)
            scores = self._frame(_SCORES_QUERY)
        scores["higher_is_better"] = scores["higher_is_better"].astype(bool)
        return scores.merge(images, on="image_id", how="inner", sort=False)[SCORES_COLUMNS]

    def images_frame(self) -> pd.DataFrame:
        """Columns: image_id, run_id, method, suite, suite_version, split, prompt_id, prompt,
        category, image_index, seed, path, sha256."""
        return self._frame(_IMAGES_QUERY)

    def training_frame(self) -> pd.DataFrame:
        """Long format, one row per logged term: run_id, method, step, term, value."""
        return self._frame(_TRAINING_QUERY)

    def runs_frame(self) -> pd.DataFrame:
        """Columns: run_id, key, method, preset, base_model, status, started_at, ended_at, wall_s,
        gpu_hours, cpu_hours, unet_evals_per_sample, peak_memory_mb, train_processes (a training's data-parallel
        processes; None where nothing was trained), reward_calls_per_sample (JSON text: {scorer: images the
        reward scored during training per training sample}, {} offline; None where nothing was trained),
        git_commit, versions, config, compute (the last three JSON text)."""
        return self._frame(_RUNS_QUERY)

    def checkpoints_frame(self) -> pd.DataFrame:
        """Columns: run_id, method, step, path, created_at."""
        return self._frame(_CHECKPOINTS_QUERY)

    def overlaps_frame(self) -> pd.DataFrame:
        """Columns: run_id, method, suite, split (None when the suite has no images yet), n_overlap."""
        return self._frame(_OVERLAPS_QUERY)

    def training_signals_frame(self) -> pd.DataFrame:
        """Columns: run_id, method, metric, source — one row per metric that shaped a run's training data."""
        if self.schema_version == "1":  # read-only open of a database older than the table
            return pd.DataFrame(columns=TRAINING_SIGNALS_COLUMNS)
        return self._frame(_TRAINING_SIGNALS_QUERY)

    def diversity_frame(self) -> pd.DataFrame:
        """Columns: run_id, method, suite, prompt_id, embedder, version, n_images, value — one row per prompt of a
        run's suite (``add_diversity``); empty for a database older than the table (read-only)."""
        if self.schema_version in UPGRADABLE_SCHEMAS:  # read-only open of a database older than the table
            return pd.DataFrame(columns=DIVERSITY_COLUMNS)
        return self._frame(_DIVERSITY_QUERY)


def _tables(results_dir: Path) -> dict[str, pd.DataFrame]:
    """Every table of ``results_dir``'s database, by name."""
    with Store(results_dir, readonly=True) as store:
        return {
            "runs": store.runs_frame(),
            "checkpoints": store.checkpoints_frame(),
            "training": store.training_frame(),
            "images": store.images_frame(),
            "scores": store.scores_frame(),
            "overlaps": store.overlaps_frame(),
            "training_signals": store.training_signals_frame(),
            "diversity": store.diversity_frame(),
        }


def _check_export_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise HarnessError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")


def export(results_dir: Path, out: Path, fmt: Literal["csv", "parquet", "json"]) -> list[Path]:
    """Write every table of ``results_dir``'s database to ``out/<table>.<fmt>``; returns the files.

    Files are written under a temporary name and renamed, so a reader never sees half a file.
    """
    _check_export_format(fmt)
    return _write_tables(_tables(results_dir), Path(out), fmt)


def export_experiments(
    experiments: Mapping[str, ResultsDir], out: Path, fmt: Literal["csv", "parquet", "json"]
) -> list[Path]:
    """``export`` of one results directory, or of several side by side (``experiments``: each experiment's name
    and results directory): each table of every experiment in one file, its rows led by an ``experiment`` column
    (the experiment's name; a run is (experiment, run_id))."""
    _check_export_format(fmt)
    loaded = [(name, _tables(results.root)) for name, results in experiments.items()]  # all read first
    if len(loaded) == 1:
        return _write_tables(loaded[0][1], Path(out), fmt)
    tables = {
        name: pd.concat([own[name].assign(experiment=experiment) for experiment, own in loaded], ignore_index=True)
        for name in loaded[0][1]
    }
    tables = {
        name: frame[["experiment", *(c for c in frame.columns if c != "experiment")]] for name, frame in tables.items()
    }
    return _write_tables(tables, Path(out), fmt)


def _write_tables(tables: dict[str, pd.DataFrame], out: Path, fmt: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables.items():
        target = out / f"{name}.{fmt}"
        with replacing(target) as tmp:
            if fmt == "csv":
                frame.to_csv(tmp, index=False)
            elif fmt == "parquet":
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_json(tmp, orient="records", indent=1)
        written.append(target)
    return written
