"""Offline stand-ins for the downloads of the published recipes (presets ``sd15`` / ``sdxl``).

Nothing can be downloaded where the tests run, so these builders write small, seeded copies of
the public data in the layouts the hub serves them in; the harness then reads them through its
real loaders, exactly as it would read a downloaded copy:

- ``write_pickapic_v2``: Pick-a-Pic v2 (``yuvalkirstain/pickapic_v2``): training pairs and the
  ``test_unique`` captions of the ``pickapic-test`` suite;
- ``write_hpdv2_benchmark``: the HPDv2 benchmark prompts (``zhwang/HPDv2``) of the ``hpdv2`` suite.

Tiny SD1.5- / SDXL-shaped pipelines are in ``harness.testing.tiny_models`` (``TINY_SHAPES``) and scorer weights
in the official file layouts in ``harness.testing.scorer_weights`` (``save_scorer_set``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------- Pick-a-Pic v2

# The columns and Arrow types of the hub copy, in its order (its dataset card lists them under
# ``dataset_info.features``).  ``__index_level_0__`` is the pandas index the published shards
# carry as an ordinary column.
PICKAPIC_COLUMNS = {
    "are_different": "bool",
    "best_image_uid": "string",
    "caption": "string",
    "created_at": "timestamp[ns]",
    "has_label": "bool",
    "image_0_uid": "string",
    "image_0_url": "string",
    "image_1_uid": "string",
    "image_1_url": "string",
    "jpg_0": "binary",
    "jpg_1": "binary",
    "label_0": "float64",
    "label_1": "float64",
    "model_0": "string",
    "model_1": "string",
    "ranking_id": "int64",
    "user_id": "int64",
    "num_example_per_prompt": "int64",
    "__index_level_0__": "int64",
}

# Sizes the Pick-a-Pic web app produced (square and portrait/landscape SD / SDXL outputs) and a
# few small ones, so nothing downstream can assume square or 512-pixel images.
IMAGE_SIZES = ((512, 512), (768, 512), (512, 640), (512, 768), (640, 512), (160, 128), (96, 96))
MODELS = (
    "stabilityai/stable-diffusion-2-1",
    "dreamlike-art/dreamlike-photoreal-2.0",
    "stabilityai/stable-diffusion-xl-beta",
    "CompVis/stable-diffusion-v1-4",
)
_SUBJECTS = (
    "a corgi",
    "an astronaut",
    "a lighthouse",
    "a red fox",
    "a teapot",
    "a dragon",
    "an old sailor",
    "a cyberpunk city",
    "a bowl of ramen",
    "a castle",
    "a robot",
    "a hummingbird",
)
_SCENES = ("in the snow", "on the moon", "at sunset", "in a forest", "underwater", "in a busy market")
_STYLES = (
    "oil painting",
    "studio photo, 85mm",
    "anime style",
    "watercolor",
    "3d render, octane",
    "pencil sketch, highly detailed",
)


def pickapic_captions(rng: np.random.Generator) -> list[str]:
    """Every caption the fixture can use (432), in a seeded order; splits take disjoint slices."""
    captions = [f"{s} {where}, {style}" for s, where, style in itertools.product(_SUBJECTS, _SCENES, _STYLES)]
    return [captions[i] for i in rng.permutation(len(captions))]


@dataclass(frozen=True)
class _Image:
    uid: str
    jpeg: bytes
    model: str


def _make_image(rng: np.random.Generator) -> _Image:
    """A small JPEG of a seeded size: a colour gradient and an ellipse (smooth, so a few kB)."""
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).astype(np.uint8).repeat(width, axis=1)
    image = Image.fromarray(pixels)
    x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ImageDraw.Draw(image).ellipse((x, y, x + width // 3, y + height // 3), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=40)
    return _Image(str(uuid.UUID(bytes=rng.bytes(16), version=4)), buffer.getvalue(), MODELS[rng.integers(len(MODELS))])


class _Rankings:
    """Rows as the web app records them: a user writes a caption and compares two images; the
    preferred one stays on screen against a new image (so an image appears in several rows of
    its caption); a tie (label 0.5) replaces both."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[dict] = []
        self.clock = datetime(2023, 4, 1, 9, 0, 0)
        self.ranking_id = int(rng.integers(10_000, 20_000))

    def new_user(self) -> int:
        return int(self.rng.integers(1, 400_000))

    def session(
        self, caption: str, labels: list[float], first: _Image | None = None, user_id: int | None = None
    ) -> _Image | None:
        """One user's comparisons for ``caption`` with the given ``label_0``s, starting against
        ``first`` if given; returns the image left on screen."""
        user_id = self.new_user() if user_id is None else user_id
        kept = first
        for label_0 in labels:
            fresh = _make_image(self.rng)
            if kept is None:
                pair = (_make_image(self.rng), fresh)
            else:  # the kept image may be shown on either side
                pair = (kept, fresh) if self.rng.random() < 0.5 else (fresh, kept)
            self.record(caption, pair, label_0, user_id)
            kept = None if label_0 == 0.5 else pair[0 if label_0 == 1.0 else 1]
        return kept

    def record(self, caption: str, pair: tuple[_Image, _Image], label_0: float, user_id: int) -> None:
        self.clock += timedelta(seconds=int(self.rng.integers(3, 90)))
        self.ranking_id += 1
        image_0, image_1 = pair
        self.rows.append(
            {
                "are_different": image_0.uid != image_1.uid,
                "best_image_uid": {1.0: image_0.uid, 0.0: image_1.uid}.get(label_0, ""),
                "caption": caption,
                "created_at": self.clock,
                "has_label": True,
                "image_0_uid": image_0.uid,
                "image_0_url": f"https://images.pickapic.io/{image_0.uid}.png",
                "image_1_uid": image_1.uid,
                "image_1_url": f"https://images.pickapic.io/{image_1.uid}.png",
                "jpg_0": image_0.jpeg,
                "jpg_1": image_1.jpeg,
                "label_0": label_0,
                "label_1": 1.0 - label_0,
                "model_0": image_0.model,
                "model_1": image_1.model,
                "ranking_id": self.ranking_id,
                "user_id": user_id,
            }
        )

    def random_labels(self, n: int) -> list[float]:
        return [float(x) for x in self.rng.choice([1.0, 0.0, 0.5], size=n, p=[0.45, 0.4, 0.15])]


def _train_rows(rng: np.random.Generator, captions: list[str], n_rows: int) -> list[dict]:
    """Training rows; the first five are scripted so every property the harness must handle is
    present however few rows are asked for: image_0 preferred, image_1 preferred, a tie, the same
    image in several rows of one caption, and that image again under another caption."""
    if n_rows < 5:
        raise ValueError(f"n_train must be at least 5, not {n_rows}")
    rankings = _Rankings(rng)
    rankings.session(captions[0], [1.0])
    # Three comparisons on one caption, each winner staying on screen for the next one; then the
    # same user edits the prompt and the picture is judged again under the new caption.
    user = rankings.new_user()
    kept = rankings.session(captions[1], [1.0, 0.0], user_id=user)
    rankings.session(captions[1], [0.5], first=kept, user_id=user)
    rankings.session(captions[2], [1.0], first=kept, user_id=user)
    while len(rankings.rows) < n_rows:  # fewer captions than rows: captions repeat across sessions
        length = min(int(rng.integers(1, 4)), n_rows - len(rankings.rows))
        rankings.session(captions[rng.integers(len(captions))], rankings.random_labels(length))
    return rankings.rows


def _unique_rows(rng: np.random.Generator, captions: list[str]) -> list[dict]:
    """One comparison per caption, as in the ``*_unique`` splits."""
    rankings = _Rankings(rng)
    for caption, label in zip(captions, rankings.random_labels(len(captions))):
        rankings.session(caption, [label])
    return rankings.rows


def _finish(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    """Add the per-caption row count and the original frame's (gapped, increasing) row index."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["caption"]] = counts.get(row["caption"], 0) + 1
    index = np.sort(rng.choice(len(rows) * 10, size=len(rows), replace=False))
    return [
        {**row, "num_example_per_prompt": counts[row["caption"]], "__index_level_0__": int(i)}
        for row, i in zip(rows, index)
    ]


def write_pickapic_v2(
    root: Path, *, n_train: int = 24, n_test_unique: int = 6, seed: int = 0, train_shards: int = 2, n_other: int = 4
) -> Path:
    """Write a small Pick-a-Pic v2 in the hub repository's layout under ``root``; returns ``root``.

    Layout, as the dataset repo ``yuvalkirstain/pickapic_v2`` stores it (and as
    ``huggingface-cli download yuvalkirstain/pickapic_v2 --repo-type dataset --local-dir ROOT``
    leaves it)::

        ROOT/README.md                                            card with dataset_info (features, split sizes)
        ROOT/data/train-00000-of-0000N-<16 hex>.parquet ...      ``n_train`` rows over ``train_shards`` shards
        ROOT/data/validation-00000-of-00001-<16 hex>.parquet     ``n_other`` rows
        ROOT/data/test-00000-of-00001-<16 hex>.parquet           ``n_other`` rows
        ROOT/data/validation_unique-00000-of-00001-<hex>.parquet ``n_other`` rows, one per caption
        ROOT/data/test_unique-00000-of-00001-<16 hex>.parquet    ``n_test_unique`` rows, one per caption

    Every shard has the published columns and Arrow types (``PICKAPIC_COLUMNS``, Hugging Face
    features in the schema metadata, as ``datasets`` writes them).  ``jpg_0`` / ``jpg_1`` are
    JPEG bytes of varied, mostly non-square sizes (``IMAGE_SIZES``); ``label_0`` is 1 (image_0
    preferred), 0 (image_1 preferred) or 0.5 (tie, ``best_image_uid`` empty); an image (same uid,
    same bytes) appears in several rows of its caption and once under another caption; captions
    repeat across rows; the splits' captions are disjoint.

    How the harness reads it:
    - training pairs: ``harness.data.readers.load_pairs(ROOT)`` (``--data ROOT``), through
      ``datasets.load_dataset(ROOT, split="train")``;
    - the ``pickapic-test`` suite (its test_unique captions): ``--suites pickapic-test:ROOT``
      (also ``ROOT/data``, or the shard itself, ``ROOT/data/test_unique-00000-of-00001-<hex>.parquet``,
      which ``pickapic_test_file`` finds).

    Deterministic: the same arguments write the same bytes.
    """
    import datasets

    rng = np.random.default_rng(seed)
    captions = iter(pickapic_captions(rng))
    n_pool = max(3, n_train // 3)
    if n_pool + 4 * n_other + n_test_unique > len(_SUBJECTS) * len(_SCENES) * len(_STYLES):
        raise ValueError("not enough distinct captions for these split sizes")

    def take(n: int) -> list[str]:  # consecutive slices: the splits' captions are disjoint
        return list(itertools.islice(captions, n))

    splits = {
        "train": _train_rows(rng, take(n_pool), n_train),
        "validation": _unique_rows(rng, take(n_other)),
        "test": _unique_rows(rng, take(n_other)),
        "validation_unique": _unique_rows(rng, take(n_other)),
        "test_unique": _unique_rows(rng, take(n_test_unique)),
    }
    features = datasets.Features({name: datasets.Value(dtype) for name, dtype in PICKAPIC_COLUMNS.items()})
    (root / "data").mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, rows in splits.items():
        rows = _finish(rows, rng)
        table = datasets.Dataset.from_list(rows, features=features)
        shards = train_shards if split == "train" else 1
        for index in range(shards):
            digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).hexdigest()[:16]
            shard = table.shard(shards, index, contiguous=True)
            shard.to_parquet(str(root / "data" / f"{split}-{index:05d}-of-{shards:05d}-{digest}.parquet"))
        sizes[split] = (len(table), table.data.nbytes)
    (root / "README.md").write_text(_pickapic_card(sizes), encoding="utf-8")
    return root


def pickapic_test_file(root: Path) -> Path:
    """The test_unique shard of a Pick-a-Pic v2 copy (``pickapic-test:PATH`` takes it, or ``root``)."""
    (path,) = (root / "data").glob("test_unique-00000-of-00001-*.parquet")
    return path


def _pickapic_card(sizes: dict[str, tuple[int, int]]) -> str:
    features = "".join(f"  - name: {name}\n    dtype: {dtype}\n" for name, dtype in PICKAPIC_COLUMNS.items())
    splits = "".join(
        f"  - name: {split}\n    num_bytes: {nbytes}\n    num_examples: {n}\n" for split, (n, nbytes) in sizes.items()
    )
    total = sum(nbytes for _, nbytes in sizes.values())
    return (
        "---\ndataset_info:\n  features:\n"
        + features
        + "  splits:\n"
        + splits
        + f"  download_size: {total}\n  dataset_size: {total}\n---\n"
        "# Pick-a-Pic v2 (offline test copy)\n\n"
        "Seeded synthetic rows in the layout and schema of the hub dataset yuvalkirstain/pickapic_v2; "
        "the images are generated shapes, the captions templates.  Written by tests/support/offline_world.py.\n"
    )


# --------------------------------------------------------------------------- HPDv2 benchmark

HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")


def write_hpdv2_benchmark(root: Path, *, per_style: int = 3, seed: int = 0) -> Path:
    """Write the HPDv2 benchmark prompts as the dataset repo ``zhwang/HPDv2`` stores them; returns ``root``.

    Layout: ``ROOT/benchmark/<style>.json`` for the styles anime, concept-art, paintings, photo,
    each a JSON list of prompt strings (800 per style in the real files, ``per_style`` here).
    The ``hpdv2`` suite reads it with ``--suites hpdv2:ROOT`` (or ``hpdv2:ROOT/benchmark``).
    """
    rng = np.random.default_rng(seed)
    subjects = [f"{s} {where}" for s, where in itertools.product(_SUBJECTS, _SCENES)]
    if per_style * len(HPDV2_STYLES) > len(subjects):
        raise ValueError(f"at most {len(subjects) // len(HPDV2_STYLES)} prompts per style")
    order = rng.permutation(len(subjects))
    (root / "benchmark").mkdir(parents=True, exist_ok=True)
    for k, style in enumerate(HPDV2_STYLES):
        chosen = [subjects[i] for i in order[k * per_style : (k + 1) * per_style]]
        prompts = [f"{text}, {style.replace('-', ' ')}" for text in chosen]
        (root / "benchmark" / f"{style}.json").write_text(json.dumps(prompts), encoding="utf-8")
    return root
