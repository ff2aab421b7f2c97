"""What a plugin and the harness share of their surroundings: the cache root, local paths versus hub ids, stdout."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from harness.errors import HarnessError


def cache_dir() -> Path:
    """The harness's cache root, where built artefacts (tokenizer, tiny and toy models, suites, scores) are kept
    across runs: ``$HARNESS_CACHE``, default ``~/.cache/harness``."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def looks_like_path(location: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local path."""
    return location.startswith(("/", ".", "~")) or location.count("/") > 1 or "\\" in location


def require_existing_path(location: str, what: str) -> None:
    """A location written as a local path must exist: it cannot mean a hub id instead."""
    if looks_like_path(location) and not Path(location).expanduser().exists():
        raise HarnessError(f"{what} {location!r} does not exist (a local path; a hub id has the form owner/name)")


def say(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` in one write (to stdout by default): the workers print to the same stdout, and unbuffered
    (PYTHONUNBUFFERED) ``print`` writes the text and the newline apart, so another process's line could land in
    between."""
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()
