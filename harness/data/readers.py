"""Training data: preference pairs, expert demonstrations, labelled images (the readers behind
``harness.api.data``'s specs).

Sources a user can point the trainer at:

- a local directory with ``pairs.jsonl`` (``{"caption", "image_0", "image_1", "label_0",
  "score_0"?, "score_1"?}``, image paths relative to the directory, ``label_0`` 1.0 /
  0.0 / 0.5 = tie, dropped) and/or ``experts.jsonl`` (``{"caption", "image", "score"?}``)
  and/or ``labelled.jsonl`` (``{"caption", "image", "label", "score"?}``, label 1 desirable,
  0 undesirable);
- Pick-a-Pic v2 through HF ``datasets``: a hub id (``yuvalkirstain/pickapic_v2``) or a
  local copy (``save_to_disk`` output or a downloaded dataset folder); columns
  ``jpg_0, jpg_1, label_0, caption`` (and ``image_0_uid, image_1_uid`` for scores); ties
  dropped; rows read lazily (the real set is hundreds of GB).

Reward scores, where a method needs them (SmPO's pairs) and the data has none, come from
a score table made by a data step (``harness.data.steps``); DRO's experts ranked by a
reward are a directory made by ``harness data experts``.  Neither is ever replaced silently
by something else: missing scores are an error that says which command makes them.

Images are decoded only when a sample is used.  A corrupt image does not stop
training: ``ImageLoader`` returns None, remembers the source, and the trainer
moves on to the next sample and reports the count.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from harness.api.data import ImageSource
from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch
from harness.data.score_table import ScoreTable


@dataclass(frozen=True)
class Pair:
    """A preference pair with the preferred image first."""

    caption: str
    image_w: ImageSource
    image_l: ImageSource
    score_w: float | None = None
    score_l: float | None = None
    preferred_is_image_0: bool = True  # the preferred image was the source's image_0 (jpg_0), not image_1


@dataclass(frozen=True)
class Expert:
    caption: str
    image: ImageSource
    score: float | None = None


@dataclass(frozen=True)
class Labelled:
    """A single image labelled desirable (1.0) or undesirable (0.0)."""

    caption: str
    image: ImageSource
    label: float
    score: float | None = None


def content_key(source: ImageSource) -> str:
    """Key of an image's bytes: caches keyed by it survive renames and never serve stale content."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return hashlib.sha256(data).hexdigest()[:32]


# What decoding a missing, truncated or foreign file raises.
UNDECODABLE = (OSError, ValueError, Image.DecompressionBombError)


def decode_image(source: ImageSource) -> Image.Image:
    """The image, decoded now (a truncated file fails here, not later in the middle of a batch); raises
    one of ``UNDECODABLE``."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    return image.convert("RGB")


class ImageLoader:
    """Decodes images; a corrupt or missing one is counted and skipped, never fatal."""

    def __init__(self) -> None:
        self.skipped: set[str] = set()

    def load(self, source: ImageSource) -> Image.Image | None:
        try:
            return decode_image(source)
        except UNDECODABLE as exc:
            name = str(source) if isinstance(source, Path) else f"<{len(source)} bytes>"
            self.skipped.add(f"{name}: {type(exc).__name__}")
            return None


def to_pixels(image: Image.Image, resolution: int, flip: bool = False) -> torch.Tensor:
    """The public training scripts' transform: short side to ``resolution`` (bilinear, antialiased),
    centre crop, optional horizontal flip, scaled to [-1, 1]; shape (3, H, W).

    torchvision's own functions, so sizes and rounding are exactly those of the Salesforce / SmPO
    ``transforms.Resize(res, BILINEAR)`` + ``CenterCrop(res)`` + ``RandomHorizontalFlip`` pipeline.
    """
    import torch  # here: reading data sets and checking images stays free of torch
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image, resolution, interpolation=TF.InterpolationMode.BILINEAR), resolution)
    if flip:
        image = TF.hflip(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def numbered_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of each non-blank line: messages name the line a user's editor shows."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise HarnessError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in numbered_jsonl(path)]


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise HarnessError(f"{where}: missing field(s) {', '.join(missing)}")


def label_value(row: dict, key: str, where: str) -> float:
    """A label as a number: a string such as "1" is a mistake in the data (a writer's bug), not a label."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HarnessError(f"{where}: {key} must be a number, not {type(value).__name__} {value!r}")
    return float(value)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _oriented(caption: str, image_0, image_1, label_0: float, score_0, score_1) -> Pair | None:
    """The pair with its preferred image first, or None for a tie."""
    if label_0 == 0.5:
        return None
    if label_0 == 1.0:
        return Pair(caption, image_0, image_1, _optional_float(score_0), _optional_float(score_1))
    return Pair(
        caption, image_1, image_0, _optional_float(score_1), _optional_float(score_0), preferred_is_image_0=False
    )


def read_local_pairs(directory: Path, scores: dict[tuple[str, str], float | None] | None = None) -> list[Pair]:
    path = directory / "pairs.jsonl"
    pairs = []
    for number, row in numbered_jsonl(path):
        where = f"{path}:{number}"
        _require(row, ("caption", "image_0", "image_1", "label_0"), where)
        label = label_value(row, "label_0", where)
        if label not in (0.0, 0.5, 1.0):
            raise HarnessError(f"{where}: label_0 must be 1.0, 0.0 or 0.5 (tie), not {row['label_0']!r}")
        score_0, score_1 = row.get("score_0"), row.get("score_1")
        if scores is not None:
            score_0, score_1 = (scores.get((row[image], row["caption"])) for image in ("image_0", "image_1"))
        pair = _oriented(
            row["caption"], directory / row["image_0"], directory / row["image_1"], label, score_0, score_1
        )
        if pair is not None:
            pairs.append(pair)
    return pairs


class PickapicPairs(Sequence):
    """Pick-a-Pic v2 rows as ``Pair``s, ties dropped, images decoded only when used.

    ``scores``: a score table's values keyed by (image uid, caption), looked up for every kept row
    at once (two columns, no image read), so their range can be checked before training.
    """

    def __init__(self, dataset, scores: dict[tuple[str, str], float | None] | None = None) -> None:
        required = {"jpg_0", "jpg_1", "label_0", "caption"} | (
            {"image_0_uid", "image_1_uid"} if scores is not None else set()
        )
        missing = required - set(dataset.column_names)
        if missing:
            raise HarnessError(f"dataset lacks Pick-a-Pic column(s): {', '.join(sorted(missing))}")
        label_type = getattr((getattr(dataset, "features", None) or {}).get("label_0"), "dtype", None)
        if label_type is not None and not label_type.startswith(("float", "int", "uint")):
            # Every label would fall outside (0, 1) and be dropped as a tie: no pair left, and no word why.
            raise HarnessError(f"dataset column label_0 holds {label_type}, not numbers (1, 0 or 0.5 for a tie)")
        self.dataset = dataset
        self.rows = [i for i, label in enumerate(dataset["label_0"]) if label in (0, 1)]
        self.ties_dropped = len(dataset) - len(self.rows)
        self.scores: np.ndarray | None = None  # (len, 2): score of image_0, image_1
        if scores is not None:
            keys = dataset.select_columns(["caption", "image_0_uid", "image_1_uid"])
            captions, uid_0, uid_1 = keys["caption"], keys["image_0_uid"], keys["image_1_uid"]
            self.scores = np.array(
                [
                    [
                        _nan_if_none(scores.get((uid_0[i], captions[i]))),
                        _nan_if_none(scores.get((uid_1[i], captions[i]))),
                    ]
                    for i in self.rows
                ],
                dtype=float,
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Pair:  # type: ignore[override]
        row = self.dataset[self.rows[index]]
        score_0, score_1 = (row.get("score_0"), row.get("score_1")) if self.scores is None else self.scores[index]
        pair = _oriented(
            row["caption"], bytes(row["jpg_0"]), bytes(row["jpg_1"]), float(row["label_0"]), score_0, score_1
        )
        assert pair is not None
        return pair


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def pair_scores(pairs: Sequence[Pair]) -> np.ndarray:
    """Every score of every pair (both images; order unspecified), NaN where missing; reads no image."""
    if isinstance(pairs, PickapicPairs):
        return np.full(2 * len(pairs), np.nan) if pairs.scores is None else pairs.scores.ravel()
    return np.array([_nan_if_none(s) for p in pairs for s in (p.score_w, p.score_l)], dtype=float)


def load_hf_dataset(source: str, split: str = "train"):
    """A ``datasets`` split from a local copy (``save_to_disk`` or a dataset folder) or a hub id."""
    import datasets

    path = Path(source)
    try:
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(source, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarnessError(f"cannot load dataset {source!r} (split {split!r}): {first_line}") from None


def load_pairs(
    source: str | Path, split: str = "train", scores: dict[tuple[str, str], float | None] | None = None
) -> Sequence[Pair]:
    """Preference pairs from a local ``pairs.jsonl`` directory or Pick-a-Pic v2 (hub id or local copy).

    ``scores``: a score table's values by (image uid, caption) (the uid of a local image is its path
    in ``pairs.jsonl``), replacing the data's own ``score_0`` / ``score_1``.
    """
    path = Path(source)
    if (path / "pairs.jsonl").exists():
        return read_local_pairs(path, scores)
    if path.is_dir() and (path / "experts.jsonl").exists():
        raise HarnessError(f"{path} has experts.jsonl but no pairs.jsonl; this method trains on preference pairs")
    return PickapicPairs(load_hf_dataset(str(source), split), scores)


def load_experts(source: str | Path, top_k: int | None = None, scorer: str | None = None) -> Sequence[Expert]:
    """Expert demonstrations: ``experts.jsonl`` if present (its ``top_k`` best-scored rows), else from the pairs.

    From pairs: with a ``scorer`` (DRO's recipe) the experts must have been made by ``harness data
    experts``; with ``top_k`` only, the top_k images by the pairs' own scores; with neither, the
    preferred image of each pair (SFT).  Never a silent substitute: anything else is an error.
    """
    path = Path(source) / "experts.jsonl"
    if not path.exists():
        if scorer:
            raise HarnessError(
                f"the experts are the top {top_k} images of {source} ranked by {scorer}: make them with "
                f"`harness data experts --data {source} --scorer {scorer} --top-k {top_k} --out DIR` and train on DIR "
                "(`harness run` does this itself)"
            )
        pairs = load_pairs(source)
        if not top_k:
            return [Expert(p.caption, p.image_w, p.score_w) for p in pairs]
        if np.isnan(pair_scores(pairs)).any():
            raise HarnessError(f"{source}: ranking the top {top_k} experts needs score_0 and score_1 on every pair")
        candidates = [
            Expert(p.caption, img, s) for p in pairs for img, s in ((p.image_w, p.score_w), (p.image_l, p.score_l))
        ]
        return top_k_experts(candidates, top_k)
    experts = []
    for number, row in numbered_jsonl(path):
        _require(row, ("caption", "image"), f"{path}:{number}")
        experts.append(Expert(row["caption"], Path(source) / row["image"], _optional_float(row.get("score"))))
    if top_k and len(experts) > top_k:
        if any(expert.score is None for expert in experts):
            raise HarnessError(
                f"{path} has {len(experts)} experts and top_k is {top_k}: every row needs a 'score' to rank by"
            )
        return top_k_experts(experts, top_k)
    return experts


def training_captions(source: str | Path) -> list[str]:
    """Every caption ``source`` can train on: what the seen/unseen overlap check compares suites with."""
    path = Path(source)
    files = {"pairs.jsonl": read_local_pairs, "experts.jsonl": load_experts, "labelled.jsonl": load_labelled}
    if any((path / name).exists() for name in files):
        return [row.caption for name, read in files.items() if (path / name).exists() for row in read(path)]
    return list(load_hf_dataset(str(source))["caption"])  # one column: no image is decoded


def top_k_experts(candidates: Sequence[Expert], k: int) -> list[Expert]:
    """DRO's expert set: the k highest-scored image-caption pairs (each image once)."""
    unique: dict[str, Expert] = {}
    for expert in candidates:
        if expert.score is None:
            raise HarnessError("every expert candidate needs a score to rank by")
        unique.setdefault(content_key(expert.image), expert)
    return sorted(unique.values(), key=lambda e: e.score, reverse=True)[:k]


def load_labelled(source: str | Path) -> list[Labelled]:
    """Rows of a directory's ``labelled.jsonl``; a label other than 0 or 1 is an error naming the line."""
    path = Path(source) / "labelled.jsonl"
    rows = []
    for number, row in numbered_jsonl(path):
        _require(row, ("caption", "image", "label"), f"{path}:{number}")
        if label_value(row, "label", f"{path}:{number}") not in (0.0, 1.0):
            raise HarnessError(f"{path}:{number}: label must be 1 (desirable) or 0 (undesirable), not {row['label']!r}")
        rows.append(
            Labelled(
                row["caption"], Path(source) / row["image"], float(row["label"]), _optional_float(row.get("score"))
            )
        )
    return rows


def scored_pairs(source: str | Path, scorer: str | None) -> Sequence[Pair]:
    """The pairs of ``source``; with a ``scorer``, every image's score by it (the data's own, or the
    score table ``harness data score`` made), or a clear error."""
    pairs = load_pairs(source)
    if not scorer or not np.isnan(pair_scores(pairs)).any():
        return pairs

    table = ScoreTable.find(source, "train", scorer)
    if table is None:
        raise HarnessError(
            f"the pairs in {source} carry no scores and this method needs every image scored by {scorer}: "
            f"run `harness data score --data {source} --scorer {scorer}` (`harness run` does this itself)"
        )
    with table:
        pairs = load_pairs(source, scores=table.values())
    unscored = int(np.isnan(pair_scores(pairs)).sum())
    if unscored:
        raise HarnessError(
            f"{unscored} image(s) of {source} have no {scorer} score in {table.path} "
            "(undecodable, or the data changed): rerun `harness data score`"
        )
    return pairs
