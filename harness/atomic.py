"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A private temporary path beside ``path``, moved onto it only if the block succeeds.

    The name carries the process id, so several processes (ranks) may write the same file at once.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_leftovers(directory: Path) -> None:
    """Delete the temporary files ``replacing`` left in ``directory`` when their writers were killed.

    Only for a directory no one is writing to any more: a live writer's temporary file goes too.
    """
    for leftover in Path(directory).glob(".*.*.tmp"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


@contextmanager
def publishing(directory: Path) -> Iterator[Path]:
    """A private temporary directory beside ``directory``, renamed onto it if the block succeeds.

    For content-keyed caches, which several processes may build at once: the first to finish
    publishes, the others' identical copies are discarded.  A failed block leaves nothing behind.
    """
    directory = Path(directory)
    temporary = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        try:
            temporary.rename(directory)
        except OSError:
            if not directory.exists():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with replacing(path) as temporary:
        temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
