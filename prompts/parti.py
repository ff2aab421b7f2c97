"""PartiPrompts (Yu et al., 2022): 1632 prompts in 12 categories, an unseen suite.

The published TSV has the columns Prompt, Category, Challenge, Note; a copy ships
here (``PartiPrompts.tsv``, Apache-2.0, see ``PartiPrompts.LICENSE``).  Fields are
split on tabs only: prompts contain double quotes that are not CSV quoting.
"""

from __future__ import annotations

from pathlib import Path

from harness.api import HarnessError, Prompt, Suite, read_text_lines, register_suite

DEFAULT_PATH = Path(__file__).parent / "PartiPrompts.tsv"
COLUMNS = ["Prompt", "Category", "Challenge", "Note"]


@register_suite("parti")
def parti(path: str | Path = DEFAULT_PATH) -> Suite:
    lines = read_text_lines(path)
    if not lines or lines[0][1].rstrip("\r").split("\t") != COLUMNS:
        raise HarnessError(f"{path}:1: expected the tab-separated header {' '.join(COLUMNS)}")
    prompts = []
    for line_number, line in lines[1:]:
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(COLUMNS):
            raise HarnessError(
                f"{path}:{line_number}: expected {len(COLUMNS)} tab-separated fields, found {len(fields)}"
            )
        prompt, category = fields[0].strip(), fields[1].strip()
        if not prompt:
            raise HarnessError(f"{path}:{line_number}: empty prompt")
        prompts.append(Prompt(f"parti-{len(prompts):04d}", prompt, category))
    return Suite("parti", "unseen", tuple(prompts), description="PartiPrompts (Yu et al. 2022)")
