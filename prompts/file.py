"""A user's own prompt file as a suite: ``--suites NAME=FILE[:seen|unseen]`` (or ``file:PATH``).

``PATH`` is JSONL (``{"prompt_id", "prompt", "category"?}`` per line, as the shipped
suites) or plain text (one prompt per line).  The suite is named NAME (``file:PATH``: after
the file); it is ``unseen`` unless ``split="seen"`` (e.g. for captions held out of the
training data).
"""

from __future__ import annotations

from pathlib import Path

from harness.api import HarnessError, Prompt, Suite, read_prompts_jsonl, read_text_lines, register_suite


@register_suite("file")
def prompt_file(path: str | Path | None = None, split: str = "unseen", name: str | None = None) -> Suite:
    if path is None:
        raise HarnessError("the file suite needs a path: --suite file:PATH (JSONL rows or one prompt per line)")
    if split not in ("seen", "unseen"):
        raise HarnessError(f"split must be 'seen' or 'unseen', got {split!r}")
    path = Path(path)
    if path.suffix == ".jsonl":
        prompts = read_prompts_jsonl(path)
    else:
        texts = [line.strip() for _, line in read_text_lines(path) if line.strip()]
        prompts = tuple(Prompt(f"{name or path.stem}-{i:04d}", text) for i, text in enumerate(texts))
    if not prompts:
        raise HarnessError(f"{path}: no prompts")
    return Suite(name or path.stem, split, prompts, description=f"prompts of {path}")
