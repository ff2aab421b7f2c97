"""Recipes as data: a method's settings under a preset, one TOML file per method and preset, each value with its
source.

A preset names its recipe folders (``Preset.recipes``); ``FOLDER/<method>.toml`` holds the method's own settings
under it, one table per setting::

    [beta]
    value = 5000.0
    source = "launcher `--beta_dpo 5000`"

``source`` says where the value comes from: a file:line of the public code, a paper section, or ``"ours: why"``
where nothing is published (``harness presets --show`` marks those "ours, not published").  A setting without
``value`` is None (TOML has no null).  A file with no setting is an entry too: the preset's settings for every
method, chosen and kept.  ``evaluation.toml`` gives the sources of the preset's evaluation protocol
(``Preset.generation``, which its values must equal: tests/test_recipes.py).

The harness's own presets keep theirs in ``methods/recipes/<preset>/`` (the papers') and ``toyworld/recipes/<preset>/``
(the toy world's): a new preset is a folder of such files plus its ``Preset``.  A one-file method plugin may give its
entries inline instead (``Method.presets``, values without sources).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api.registry import METHODS, PRESETS
from harness.errors import HarnessError

OURS = "ours:"  # a source starting so: our choice where nothing is published, and why
EVALUATION = "evaluation"  # the file of a preset's evaluation protocol, beside its methods' recipes


@dataclass(frozen=True)
class Setting:
    """One value of a recipe and where it comes from (empty for a plugin's inline entry)."""

    value: Any
    source: str

    @property
    def ours(self) -> str | None:
        """Why we chose it, where nothing is published; None for a published value."""
        return self.source[len(OURS) :].strip() if self.source.startswith(OURS) else None


@functools.cache
def read_recipe(path: Path) -> dict[str, Setting]:
    """A recipe file's settings, in the file's order; a malformed file is one line naming it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"recipe {path}: cannot be read as TOML ({exc})") from None
    settings = {}
    for name, entry in data.items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, str) or not source.strip() or set(entry) - {"value", "source"}:
            raise HarnessError(
                f"recipe {path}: [{name}] must hold a `source` (file:line, paper section or "
                f'"ours: why") and optionally a `value` (none: None), not {entry!r}'
            )
        settings[name] = Setting(entry.get("value"), source)
    return settings


def recipe_file(folders: tuple[Path, ...], name: str) -> Path | None:
    """``<name>.toml`` in one of a preset's recipe folders; None where none has it."""
    found = [Path(folder) / f"{name}.toml" for folder in folders if (Path(folder) / f"{name}.toml").is_file()]
    if len(found) > 1:
        raise HarnessError(f"recipe {name!r} is in two of the preset's folders: {found[0]} and {found[1]}")
    return found[0] if found else None


def own_recipe(method: str, preset: str) -> dict[str, Setting] | None:
    """The method's own settings for ``preset``: its file in the preset's recipe folders, or a plugin's inline
    ``Method.presets`` entry; None where it has neither."""
    cls = METHODS.get(method)
    path = recipe_file(tuple(PRESETS.get(preset)().recipes), method)
    inline = cls.presets.get(preset)
    if path is not None and inline is not None:
        raise HarnessError(f"{method} has two entries for preset {preset!r}: {path} and its Method.presets")
    if path is None:
        return None if inline is None else {name: Setting(value, "") for name, value in inline.items()}
    settings = read_recipe(path)
    unknown = sorted(set(settings) - {field.name for field in dataclasses.fields(cls.Config)})
    if unknown:
        raise HarnessError(f"recipe {path}: {', '.join(unknown)} not a setting of {method}")
    return settings


def method_recipe(method: str, preset: str | None) -> tuple[str, dict[str, Setting]] | None:
    """The entry ``method`` trains with under ``preset`` and the preset it belongs to: its own, else that of the
    preset this one twins (``Preset.method_settings_from``); None when it has neither."""
    if preset is None:
        return None
    own = own_recipe(method, preset)
    if own is not None:
        return preset, own
    twin = PRESETS.get(preset)().method_settings_from
    twin_entry = own_recipe(method, twin) if twin else None
    return None if twin_entry is None else (twin, twin_entry)


def recipe_rows(folder: Path) -> list[tuple[str, str, str, Any, str]]:
    """(method or "evaluation", preset, setting, value, source) of every recipe under ``folder`` (its subfolders
    named by preset), presets and methods in name order, the evaluation protocol last, settings in file order."""
    rows = []
    for preset in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = sorted(preset.glob("*.toml"), key=lambda path: (path.stem == EVALUATION, path.stem))
        for path in files:
            rows.extend(
                (path.stem, preset.name, name, setting.value, setting.source)
                for name, setting in read_recipe(path).items()
            )
    return rows


def recipe_table(folder: Path) -> str:
    """The markdown table of docs/methods.md's "Published recipes": every recipe under ``folder``."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| method | preset | setting | value | source |", "|---|---|---|---|---|"]
    for method, preset, setting, value, source in recipe_rows(folder):
        shown = value if isinstance(value, str) else repr(value)
        lines.append(f"| {method} | {preset} | {setting} | {cell(shown)} | {cell(source)} |")
    return "\n".join(lines)
