"""A checkpoint that torch.load(weights_only=True) refuses: the message says so, and suggests no unsafe load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.scoring._loading import load_state_dict


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_refused_pickle_says_what_is_wrong(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, tmp_path / "head.pt")
    with pytest.raises(HarnessError) as error:
        load_state_dict(tmp_path / "head.pt", what="aesthetic head")
    message = str(error.value)
    assert message.startswith(
        f"aesthetic head: cannot read weights from {tmp_path / 'head.pt'}: it holds pickled "
        "Python objects, not only tensors (Unsupported global: GLOBAL "
    )
    assert "\n" not in message and "weights_only=False" not in message and "trust the source" not in message
    assert not marker.exists()
