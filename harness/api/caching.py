"""Small caching helpers for methods: an in-RAM LRU, an atomic tensor file, and the reads that heal.

Every read of a cache entry is validated: an entry that cannot be read (a truncated copy, a bad
disk) is discarded and counted, and its reader computes it again.  ``damage_lines()`` turns the
counts into the one warning line per kind a stage prints when it ends.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.atomic import replacing

if TYPE_CHECKING:
    import torch

MEMORY_ITEMS = 4096  # in-RAM LRU in front of the disk cache


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file  # here: the cache's bookkeeping stays free of torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary))


class LRU(OrderedDict):
    """A bounded in-RAM cache (least recently used entries leave first)."""

    def get_item(self, key: str) -> Any | None:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        if len(self) > MEMORY_ITEMS:
            self.popitem(last=False)


# What this process discarded since the last ``damage_lines()``: kind of entry -> count.
_DAMAGED: Counter[str] = Counter()


def count_damaged(kind: str) -> None:
    """Record a damaged entry of ``kind`` (singular: "feature-cache entry") discarded to be rebuilt."""
    _DAMAGED[kind] += 1


def damage_lines() -> list[str]:
    """One warning line per kind of damaged entry rebuilt since the last call (and forget them)."""
    lines = [
        f"warning: 1 damaged {kind} was rebuilt" if n == 1 else f"warning: {n} damaged {_plural(kind)} were rebuilt"
        for kind, n in sorted(_DAMAGED.items())
    ]
    _DAMAGED.clear()
    return lines


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def safetensors_intact(path: Path) -> bool:
    """Whether ``path`` is a whole safetensors file: its header parses and its size is what the header says."""
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return False
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        return size == 8 + length + end
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return False


def load_cached(path: Path, kind: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a cache entry, or None when there is none; an unreadable entry is removed and
    counted under ``kind`` (its reader then computes and stores it again)."""
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        if safetensors_intact(path):
            return load_file(str(path))
    except Exception:  # safetensors' own error type, or an OSError of a bad disk
        pass
    path.unlink(missing_ok=True)
    count_damaged(kind)
    return None


def built_model_damage(directory: Path) -> str | None:
    """What is wrong with a built model's directory (None: every weights and config file reads whole)."""
    for file in sorted(directory.rglob("*")):
        if file.suffix == ".safetensors" and not safetensors_intact(file):
            return f"{file.relative_to(directory)} is not a whole safetensors file"
        if file.suffix == ".json":
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"{file.relative_to(directory)} does not parse"
    return None


def built_model_ready(directory: Path) -> bool:
    """Whether a built model (diffusers format) is complete and readable; a damaged one is removed,
    counted, and left for its builder to build again."""
    if not (directory / "model_index.json").exists():
        return False
    if built_model_damage(directory) is None:
        return True
    shutil.rmtree(directory, ignore_errors=True)
    count_damaged("built model")
    return False
