"""The toy world's suites: "toy-seen" (training combinations) and "toy-unseen" (held-out ones).

The suite files are generated from the grammar (``write_suite_files``) and shipped,
so a suite's content and version never change behind a stored result's back;
a test checks they still match the grammar.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.api import Prompt, Suite, register_suite
from toyworld.grammar import Scene, seen_scenes, unseen_scenes

_HERE = Path(__file__).parent
SUITE_FILES = {"toy-seen": _HERE / "toy_seen.jsonl", "toy-unseen": _HERE / "toy_unseen.jsonl"}


def scene_prompts(scenes: list[Scene]) -> list[Prompt]:
    return [Prompt(f"{s.colour}-{s.shape}-{s.position}", s.caption, s.shape) for s in scenes]


def write_suite_files() -> None:
    for name, scenes in (("toy-seen", seen_scenes()), ("toy-unseen", unseen_scenes())):
        lines = [
            json.dumps({"prompt_id": p.prompt_id, "prompt": p.prompt, "category": p.category})
            for p in scene_prompts(scenes)
        ]
        SUITE_FILES[name].write_text("\n".join(lines) + "\n", encoding="utf-8")


def _load(name: str, split: str, description: str) -> Suite:
    with open(SUITE_FILES[name], encoding="utf-8") as f:
        prompts = tuple(Prompt(**json.loads(line)) for line in f if line.strip())
    return Suite(name=name, split=split, prompts=prompts, description=description)


@register_suite("toy-seen")
def toy_seen() -> Suite:
    return _load("toy-seen", "seen", "toy world: colour x shape x position combinations present in training")


@register_suite("toy-unseen")
def toy_unseen() -> Suite:
    return _load("toy-unseen", "unseen", "toy world: held-out colour x shape x position combinations")


if __name__ == "__main__":
    write_suite_files()
