"""Prompt suites: a named, versioned list of (prompt_id, prompt, category).

The contract (``Prompt``, ``Suite``, and helpers for loaders) is ``harness.api.suite``;
loaders live in ``prompts/`` (one module per suite, ``@register_suite``) and in worlds.
Here: loading a registered suite by name, the overlap check between a suite and the
training captions, and the listing behind ``harness suites``.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.api.registry import SUITES
from harness.api.suite import _DOWNLOADS_ALLOWED, Suite
from harness.errors import HarnessError


def get_suite(name: str, **kwargs: object) -> Suite:
    """Load a registered suite (a loader registered with ``@register_suite``).

    ``NAME:PATH`` (e.g. ``hpdv2:/data/HPDv2``) passes ``path=PATH`` to the loader, so the
    command line can point any file-backed suite at a local copy.
    """
    if ":" in name and "path" not in kwargs:
        name, path = name.split(":", 1)
        kwargs["path"] = path
    loader = SUITES.get(name)
    if "path" in kwargs and "path" not in inspect.signature(loader).parameters:
        raise HarnessError(f"suite {name!r} does not read a file; use it without ':PATH'")
    return loader(**kwargs)


# --- Unseen must be unseen -------------------------------------------------------------

_NOT_WORD = re.compile(r"[^\w\s]|_")


def normalize_caption(text: str) -> str:
    """Case-folded, punctuation and symbols as spaces, whitespace collapsed: "A Cat, sleeping." -> "a cat sleeping"."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def caption_overlap(suite: Suite, captions: Iterable[str]) -> int:
    """How many of the suite's prompts appear among ``captions`` (exact match after ``normalize_caption``)."""
    seen = {normalize_caption(c) for c in captions}
    return sum(normalize_caption(p.prompt) in seen for p in suite.prompts)


# --- Listing --------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteInfo:
    """One row of ``harness suites``; ``error`` says why a suite could not be loaded here."""

    name: str
    split: str = ""
    n_prompts: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    version: str = ""
    description: str = ""
    error: str | None = None

    def cells(self) -> list[str]:
        """Its row of ``harness suites``: name, split, prompt count, version, description, categories."""
        if self.error is not None:
            return [self.name, f"unavailable: {self.error}"]
        categories = ", ".join(f"{c} {n}" for c, n in self.categories.items() if c) or "-"
        return [self.name, self.split, str(self.n_prompts), f"v{self.version}", self.description, categories]


def list_suites() -> list[SuiteInfo]:
    """Every registered suite with its prompt count and categories, without downloading anything."""
    infos = []
    token = _DOWNLOADS_ALLOWED.set(False)
    try:
        for name, loader in SUITES.items():
            try:
                suite = loader()
            except HarnessError as exc:
                infos.append(SuiteInfo(name=name, error=str(exc)))
                continue
            categories = dict(sorted(Counter(p.category for p in suite.prompts).items()))
            infos.append(SuiteInfo(name, suite.split, len(suite), categories, suite.version, suite.description))
    finally:
        _DOWNLOADS_ALLOWED.reset(token)
    return infos
