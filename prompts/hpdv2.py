"""HPDv2 benchmark prompts (Wu et al., 2023): 4 styles x 800 prompts, an unseen suite.

Published as one JSON list of prompt strings per style, ``benchmark/<style>.json`` in
the hub dataset ``zhwang/HPDv2``.  ``path=`` takes a local directory holding those
files (directly or under ``benchmark/``).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.api import HarnessError, Prompt, Suite, cached_prompts, read_text_lines, register_suite

STYLES = ("anime", "concept-art", "paintings", "photo")
HUB_ID = "zhwang/HPDv2"


@register_suite("hpdv2")
def hpdv2(path: str | Path | None = None, hub_id: str = HUB_ID) -> Suite:
    if path is not None:
        prompts = _read_styles(lambda style: _local_file(Path(path), style))
    else:
        prompts = cached_prompts("hpdv2", hub_id, lambda: _read_styles(lambda style: _hub_file(hub_id, style)))
    return Suite("hpdv2", "unseen", tuple(prompts), description="HPDv2 benchmark: anime, concept-art, paintings, photo")


def _read_styles(locate) -> list[Prompt]:
    return [
        Prompt(f"hpdv2-{style}-{i:03d}", text, style)
        for style in STYLES
        for i, text in enumerate(read_prompt_list(locate(style)))
    ]


def read_prompt_list(path: Path) -> list[str]:
    """A JSON list of non-empty strings; errors name the file and line."""
    text = "\n".join(line for _, line in read_text_lines(path))
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(entries, list):
        raise HarnessError(f"{path}:1: expected a JSON list of prompts")
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            raise HarnessError(f"{path}:{_line_of_entry(text, i)}: entry {i} is not a non-empty string")
    return entries


def _line_of_entry(text: str, index: int) -> int:
    """Line where the ``index``-th top-level element of a JSON list starts (for error messages)."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    for _ in range(index + 1):
        while text[position] in " \t\r\n,":
            position += 1
        start = position
        _, position = decoder.raw_decode(text, position)
    return text.count("\n", 0, start) + 1


def _local_file(root: Path, style: str) -> Path:
    for candidate in (root / f"{style}.json", root / "benchmark" / f"{style}.json"):
        if candidate.is_file():
            return candidate
    raise HarnessError(f"HPDv2 benchmark file {style}.json not found in {root} (nor in {root / 'benchmark'})")


def _hub_file(hub_id: str, style: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(hub_id, f"benchmark/{style}.json", repo_type="dataset"))
