"""Human-judged preference pairs, read from each set's official layout: what `harness agreement` checks a scorer
against.

``--data`` names a registered set (``harness.api.JUDGED_SETS``), ``NAME`` (its hub copy) or ``NAME:PATH`` (a
local copy in the official layout), or a directory holding our own ``pairs.jsonl``:

- ``pickapic-test``, ``pickapic-test_unique``: Pick-a-Pic v2 (``yuvalkirstain/pickapic_v2``), that split,
  read by the training reader (``harness.data.readers.PickapicPairs``: parquet rows with ``jpg_0``/``jpg_1``
  JPEG bytes, ``caption``, ``label_0``; 0.5 is a tie).
- ``hpdv2-test``: HPDv2's test set (``zhwang/HPDv2``, downloaded as ``test.json`` and ``test/``; if a copy holds the
  images as an archive, unpack it and give the folder): ``test.json``, a list of ``{"prompt", "image_path":
  [files], "rank": [ints]}``, rank 1 the best, images under ``test/`` (or beside the file); every two images of
  a prompt are a pair, as the HPSv2 code's ranking accuracy counts them.
- ``imagereward-test``: ImageReward's expert test set (``data/test.json`` of github.com/THUDM/ImageReward:
  ``{"id", "prompt", "generations": [files], "ranking": [ints]}``, 1 the best, images under ``test_images/``),
  every two images of a prompt a pair as its ``test.py`` counts them; a local copy only (the images come from
  ImageRewardDB).
- ``mmrb2-t2i``: Multimodal RewardBench 2's text-to-image task (github.com/facebookresearch/MMRB2,
  ``benchmark/t2i.json`` after its build: ``{"pairs": [{"id", "prompt_content": [["text", ...]],
  "response_a"/"response_b": {"response_content": [["image", "images/..."]]}, "chosen": "A"|"B"}]}``); a local
  copy only (the build merges prompts from the source benchmarks).
- a world's own, registered with ``harness.api.register_judged_set`` (the toy world's ``toy-panel``);
- a directory with ``pairs.jsonl`` (``harness.data.readers.read_local_pairs``: ``caption``, ``image_0``,
  ``image_1``, ``label_0``).

Every set comes as pairs with the preferred image first, grouped by prompt (the unit a bootstrap resamples:
the pairs of one prompt share its difficulty), with the count of human ties skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from harness.api.data import JudgedPair, JudgedSet
from harness.api.registry import JUDGED_SETS, register_judged_set
from harness.data.readers import PickapicPairs, load_hf_dataset, numbered_jsonl, read_local_pairs
from harness.errors import HarnessError

PICKAPIC_HUB = "yuvalkirstain/pickapic_v2"
HPDV2_HUB = "zhwang/HPDv2"


def _pickapic(split: str) -> None:
    @register_judged_set(f"pickapic-{split}")
    def read(location: str | None) -> JudgedSet:
        source = str(_local(f"pickapic-{split}", location)) if location else PICKAPIC_HUB
        pairs = PickapicPairs(load_hf_dataset(source, split))
        return JudgedSet(f"pickapic-{split}", source, _PickapicJudged(pairs), pairs.ties_dropped)


_pickapic("test")
_pickapic("test_unique")


class _PickapicJudged(Sequence):
    """Pick-a-Pic's pairs, each decoded only when its images are scored (a split holds thousands of JPEGs)."""

    def __init__(self, pairs: PickapicPairs) -> None:
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> JudgedPair:  # type: ignore[override]
        pair = self._pairs[index]
        return JudgedPair(pair.caption, pair.image_w, pair.image_l)


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise HarnessError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _ranked_pairs(
    prompt: str, images: Sequence[Path], ranks: Sequence[int], where: str
) -> tuple[list[JudgedPair], int]:
    """Every two of a prompt's ranked ``images`` as a pair, the lower rank (better) first; equal ranks are a
    tie, skipped and counted.  Returns (pairs, ties)."""
    if len(images) != len(ranks) or len(images) < 2:
        raise HarnessError(f"{where}: needs two or more images and one rank each (got {len(images)} and {len(ranks)})")
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in ranks):
        raise HarnessError(f"{where}: ranks must be numbers, not {list(ranks)!r}")
    pairs, ties = [], 0
    for i, j in combinations(range(len(images)), 2):
        if ranks[i] == ranks[j]:
            ties += 1
        else:
            better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
            pairs.append(JudgedPair(prompt, images[better], images[worse]))
    return pairs, ties


def _image_folder(root: Path, folder: str) -> Path:
    """Where a set's image paths are relative to: its ``folder`` (the official layout) if present, else ``root``."""
    return root / folder if (root / folder).is_dir() else root


def _read_ranked(root: Path, file: str, folder: str, images_key: str, ranks_key: str, name: str) -> JudgedSet:
    path = root / file
    rows = _load_json(path, f"the {name} layout: {file} beside its {folder}/ images")
    if not isinstance(rows, list):
        raise HarnessError(f"{path}: expected a list of prompts with {images_key!r} and {ranks_key!r}")
    images_root = _image_folder(root, folder)
    pairs: list[JudgedPair] = []
    ties = 0
    for k, row in enumerate(rows):
        where = f"{path} entry {k}"
        missing = [key for key in ("prompt", images_key, ranks_key) if not isinstance(row, dict) or key not in row]
        if missing:
            raise HarnessError(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(row[images_key], list) or not isinstance(row[ranks_key], list):
            raise HarnessError(f"{where}: {images_key!r} and {ranks_key!r} must be lists")
        images = [images_root / image for image in row[images_key]]
        own, own_ties = _ranked_pairs(row["prompt"], images, row[ranks_key], where)
        pairs += own
        ties += own_ties
    return JudgedSet(name, str(root), pairs, ties)


@register_judged_set("hpdv2-test")
def _hpdv2(location: str | None) -> JudgedSet:
    root = _local("hpdv2-test", location) if location else Path(_hub_download(HPDV2_HUB, ["test.json", "test/*"]))
    return _read_ranked(root, "test.json", "test", "image_path", "rank", "hpdv2-test")


@register_judged_set("imagereward-test")
def _imagereward(location: str | None) -> JudgedSet:
    root = _local_only("imagereward-test", location, "test.json and test_images/ (ImageReward's data/ folder)")
    return _read_ranked(root, "test.json", "test_images", "generations", "ranking", "imagereward-test")


@register_judged_set("mmrb2-t2i")
def _mmrb2(location: str | None) -> JudgedSet:
    root = _local_only("mmrb2-t2i", location, "t2i.json and images/ (MMRB2's benchmark/ folder, built)")
    path = root / "t2i.json"
    data = _load_json(path, "the MMRB2 layout: t2i.json beside its images/")
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise HarnessError(f"{path}: expected {{'pairs': [...]}}, MMRB2's task file")
    pairs = []
    for k, row in enumerate(data["pairs"]):
        where = f"{path} pair {k}"
        if not isinstance(row, dict) or row.get("chosen") not in ("A", "B"):
            raise HarnessError(f'{where}: \'chosen\' must be "A" or "B"')
        prompt = " ".join(_contents(row.get("prompt_content"), "text", where))
        images = [
            _contents((row.get(f"response_{side}") or {}).get("response_content"), "image", where) for side in "ab"
        ]
        if not prompt or any(len(found) != 1 for found in images):
            raise HarnessError(f"{where}: expected a text prompt and one image per response")
        a, b = root / images[0][0], root / images[1][0]
        pairs.append(JudgedPair(prompt, *((a, b) if row["chosen"] == "A" else (b, a))))
    return JudgedSet("mmrb2-t2i", str(root), pairs, 0)


def _contents(content, kind: str, where: str) -> list[str]:
    """The ``kind`` ("text" or "image") parts of an MMRB2 content list (``[[kind, value], ...]``)."""
    if not isinstance(content, list) or not all(isinstance(part, list) and len(part) == 2 for part in content):
        raise HarnessError(f"{where}: a content list must be [[kind, value], ...]")
    return [value for part_kind, value in content if part_kind == kind]


def _local_only(name: str, location: str | None, layout: str) -> Path:
    if location is None:
        raise HarnessError(f"{name} has no hub copy we can read: give a local copy, --data {name}:DIR with {layout}")
    return _local(name, location)


def _local(name: str, location: str) -> Path:
    if not Path(location).is_dir():
        raise HarnessError(f"--data {name}:{location}: no such directory")
    return Path(location)


def _hub_download(repo: str, patterns: list[str]) -> str:
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(repo, repo_type="dataset", allow_patterns=patterns)
    except Exception as exc:  # offline, gated, missing: the hub's many errors all mean "not there"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarnessError(f"cannot download {repo} ({first}); give a local copy as NAME:DIR") from None


def load_judged(spec: str) -> JudgedSet:
    """The pairs ``spec`` names: ``NAME`` or ``NAME:LOCATION`` of a registered set (``JUDGED_SETS``), or a
    directory with ``pairs.jsonl``."""
    name, sep, location = spec.partition(":")
    if name in JUDGED_SETS.names():
        return JUDGED_SETS.get(name)(location if sep else None)
    path = Path(spec)
    if (path / "pairs.jsonl").is_file():
        pairs = read_local_pairs(path)  # ties dropped: every other line is a pair
        ties = len(numbered_jsonl(path / "pairs.jsonl")) - len(pairs)
        return JudgedSet(str(path), str(path), [JudgedPair(p.caption, p.image_w, p.image_l) for p in pairs], ties)
    raise HarnessError(
        f"--data {spec}: neither a known set ({', '.join(JUDGED_SETS.names())}; NAME:DIR for a local copy) "
        "nor a directory with pairs.jsonl"
    )
