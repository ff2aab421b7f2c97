"""What a run records about the inputs it reads, so that a results directory resumes wherever it is, by any
spelling of its path, and never serves a result of inputs whose content has changed since.

A location is recorded as

- a built model's name (``toy``, ``tiny``) or a hub id, as it is: a built model is keyed by the harness's own
  code and weights, a hub id by the hub;
- a path inside the results directory, relative to it (``data``, ``models/sft/final/unet``): what the run made
  moves with the directory;
- any other local path as ``{"path": its absolute path, "sha256": its content's fingerprint}``.

Two records are the same input when they are equal with every such dictionary reduced to its fingerprint
(``compared``): the same content moved elsewhere is the same input, changed content at the same path is not.

A fingerprint hashes the files a run reads: for a training-data directory (one with ``pairs.jsonl``,
``experts.jsonl`` or ``labelled.jsonl``) those files and every image they name, inside the directory or not;
for any other directory (a model, a data set's local copy) every file under it, hidden ones (a hub
download's ``.cache/``) aside.  Each
file's hash is cached in ``$HARNESS_CACHE/fingerprints.sqlite`` by its absolute path, size and modification
time, so a rerun only looks at the files' sizes and times.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from harness.api.environment import cache_dir, looks_like_path, say
from harness.cache_db import open_cache_db
from harness.data.check import IMAGE_FIELDS
from harness.plan.locations import is_built_model

LOCATED_SETTINGS = ("vae", "init_unet")  # training settings (TrainConfig fields) that name a location
# Above this many bytes still to hash, a line says why the command pauses (once: the hashes are cached).
_ANNOUNCE_BYTES = 1 << 30
# A file modified this recently is hashed again next time: an edit within the same clock tick keeps the mtime.
_RACY_NS = 2_000_000_000


def recorded_location(location: str | Path, root: Path) -> str | dict[str, str]:
    """What a run records about ``location`` (see the module's docstring); ``root``: the results directory."""
    recorded = located(location)
    if isinstance(recorded, str):
        return recorded
    inside = _relative_to(Path(recorded["path"]), root.resolve())
    return recorded if inside is None else inside


def located(location: str | Path) -> str | dict[str, str]:
    """``location`` as a training checkpoint records it: a built model's name or a hub id as it is, a local path
    as its absolute path and fingerprint (so that it resumes wherever its inputs, and it, have moved)."""
    location = str(location)
    path = Path(location).expanduser()
    if is_built_model(location) or (not path.exists() and not looks_like_path(location)):  # a hub id
        return location
    absolute = path.resolve()
    return {"path": str(absolute), "sha256": fingerprint(absolute)}


def compared(value: Any) -> Any:
    """``value`` with every located input reduced to its content: what resuming compares."""
    if _located(value):
        return {"sha256": value["sha256"]}
    if isinstance(value, Mapping):
        return {key: compared(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [compared(item) for item in value]
    return value


def shown(value: Any) -> str:
    """A recorded value as a message shows it: a located input by its path."""
    if _located(value):
        return _near(value["path"])
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (Mapping, list)) else str(value)


def difference(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The first field whose identity differs, as ``FIELD: recorded X, now Y`` (nested fields dotted); None
    when ``compared`` makes the two equal."""
    recorded, new = json.loads(json.dumps(recorded, default=str)), json.loads(json.dumps(new, default=str))
    for key in sorted(set(recorded) | set(new)):
        old_value, new_value = recorded.get(key), new.get(key)
        if compared(old_value) == compared(new_value):
            continue
        if (
            isinstance(old_value, Mapping)
            and isinstance(new_value, Mapping)
            and not _located(old_value)
            and not _located(new_value)
        ):
            inner = difference(old_value, new_value)
            return f"{key}.{inner}"
        if _located(old_value) and _located(new_value):
            moved = "" if old_value["path"] == new_value["path"] else f" (recorded at {_near(old_value['path'])})"
            return (
                f"{key}: the content of {_near(new_value['path'])} has changed{moved}: fingerprint "
                f"{old_value['sha256'][:12]} recorded, {new_value['sha256'][:12]} now"
            )
        return f"{key}: recorded {shown(old_value)}, now {shown(new_value)}"
    return None


def _located(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"path", "sha256"}


def _near(path: str) -> str:
    """An absolute path as a message shows it: relative to the working directory when under it."""
    return _relative_to(Path(path), Path.cwd().resolve()) or path


def _relative_to(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return None


# -- fingerprints ------------------------------------------------------------------------------------------
def fingerprint(path: Path) -> str:
    """The sha256 of the files a run reads at ``path`` (a file, or a directory: see the module's docstring)."""
    path = Path(path).resolve()
    if path.is_file():
        named = {path.name: path}
    elif any((path / name).is_file() for name in IMAGE_FIELDS):
        named = _data_files(path)
    else:
        named = dict(_tree(path))
    with _FileHashes() as hashes:
        hashes.announce(path, list(named.values()))
        lines = [f"{name}\t{hashes.sha256(file)}\n" for name, file in sorted(named.items())]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _tree(root: Path) -> Iterator[tuple[str, Path]]:
    for folder, folders, files in os.walk(root, followlinks=True):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            file = Path(folder) / name
            if not name.startswith(".") and file.is_file():
                yield file.relative_to(root).as_posix(), file


def _data_files(root: Path) -> dict[str, Path]:
    """A training-data directory's JSONL files and the images they name (inside it by their relative name,
    outside it by their absolute path): what training reads, and nothing a run writes beside it (caches)."""
    files = {}
    for data_file, fields in IMAGE_FIELDS.items():
        if not (root / data_file).is_file():
            continue
        files[data_file] = root / data_file
        for line in (root / data_file).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the data's own checks report it
            for field in fields if isinstance(row, dict) else ():
                if isinstance(row.get(field), str):
                    file = (root / row[field]).resolve()
                    if file.is_file():
                        files[_relative_to(file, root) or str(file)] = file
    return files


class _FileHashes:
    """Each file's sha256, cached by (absolute path, size, mtime); a damaged cache is rebuilt."""

    def __init__(self) -> None:
        self.path = cache_dir() / "fingerprints.sqlite"
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> _FileHashes:
        self._conn = open_cache_db(
            self.path,
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER "
            "NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);",
        )
        self._conn.isolation_level = None  # each hash committed as it is made
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()

    def _cached(self, file: Path) -> str | None:
        stat = file.stat()
        row = self._conn.execute(
            "SELECT sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ?",
            (str(file), stat.st_size, stat.st_mtime_ns),
        ).fetchone()
        return row[0] if row else None

    def announce(self, root: Path, files: list[Path]) -> None:
        todo = sum(file.stat().st_size for file in files if self._cached(file) is None)
        if todo > _ANNOUNCE_BYTES:
            say(f"   fingerprinting {root} ({todo / 1e9:.1f} GB; once: the hashes are cached by size and time)")

    def sha256(self, file: Path) -> str:
        cached = self._cached(file)
        if cached is not None:
            return cached
        stat = file.stat()
        with open(file, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if time.time_ns() - stat.st_mtime_ns < _RACY_NS:
            return digest  # changed within the clock's granularity, it could change again unseen: not cached
        with closing(self._conn.cursor()) as cursor:
            cursor.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (str(file), stat.st_size, stat.st_mtime_ns, digest)
            )
        return digest
