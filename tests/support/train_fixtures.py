"""Helpers of the training tests: small data directories (real PNGs, the documented JSONL format) and
a single-thread fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_image(path: Path, rng: np.random.Generator, size: int = 32) -> None:
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def write_pair_dir(path: Path, n_pairs: int = 4, seed: int = 0, corrupt: int = 0) -> Path:
    """``pairs.jsonl`` with scores, plus one tie; the first ``corrupt`` pairs get an undecodable image_1."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pairs):
        for j in range(2):
            write_image(path / f"{i}_{j}.png", rng)
        if i < corrupt:
            (path / f"{i}_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        # Alternate which side wins so orientation is exercised; scores agree with the label.
        label = 1.0 if i % 2 == 0 else 0.0
        high, low = 0.24 - 0.01 * i, 0.16 + 0.005 * i
        rows.append(
            {
                "caption": f"a photo of thing {i}",
                "image_0": f"{i}_0.png",
                "image_1": f"{i}_1.png",
                "label_0": label,
                "score_0": high if label else low,
                "score_1": low if label else high,
            }
        )
    rows.append({"caption": "a tie", "image_0": "0_0.png", "image_1": "1_0.png", "label_0": 0.5})
    (path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_expert_dir(path: Path, n: int = 4, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write_image(path / f"e{i}.png", rng)
        rows.append({"caption": f"an expert picture {i}", "image": f"e{i}.png", "score": 1.0 - 0.1 * i})
    (path / "experts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Training tests run single-threaded: on a CPU shared with other jobs, OpenMP threads that outnumber
    the free cores spin-wait, measured here at 5x slower for these tests (300 s vs 52 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
