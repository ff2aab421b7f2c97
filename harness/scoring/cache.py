"""Score cache: an image is scored once per scorer version, whatever path it lives at.

The key is the image's content hash (what ``harness.evaluation.sampling`` writes as ``sha256`` in the
manifest), the prompt it was scored against, and the scorer's name and version.  A regenerated
image has a new hash and is rescored; an unchanged one, even moved or copied, never is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from harness.api.scorer import Scorer
from harness.atomic import writing
from harness.cache_db import open_cache_db
from harness.errors import HarnessError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    image_sha256 TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    scorer TEXT NOT NULL,
    version TEXT NOT NULL,
    scale TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (image_sha256, prompt_sha256, scorer, version)
)
"""
# SQLite limits the number of bound parameters per statement; look keys up in chunks.
_LOOKUP_CHUNK = 500
SCORE_BATCH = 16  # images per scorer call (the Ray backend asks its scorer actors for the same batches)


def text_sha256(text: str) -> str:
    """A prompt's key in the score cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_sha256(image: Image.Image | str | Path) -> str:
    """Content hash: of the file's bytes for a path (as the manifest's ``sha256``), of the decoded
    pixels for an image made in memory."""
    if isinstance(image, (str, Path)):
        with open(image, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def open_image(image: Image.Image | str | Path) -> Image.Image:
    """An image (returned as is) or a file read as RGB; an unreadable file -> HarnessError."""
    if not isinstance(image, (str, Path)):
        return image
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read image {image}: {exc}") from None


class ScoreCache:
    """SQLite table of scores keyed by (image sha256, prompt, scorer name, version)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Several processes (ranks, a dashboard) may open it: WAL lets readers run beside a writer.
        self._db = open_cache_db(self.path, _SCHEMA, wal=True)

    def get(self, scorer: Scorer, keys: Sequence[str], prompts: Sequence[str]) -> dict[tuple[str, str], float]:
        """Cached values as {(image key, prompt): value} for the pairs that have one."""
        wanted = {(key, text_sha256(prompt)): (key, prompt) for key, prompt in zip(keys, prompts)}
        found: dict[tuple[str, str], float] = {}
        image_keys = sorted({key for key, _ in wanted})
        for start in range(0, len(image_keys), _LOOKUP_CHUNK):
            chunk = image_keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = self._db.execute(
                f"SELECT image_sha256, prompt_sha256, value FROM scores WHERE scorer = ? AND version = ? "
                f"AND image_sha256 IN ({marks})",
                [scorer.name, scorer.version, *chunk],
            )
            for image_key, prompt_key, value in cursor:
                if (image_key, prompt_key) in wanted:
                    found[wanted[image_key, prompt_key]] = value
        return found

    def put(self, scorer: Scorer, entries: Iterable[tuple[str, str, float]]) -> None:
        """Store (image key, prompt, value) triples in one transaction."""
        rows = [
            (key, text_sha256(prompt), scorer.name, scorer.version, scorer.scale, float(value))
            for key, prompt, value in entries
        ]
        with writing(self.path), self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def score_images(
    scorer: Scorer,
    images: Sequence[Image.Image | str | Path],
    prompts: Sequence[str],
    keys: Sequence[str] | None = None,
    cache: ScoreCache | None = None,
    batch_size: int = SCORE_BATCH,
) -> list[float]:
    """Score every (image, prompt), computing only what ``cache`` lacks; one float per image.

    ``images`` may be file paths, opened only when they must be scored (a run's images need
    not fit in memory).  ``keys`` are the images' content hashes (the manifest's ``sha256``);
    by default they are computed with ``image_sha256``.  Each computed batch is written to the cache at once, so an
    interrupted run keeps what it scored.
    """
    if len(images) != len(prompts) or (keys is not None and len(keys) != len(images)):
        raise HarnessError(
            f"score_images needs one prompt and key per image; got {len(images)} images, {len(prompts)} prompts"
            + ("" if keys is None else f", {len(keys)} keys")
        )
    if batch_size < 1:
        raise HarnessError(f"batch_size must be at least 1, got {batch_size}")
    if keys is None:
        keys = [image_sha256(image) for image in images]
    known = cache.get(scorer, keys, prompts) if cache is not None else {}
    # Each missing (image, prompt) once, even when the caller repeats it.
    todo: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(zip(keys, prompts)):
        if pair not in known and pair not in todo:
            todo[pair] = i
    pending = list(todo.items())
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        values = scorer.score([open_image(images[i]) for _, i in batch], [prompts[i] for _, i in batch])
        if len(values) != len(batch):
            raise RuntimeError(f"scorer {scorer.name} returned {len(values)} scores for {len(batch)} images")
        computed = {pair: float(value) for (pair, _), value in zip(batch, values)}
        if cache is not None:
            cache.put(scorer, [(key, prompt, value) for (key, prompt), value in computed.items()])
        known.update(computed)
    return [known[pair] for pair in zip(keys, prompts)]
