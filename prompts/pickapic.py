"""Pick-a-Pic v2 ``test_unique`` captions (Kirstain et al., 2023): 500 prompts, the seen suite.

The split of the hub data set ``yuvalkirstain/pickapic_v2`` is read through
``datasets`` (only the ``caption`` column is kept, and cached as JSONL).  ``path=``
takes a local copy: a parquet / JSONL / CSV file or a ``save_to_disk`` directory
with a ``caption`` column, or a download of the hub repository (the directory holding
``data/test_unique-00000-of-00001-*.parquet``).
"""

from __future__ import annotations

from pathlib import Path

from harness.api import HarnessError, Prompt, Suite, cached_prompts, register_suite

HUB_ID = "yuvalkirstain/pickapic_v2"
SPLIT = "test_unique"
_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@register_suite("pickapic-test")
def pickapic_test(path: str | Path | None = None, hub_id: str = HUB_ID, split: str = SPLIT) -> Suite:
    if path is not None:
        prompts = _prompts(_local_captions(Path(path), split), str(path))
    else:
        prompts = cached_prompts("pickapic-test", hub_id, lambda: _prompts(_hub_captions(hub_id, split), hub_id), split)
    return Suite("pickapic-test", "seen", tuple(prompts), description=f"Pick-a-Pic v2 {split} captions")


def _prompts(captions: list, source: str) -> list[Prompt]:
    prompts = []
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise HarnessError(f"{source}: row {i} has an empty or non-text caption")
        prompts.append(Prompt(f"pickapic-test-{i:03d}", caption.strip()))
    return prompts


def _local_captions(path: Path, split: str) -> list:
    import datasets

    if path.is_dir() and not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = _read_files("parquet", _downloaded_shards(path, split), path)
    elif path.is_dir():
        data = datasets.load_from_disk(str(path))
    elif path.suffix in _FORMATS:
        data = _read_files(_FORMATS[path.suffix], [path], path)
    else:
        raise HarnessError(f"{path}: expected a directory or a {', '.join(_FORMATS)} file")
    if isinstance(data, datasets.DatasetDict):
        raise HarnessError(f"{path}: holds several splits ({', '.join(data)}); pass the directory of one split")
    if "caption" not in data.column_names:
        raise HarnessError(f"{path}: no 'caption' column (columns: {', '.join(data.column_names)})")
    return data["caption"]


def _downloaded_shards(path: Path, split: str) -> list[Path]:
    """The split's parquet shards in a download of the hub repository (its root or its data/ folder)."""
    shards = sorted(path.glob(f"data/{split}-*.parquet")) or sorted(path.glob(f"{split}-*.parquet"))
    if not shards:
        raise HarnessError(
            f"{path}: neither a save_to_disk directory nor a download of {HUB_ID} (no data/{split}-*.parquet)"
        )
    return shards


def _read_files(kind: str, files: list[Path], path: Path):
    import datasets

    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as exc:  # pyarrow/json parse errors: no common base class
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarnessError(f"{path}: cannot read as {kind} ({first_line})") from None


def _hub_captions(hub_id: str, split: str) -> list:
    import datasets

    return datasets.load_dataset(hub_id, split=split, columns=["caption"])["caption"]
