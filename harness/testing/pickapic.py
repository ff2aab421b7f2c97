"""A synthetic Pick-a-Pic v2 split in the hub's layout (``data/train-XXXXX-of-YYYYY.parquet``, its columns), for
tests and ``bench/data_loader.py``: the real dataset cannot be downloaded here.

Every image is a distinct small JPEG (a flat colour with a rectangle of another, both drawn from the row's
index), so content keys never collide; one row in ``tie_every`` is a tie (``label_0`` 0.5), as in the real set.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ROWS_PER_SHARD = 20_000  # the hub's shards hold ~1,000-row groups of 500 MB; small shards keep writing cheap


def _jpeg(rng: np.random.Generator, size: int) -> bytes:
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
    image.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (x0, y0, x0 + size // 2, y0 + size // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_pickapic(directory: Path, pairs: int, *, image_size: int = 32, tie_every: int = 10, seed: int = 0) -> Path:
    """Write ``pairs`` rows (ties included) as ``directory/data/train-*.parquet``; returns ``directory``, which
    ``harness.data.readers.load_pairs`` reads as a downloaded dataset folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    shards = max(1, -(-pairs // ROWS_PER_SHARD))
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        rows = range(shard * ROWS_PER_SHARD, min(pairs, (shard + 1) * ROWS_PER_SHARD))
        label_0 = [0.5 if i % tie_every == tie_every - 1 else float(i % 2) for i in rows]
        columns = {
            "are_different": [True] * len(rows),
            "best_image_uid": [f"{i:08d}-{0 if label == 1 else 1}" for i, label in zip(rows, label_0)],
            "caption": [f"a picture number {i}" for i in rows],
            "created_at": pa.array([0] * len(rows), pa.timestamp("ns")),
            "has_label": [True] * len(rows),
            "image_0_uid": [f"{i:08d}-0" for i in rows],
            "image_0_url": [""] * len(rows),
            "image_1_uid": [f"{i:08d}-1" for i in rows],
            "image_1_url": [""] * len(rows),
            "jpg_0": pa.array([_jpeg(rng, image_size) for _ in rows], pa.binary()),
            "jpg_1": pa.array([_jpeg(rng, image_size) for _ in rows], pa.binary()),
            "label_0": label_0,
            "label_1": [1.0 - label for label in label_0],
            "model_0": ["synthetic"] * len(rows),
            "model_1": ["synthetic"] * len(rows),
            "ranking_id": list(rows),
            "user_id": [0] * len(rows),
            "num_example_per_prompt": [1] * len(rows),
        }
        pq.write_table(pa.table(columns), directory / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet")
    return directory
