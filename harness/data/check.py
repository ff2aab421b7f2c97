"""Training data checked before training: every image a row names exists and decodes, and a summary line.

`harness run` and `harness train` check a local data directory (``pairs.jsonl``, ``experts.jsonl``,
``labelled.jsonl``) before they create anything: a missing or undecodable image is one line naming
its file and line.  With ``--skip-bad-images`` the rows holding one are left out instead, by the
trainer too (``usable_examples``): always the same rows, whatever the steps, and counted in the
summary (``pairs 17 read, 1 tie skipped, 0 unreadable``) that the trainer prints and the results
store keeps with the run.

The images are decoded in parallel, once: a check's result is cached under
``HARNESS_CACHE/data-checks/``, keyed by the JSONL file's bytes and each image's size and
modification time, so a rerun on unchanged data decodes nothing and an edited file is checked again.

Pick-a-Pic (a hub id or a local copy) is not checked image by image: its images are bytes inside
the dataset's files, hundreds of GB, decoded when a pair is drawn (an undecodable one is skipped and
counted then); its labels are checked as it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.api.environment import cache_dir
from harness.atomic import replacing
from harness.data.readers import (
    UNDECODABLE,
    decode_image,
    load_experts,
    load_labelled,
    numbered_jsonl,
    read_local_pairs,
)
from harness.errors import HarnessError
from harness.progress import progress_bar

# The files of a local data directory and the fields naming their images.
IMAGE_FIELDS = {"pairs.jsonl": ("image_0", "image_1"), "experts.jsonl": ("image",), "labelled.jsonl": ("image",)}
PROGRESS_FROM = 1000  # images: a smaller set is checked before a progress line would say anything
TIE = 0.5


@dataclass(frozen=True)
class BadImage:
    file: Path
    line: int
    image: str
    reason: str

    def message(self) -> str:
        return f"{self.file}:{self.line}: image {self.image!r} {self.reason}"


@dataclass(frozen=True)
class FileCheck:
    """One JSONL file: its rows, its ties (pairs only; never trained on, so their images are not read)
    and the images of the other rows that cannot be read."""

    file: Path
    rows: int
    ties: int
    bad: tuple[BadImage, ...]

    @property
    def unreadable_rows(self) -> int:
        return len({bad.line for bad in self.bad})

    def summary(self) -> str:
        kind = self.file.stem
        ties = f", {self.ties} tie{'' if self.ties == 1 else 's'} skipped" if kind == "pairs" else ""
        return f"{kind} {self.rows} read{ties}, {self.unreadable_rows} unreadable"


@dataclass(frozen=True)
class DataCheck:
    files: tuple[FileCheck, ...]

    @property
    def bad(self) -> tuple[BadImage, ...]:
        return tuple(bad for file in self.files for bad in file.bad)

    def bad_images(self) -> set[Path]:
        return {bad.file.parent / bad.image for bad in self.bad}

    def summary(self) -> str:
        return "; ".join(file.summary() for file in self.files)


def check_data(source: str | Path, *, skip_bad_images: bool = False, progress: bool = True) -> DataCheck | None:
    """Check a local data directory (None for anything else: a hub dataset, Pick-a-Pic's local copy).

    A bad image is an error naming the first one's file and line, unless ``skip_bad_images``."""
    directory = Path(source)
    if not directory.is_dir() or not any((directory / name).exists() for name in IMAGE_FIELDS):
        return None
    # The readers' own checks first (fields, labels as numbers), each naming its file and line.
    readers = {"pairs.jsonl": read_local_pairs, "experts.jsonl": load_experts, "labelled.jsonl": load_labelled}
    files = []
    for name, read in readers.items():
        if (directory / name).exists():
            read(directory)
            files.append(_check_file(directory / name, progress))
    check = DataCheck(tuple(files))
    if check.bad and not skip_bad_images:
        more = len(check.bad) - 1
        others = f" ({more} more unreadable)" if more else ""
        raise HarnessError(
            f"{check.bad[0].message()}{others}: fix the data, or pass --skip-bad-images to leave out "
            "the rows that hold one"
        )
    return check


def usable_examples(records: Sequence, bad_images: set[Path], images_of) -> list:
    """``records`` without those holding a bad image (``images_of(record)``: the image paths it holds)."""
    return [record for record in records if not bad_images.intersection(images_of(record))]


def _check_file(path: Path, progress: bool) -> FileCheck:
    rows = numbered_jsonl(path)
    fields = IMAGE_FIELDS[path.name]
    ties = {number for number, row in rows if path.name == "pairs.jsonl" and row.get("label_0") == TIE}
    used = [(number, str(row[field])) for number, row in rows if number not in ties for field in fields]
    images = sorted({image for _, image in used})
    cache = _cache_path(path, images)
    if cache.exists():
        problems = json.loads(cache.read_text(encoding="utf-8"))
    else:
        problems = _decode_all(path.parent, images, progress and len(images) >= PROGRESS_FROM, path)
        _write_cache(cache, problems)
    bad = tuple(BadImage(path, number, image, problems[image]) for number, image in used if image in problems)
    return FileCheck(path, len(rows), len(ties), bad)


def _decode_all(directory: Path, images: list[str], progress: bool, path: Path) -> dict[str, str]:
    """Each image that cannot be read, with why; decoded on threads (PIL releases the GIL while decoding)."""

    def problem(image: str) -> str | None:
        location = directory / image
        if not location.is_file():
            return f"does not exist ({location})"
        try:
            decode_image(location)
        except UNDECODABLE as exc:
            return f"cannot be decoded ({type(exc).__name__})"
        return None

    problems = {}
    with (
        ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool,
        progress_bar(total=len(images), desc=f"checking the images of {path}", unit="img", enabled=progress) as bar,
    ):
        for image, found in zip(images, pool.map(problem, images)):
            if found is not None:
                problems[image] = found
            bar.update()
    return problems


def _cache_path(path: Path, images: list[str]) -> Path:
    key = hashlib.sha256(path.read_bytes())
    for image in images:
        try:
            stat = (path.parent / image).stat()
            key.update(f"\0{image}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError:
            key.update(f"\0{image}\0missing".encode())
    return cache_dir() / "data-checks" / f"{key.hexdigest()[:32]}.json"


def _write_cache(cache: Path, problems: dict[str, str]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    with replacing(cache) as temporary:
        temporary.write_text(json.dumps(problems, sort_keys=True), encoding="utf-8")
