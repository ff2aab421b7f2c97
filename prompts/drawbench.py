"""DrawBench (Saharia et al., 2022): 200 prompts in 11 categories, an unseen suite.

Published as a CSV (a spreadsheet export) with the columns ``Prompts`` and
``Category``.  ``path=`` reads such a CSV; otherwise the hub data set ``hub_id``
(default ``sayakpaul/drawbench``, same columns) is read through ``datasets``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from harness.api import HarnessError, Prompt, Suite, cached_prompts, read_text_lines, register_suite

HUB_ID = "sayakpaul/drawbench"
PROMPT_COLUMN, CATEGORY_COLUMN = "Prompts", "Category"


@register_suite("drawbench")
def drawbench(path: str | Path | None = None, hub_id: str = HUB_ID) -> Suite:
    if path is not None:
        prompts = read_drawbench_csv(Path(path))
    else:
        prompts = cached_prompts("drawbench", hub_id, lambda: _from_hub(hub_id))
    return Suite("drawbench", "unseen", tuple(prompts), description="DrawBench (Imagen)")


def read_drawbench_csv(path: Path) -> list[Prompt]:
    text = "\n".join(line for _, line in read_text_lines(path))
    reader = csv.DictReader(io.StringIO(text))
    missing = {PROMPT_COLUMN, CATEGORY_COLUMN} - set(reader.fieldnames or [])
    if missing:
        raise HarnessError(
            f"{path}:1: missing column(s) {', '.join(sorted(missing))} (expected {PROMPT_COLUMN}, {CATEGORY_COLUMN})"
        )
    prompts = []
    try:
        for row in reader:
            prompt = (row[PROMPT_COLUMN] or "").strip()
            if not prompt:
                raise HarnessError(f"{path}:{reader.line_num}: empty prompt")
            prompts.append(Prompt(f"drawbench-{len(prompts):03d}", prompt, (row[CATEGORY_COLUMN] or "").strip()))
    except csv.Error as exc:
        raise HarnessError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return prompts


def _from_hub(hub_id: str) -> list[Prompt]:
    import datasets

    rows = datasets.load_dataset(hub_id, split="train")
    return [
        Prompt(f"drawbench-{i:03d}", row[PROMPT_COLUMN].strip(), row.get(CATEGORY_COLUMN) or "")
        for i, row in enumerate(rows)
    ]
