"""Small caching helpers for methods: an in-RAM LRU and an atomic tensor file."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from harness.atomic import replacing

MEMORY_ITEMS = 4096  # in-RAM LRU in front of the disk cache


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
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
