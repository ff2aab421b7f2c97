"""Inputs edited in place since a run: the rerun is refused in one line naming what changed, before anything is
made, never answered with the old numbers.  The data folder, a local ``--model`` directory and a prompt file of
one real (small) run, each edited in turn; then `harness evaluate` of a UNet on another base model.  Every
command runs in this process (``support.cli``): what is checked is what the commands decide."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from support.cli import harness_main

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SMALL = ("--set", "max_steps=1", "--images-per-prompt", "1")


def _data(folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    rows = []
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square")]):
        Image.new("RGB", (32, 32), colour).save(folder / f"{i}_a.png")
        Image.new("RGB", (32, 32), "white").save(folder / f"{i}_b.png")
        rows.append(
            {
                "caption": f"a {colour} {shape} in the center",
                "image_0": f"{i}_a.png",
                "image_1": f"{i}_b.png",
                "label_0": 1.0,
            }
        )
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _files(root: Path) -> dict[str, int]:
    """Every file -> its mtime, but SQLite's -wal and -shm, which a reader of the database makes."""
    return {
        str(path.relative_to(root)): path.stat().st_mtime_ns
        for path in root.rglob("*")
        if not path.name.endswith(("-wal", "-shm"))
    }


def _refused(result, *expected: str) -> str:
    line = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in line and "Traceback" not in line, result.stderr[-3000:]
    for part in expected:
        assert part in line, line
    return line


def test_edited_data_model_and_prompts_are_refused_and_another_base_too(tmp_path: Path, tiny_model_dir: Path) -> None:
    _data(tmp_path / "mydata")
    shutil.copytree(tiny_model_dir, tmp_path / "mymodel")
    (tmp_path / "mine.txt").write_text("a red circle on the left\na blue square in the center\n")
    run = (
        "run",
        "--preset",
        "tiny",
        "--methods",
        "dpo",
        "--data",
        "mydata",
        "--model",
        "mymodel",
        "--suites",
        "file:mine.txt",
        *SMALL,
        "--out",
        "runs",
    )
    first = harness_main(*run, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    recorded = _files(tmp_path / "runs")

    # Every label flipped, in place: same file, same size.
    pairs = tmp_path / "mydata" / "pairs.jsonl"
    original = pairs.read_text()
    pairs.write_text(original.replace('"label_0": 1.0', '"label_0": 0.0'))
    _refused(
        harness_main(*run, cwd=tmp_path),
        "run 'dpo' in runs was made with other inputs: data: the content of mydata has changed",
        "use another --out",
    )
    pairs.write_text(original)

    # One byte of the base model's scheduler settings.
    scheduler = tmp_path / "mymodel" / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text() + " ")
    _refused(
        harness_main(*run, cwd=tmp_path),
        "run 'base' in runs was made with other inputs: base_model: the content of mymodel has changed",
    )
    # The base model's UNet on another base: one line, nothing made.
    _refused(
        harness_main(
            "evaluate", "--model", "tiny", "--unet", "runs/models/dpo/final/unet", "--out", "runs", cwd=tmp_path
        ),
        "--model tiny: the base model of runs is mymodel",
    )
    scheduler.write_text(scheduler.read_text()[:-1])

    # A prompt file edited: its suite's images were made from other prompts.
    (tmp_path / "mine.txt").write_text("a red circle on the right\na blue square in the center\n")
    _refused(harness_main(*run, cwd=tmp_path), "suite 'mine': the images in runs were made from other prompts")
    assert _files(tmp_path / "runs") == recorded  # nothing made, nothing touched
