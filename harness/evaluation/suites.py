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
from harness.results.text_table import text_table

OWN_PROMPTS = "NAME=FILE[:seen|unseen]"  # a prompt file of one's own on the command line
_SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a folder's name under images/<run>/


def get_suite(name: str, **kwargs: object) -> Suite:
    """Load a registered suite (a loader registered with ``@register_suite``).

    ``NAME:PATH`` (e.g. ``hpdv2:/data/HPDv2``) passes ``path=PATH`` to the loader, so the
    command line can point any file-backed suite at a local copy.  ``NAME=FILE[:seen|unseen]``
    is a prompt file of one's own (the ``file`` suite's), named NAME, unseen unless ``:seen``.
    """
    own = own_prompts(name)
    if own is not None:
        return SUITES.get("file")(**own)
    if ":" in name and "path" not in kwargs:
        name, path = name.split(":", 1)
        kwargs["path"] = path
    loader = SUITES.get(name)
    if "path" in kwargs and "path" not in inspect.signature(loader).parameters:
        raise HarnessError(f"suite {name!r} does not read a file; use it without ':PATH'")
    return loader(**kwargs)


def own_prompts(spec: str) -> dict[str, str] | None:
    """The ``file`` suite's arguments (name, path, split) of ``NAME=FILE[:seen|unseen]``, None for another form."""
    name, sep, path = spec.partition("=")
    if not sep:
        return None
    head, colon, split = path.rpartition(":")
    path, split = (head, split) if colon and split in ("seen", "unseen") else (path, "unseen")
    if not _SUITE_NAME.fullmatch(name) or not path:
        raise HarnessError(
            f"suite {spec!r}: a prompt file of your own is {OWN_PROMPTS}, NAME letters, digits and . _ + -"
        )
    if name in SUITES.names():
        raise HarnessError(f"suite {spec!r}: {name!r} is a registered suite's name; give your prompts another")
    return {"name": name, "path": path, "split": split}


def check_suite_name(spec: str) -> None:
    """A suite as the command line gives it: a registered one (``NAME:PATH`` for its local copy) or a prompt
    file of one's own; an unknown name says how to give one's own prompts."""
    if own_prompts(spec) is not None:
        return
    name = spec.split(":", 1)[0]
    try:
        SUITES.get(name)
    except HarnessError as exc:
        raise HarnessError(f"{exc}; a prompt file of your own is --suites {name}=FILE[:seen|unseen]") from None


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


def show_suite(suite: Suite) -> str:
    """``harness suites --show NAME``: the suite's split, size, version and source, then every prompt."""
    source = suite.description or "no description"
    head = f"{suite.name}: {suite.split}, {len(suite)} prompts, v{suite.version}; {source}"
    rows = [["prompt_id", "category", "prompt"], *([p.prompt_id, p.category or "-", p.prompt] for p in suite.prompts)]
    return head + "\n\n" + text_table(rows)
