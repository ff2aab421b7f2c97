"""Data steps on real preference data: score every training image with a reward, pick DRO's experts.

Both published recipes that use a reward on Pick-a-Pic v2 start the same way, by scoring each
image of the train split against its caption:
- Diffusion-DRO's experts are the top-K (500) unique image-caption pairs by that score (HPSv2
  in the paper's main setting, PickScore in the other);
- SmPO smooths its labels with PickScore's raw cosine of both images of every pair.
So there is one step, ``score_training_images``, filling a ``ScoreTable`` keyed by (image uid,
caption) under ``$HARNESS_CACHE/data-scores/``.  It resumes: each batch is committed as it is
scored, and a rerun reads images only for the rows that still lack a score (uids and captions
are read as columns, without the JPEG bytes).  ``select_experts`` then writes the top K as a
directory of ``experts.jsonl`` + images that the trainer reads like any other, with
``experts.json`` saying which scorer ranked them.  Ties and all rows count: the public code
scores every image of the split, not only those of decisive pairs.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from harness.api.data import ImageSource
from harness.atomic import publishing, write_jsonl
from harness.data.readers import ImageLoader, _read_jsonl, load_hf_dataset
from harness.data.score_table import ScoreTable, dataset_key, table_path
from harness.errors import HarnessError
from harness.progress import progress_bar
from harness.scoring import LazyScorer

EXPERTS_META = "experts.json"


@dataclass(frozen=True)
class PairRows:
    """The rows of a pair data set, read so that uids and captions never load an image.

    A local ``pairs.jsonl`` directory (uid = the image's path in the file) or Pick-a-Pic v2 through
    ``datasets`` (uid = ``image_0_uid`` / ``image_1_uid``).
    """

    source: str
    split: str
    keys: list[tuple[str, str, str]]  # (caption, uid of image 0, uid of image 1) per row
    dataset: Any = None  # the datasets split, for Pick-a-Pic

    @classmethod
    def open(cls, source: str | Path, split: str = "train") -> PairRows:
        path = Path(source)
        if (path / "pairs.jsonl").exists():
            rows = _read_jsonl(path / "pairs.jsonl")
            return cls(str(source), split, [(row["caption"], row["image_0"], row["image_1"]) for row in rows])
        dataset = load_hf_dataset(str(source), split)
        missing = {"caption", "image_0_uid", "image_1_uid", "jpg_0", "jpg_1"} - set(dataset.column_names)
        if missing:
            raise HarnessError(
                f"{source} lacks the Pick-a-Pic column(s) {', '.join(sorted(missing))} a data step needs"
            )
        columns = dataset.select_columns(["caption", "image_0_uid", "image_1_uid"])
        keys = list(zip(columns["caption"], columns["image_0_uid"], columns["image_1_uid"]))
        return cls(str(source), split, keys, dataset)

    def images(self, rows: list[int]) -> Iterator[tuple[int, ImageSource, ImageSource]]:
        """(row, image 0, image 1) for the given rows, in order; JPEG bytes or file paths."""
        if self.dataset is None:
            for row in rows:
                _, uid_0, uid_1 = self.keys[row]
                yield row, Path(self.source) / uid_0, Path(self.source) / uid_1
            return
        chunk = 256  # rows read at once: bounded memory whatever the split's size
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            selected = self.dataset.select(part).select_columns(["jpg_0", "jpg_1"])
            for row, jpg_0, jpg_1 in zip(part, selected["jpg_0"], selected["jpg_1"]):
                yield row, bytes(jpg_0), bytes(jpg_1)


def score_training_images(
    source: str | Path,
    scorer_name: str,
    *,
    split: str = "train",
    scorer_options: dict[str, Any] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Path:
    """Score every unique (image, caption) of the pairs in ``source`` with ``scorer_name``; returns the table's path.

    Resumable: only what the table lacks is scored, and each batch is committed at once.
    """
    pairs = PairRows.open(source, split)
    scorer = LazyScorer(scorer_name, **(scorer_options or {}))  # its weights loaded only if the table lacks a score
    meta = {
        "scorer": scorer.name,
        "version": scorer.version,
        "scale": scorer.scale,
        "family": scorer.family,
        "split": split,
        "dataset_key": dataset_key(source, split),
    }
    with ScoreTable(table_path(source, split, scorer_name), meta) as table:
        done = table.known()
        todo: dict[tuple[str, str], tuple[int, int]] = {}  # (uid, caption) -> (row, image column)
        for row, (caption, uid_0, uid_1) in enumerate(pairs.keys):
            for column, uid in enumerate((uid_0, uid_1)):
                if (uid, caption) not in done:
                    todo.setdefault((uid, caption), (row, column))
        if todo:
            _score(
                pairs,
                todo,
                scorer,
                table,
                batch_size,
                progress_bar(total=len(todo), unit="img", desc=f"scoring with {scorer.name}", enabled=progress),
            )
        return table.path


def _score(
    pairs: PairRows, todo: dict[tuple[str, str], tuple[int, int]], scorer, table: ScoreTable, batch_size: int, bar
) -> None:
    wanted: dict[int, list[tuple[int, str, str]]] = {}
    for (uid, caption), (row, column) in todo.items():
        wanted.setdefault(row, []).append((column, uid, caption))
    loader = ImageLoader()
    batch: list[tuple[str, str, Image.Image]] = []
    unreadable: list[tuple[str, str, None]] = []

    def flush() -> None:
        values = scorer.score([image for _, _, image in batch], [caption for _, caption, _ in batch]) if batch else []
        table.put([(uid, caption, float(v)) for (uid, caption, _), v in zip(batch, values)] + unreadable)
        bar.update(len(batch) + len(unreadable))
        batch.clear(), unreadable.clear()

    with bar:
        for row, *images in pairs.images(sorted(wanted)):
            for column, uid, caption in wanted[row]:
                image = loader.load(images[column])
                if image is None:
                    unreadable.append((uid, caption, None))  # recorded, so a rerun does not decode it again
                else:
                    batch.append((uid, caption, image))
                if len(batch) >= batch_size:
                    flush()
        flush()
    if loader.skipped:
        print(
            f"   {len(loader.skipped)} undecodable image(s) left unscored, e.g. {sorted(loader.skipped)[0]}", flush=True
        )


def select_experts(
    source: str | Path,
    scorer_name: str,
    top_k: int,
    out_dir: Path,
    *,
    split: str = "train",
    scorer_options: dict[str, Any] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Path:
    """DRO's expert set: the ``top_k`` training images by ``scorer_name``, as ``out_dir/experts.jsonl`` + images.

    Scores first (resuming), then writes the directory atomically; a finished directory with the
    same recipe is kept as is.  ``out_dir/experts.json`` records the scorer, its version and scale.
    """
    if top_k < 1:
        raise HarnessError(f"top_k must be at least 1, not {top_k}")
    out_dir = Path(out_dir)
    recipe = {"split": split, "dataset_key": dataset_key(source, split), "top_k": top_k}
    if _same_recipe(out_dir, recipe, scorer_name):
        return out_dir
    table_file = score_training_images(
        source, scorer_name, split=split, scorer_options=scorer_options, batch_size=batch_size, progress=progress
    )
    with ScoreTable(table_file) as table:
        ranked, meta = table.ranked(top_k), dict(table.meta)
    pairs = PairRows.open(source, split)
    where = {}
    for row, (caption, uid_0, uid_1) in enumerate(pairs.keys):
        for column, uid in enumerate((uid_0, uid_1)):
            where.setdefault((uid, caption), (row, column))
    chosen = {where[uid, caption]: (score, uid, caption) for score, uid, caption in ranked}
    rows = {}
    with publishing(out_dir) as temporary:
        (temporary / "images").mkdir(parents=True)
        for row, *images in pairs.images(sorted({row for row, _ in chosen})):
            for column in (0, 1):
                if (row, column) in chosen:
                    score, uid, caption = chosen[row, column]
                    name = f"images/{len(rows):05d}{_suffix(images[column])}"
                    (temporary / name).write_bytes(_bytes(images[column]))
                    rows[row, column] = {"caption": caption, "image": name, "score": score, "uid": uid}
        ordered = [rows[where[uid, caption]] for _, uid, caption in ranked]
        write_jsonl(temporary / "experts.jsonl", ordered)
        record = {
            **recipe,
            "source": str(source),
            "scorer": meta["scorer"],
            "version": meta["version"],
            "scale": meta["scale"],
            "family": meta["family"],
            "scores": str(table_file),
            "n": len(ordered),
        }
        (temporary / EXPERTS_META).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if out_dir.exists():  # another recipe's experts: replaced whole
            shutil.rmtree(out_dir)
    return out_dir


def experts_recipe(directory: str | Path) -> dict | None:
    """What ranked a directory's experts (``experts.json``), if a data step made it."""
    path = Path(directory) / EXPERTS_META
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _same_recipe(out_dir: Path, recipe: dict, scorer_name: str) -> bool:
    made = experts_recipe(out_dir)
    return (
        made is not None
        and (out_dir / "experts.jsonl").exists()
        and made.get("scorer") == scorer_name
        and all(made.get(k) == v for k, v in recipe.items())
    )


def _bytes(source: ImageSource) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _suffix(source: ImageSource) -> str:
    """The file's own suffix, or the format of raw bytes (the bytes are copied, never re-encoded)."""
    if not isinstance(source, bytes):
        return Path(source).suffix
    try:
        with Image.open(io.BytesIO(source)) as image:
            kind = (image.format or "").lower()
    except (OSError, ValueError):
        kind = ""
    return {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}.get(kind, ".bin")
