"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

A write that fails because the disk is full becomes one ``DiskFullError`` naming the filesystem
and what was being written: rerunning the same command after freeing space resumes the work.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HarnessError

# Less free space than this after a failed write means the write failed for want of space.
_NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(HarnessError):
    """No space left on the filesystem a file was being written to."""


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing_ancestor(path)
    while not os.path.ismount(path):
        path = path.parent
    return path


def _is_disk_full(exc: BaseException, path: Path | None) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # SQLite ("database or disk is full") and safetensors ("os error 28") say it only in words.
    text = str(exc)
    if "database or disk is full" in text or "No space left on device" in text:
        return True
    # torch.save reports a short write as a RuntimeError without an errno: ask the filesystem.
    if isinstance(exc, RuntimeError) and path is not None:
        stats = os.statvfs(_existing_ancestor(path))
        return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES
    return False


def disk_full_error(exc: BaseException, path: Path | str | None = None) -> DiskFullError | None:
    """The one-line error for ``exc`` if it means the disk is full (``path``: what was being written), else None."""
    if isinstance(exc, DiskFullError):
        return exc
    if path is None and isinstance(exc, OSError) and exc.filename:
        path = exc.filename
    path = None if path is None else Path(path)
    if not _is_disk_full(exc, path):
        return None
    if path is None:
        return DiskFullError("no space left on device; free space and rerun the same command")
    return DiskFullError(
        f"no space left on {_mount_point(path)} while writing {path}; free space and rerun the same command"
    )


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turns a failed write into ``DiskFullError`` naming ``path`` when the disk is full."""
    try:
        yield
    except Exception as exc:
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from None


@contextmanager
def staging(target: Path, temporary: Path) -> Iterator[None]:
    """A block that writes ``temporary`` on the way to ``target``: a failure removes it (files or a
    directory), and a full disk is reported as writing ``target``."""
    try:
        with writing(target):
            yield
    except BaseException:
        if Path(temporary).is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A private temporary path beside ``path``, moved onto it only if the block succeeds.

    The name carries the process id, so several processes (ranks) may write the same file at once.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with staging(path, temporary):
        yield temporary
        os.replace(temporary, path)


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
        with writing(directory):
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
