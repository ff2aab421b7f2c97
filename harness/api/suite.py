"""The prompt-suite contract: a named, versioned list of (prompt_id, prompt, category), and helpers for loaders.

A loader is a function registered with ``@register_suite(name)`` returning a ``Suite``;
file-backed ones take ``path=`` (``--suite NAME:PATH`` on the command line), hub-backed
ones fetch once through ``cached_prompts`` and read the cache under ``HARNESS_CACHE/suites/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from harness.api.environment import cache_dir, say
from harness.atomic import replacing, write_jsonl
from harness.errors import HarnessError


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    prompt: str
    category: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    split: Literal["seen", "unseen"]
    prompts: tuple[Prompt, ...]
    description: str = ""
    version: str = field(init=False)

    def __post_init__(self) -> None:
        payload = json.dumps([[p.prompt_id, p.prompt, p.category] for p in self.prompts], ensure_ascii=False)
        object.__setattr__(self, "version", hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16])

    def __len__(self) -> int:
        return len(self.prompts)


# --- Helpers for loaders (prompts/) ---------------------------------------------------

# ``list_suites`` must not pull data sets from a hub just to count prompts.
_DOWNLOADS_ALLOWED: ContextVar[bool] = ContextVar("suite_downloads_allowed", default=True)


def cached_prompts(
    suite: str, hub_id: str, download: Callable[[], list[Prompt]], variant: str = ""
) -> tuple[Prompt, ...]:
    """Prompts of ``suite`` fetched from the hub's ``hub_id`` once, then read from
    ``HARNESS_CACHE/suites/<suite>-<hub_id>[-<variant>].jsonl``.

    ``download`` runs only when the cache file is missing or damaged (it does not match the
    ``.sha256`` written beside it, or does not parse: discarded, with a warning line); its failures
    (offline, no such repository) become one-line ``HarnessError``s that say how to load a local copy.
    """
    key = "-".join(part for part in (suite, hub_id, variant) if part)
    path = cache_dir() / "suites" / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".jsonl")
    digest = path.with_name(path.name + ".sha256")
    if path.exists():
        try:
            if not cached_copy_intact(path):
                raise HarnessError("its content is not what was downloaded")
            return read_prompts_jsonl(path)
        except HarnessError as exc:
            path.unlink(missing_ok=True)
            digest.unlink(missing_ok=True)
            say(f"   warning: the cached prompts of suite {suite} ({path}) were damaged ({exc}); fetched again")
    local_copy = f"give a local copy as --suite {suite}:PATH (path=PATH)"
    if not _DOWNLOADS_ALLOWED.get():
        raise HarnessError(f"not downloaded yet: fetched from the hub's {hub_id} on first use, or {local_copy}")
    try:
        prompts = download()
    except HarnessError:
        raise
    except Exception as exc:  # hub and datasets errors have no common base class
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarnessError(
            f"cannot fetch {hub_id} from the Hugging Face hub ({type(exc).__name__}: {first_line}); {local_copy}"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, (asdict(p) for p in prompts))
    with replacing(digest) as temporary:
        temporary.write_text(_file_sha256(path) + "\n")
    return tuple(prompts)


def cached_copy_intact(path: Path) -> bool:
    """Whether a suite's cached copy still has the content its ``.sha256`` recorded (no record: nothing to check)."""
    digest = path.with_name(path.name + ".sha256")
    return not digest.exists() or digest.read_text().strip() == _file_sha256(path)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_prompts_jsonl(path: str | Path) -> tuple[Prompt, ...]:
    """Prompts from JSONL lines ``{"prompt_id", "prompt", "category"?}``; errors name file and line."""
    prompts = []
    for line_number, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(Prompt(str(row["prompt_id"]), _nonempty(row["prompt"]), str(row.get("category", ""))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise HarnessError(f"{path}:{line_number}: not a prompt row ({type(exc).__name__}: {exc})") from None
    return tuple(prompts)


def read_text_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, line without newline) pairs of a UTF-8 text file; errors name file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"cannot read suite file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_number = data[: exc.start].count(b"\n") + 1
        raise HarnessError(f"{path}:{line_number}: not UTF-8 text") from None
    return list(enumerate(text.splitlines(), start=1))


def _nonempty(prompt: object) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty or non-text prompt")
    return prompt
