"""A full disk: one line naming the filesystem and what was being written, no temporary left behind,
and the same command completes once space is freed.

The disk is real: a small tmpfs mounted for the test, so writes fail with ENOSPC (or, for torch.save,
a short write) exactly as on a full disk.  Mounting needs root, as CI has; elsewhere these tests skip.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
import torch

from harness.atomic import DiskFullError, replacing
from harness.results.store import Store
from support.cli import harness_main

RUN = ("run", "--preset", "tiny", "--methods", "dpo")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB filesystem: the tiny run's data, images and database fit, its first checkpoint does not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: even with a file still open


def _temporaries(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.name.endswith(".tmp")]


def _results(out: Path) -> tuple[list, list]:
    """Images (by content) and scores of a results directory, independent of run ids."""
    with Store(out, readonly=True) as store:
        images = store.images_frame()[["method", "suite", "prompt_id", "image_index", "seed", "sha256"]]
        scores = store.scores_frame()[["method", "suite", "prompt_id", "image_index", "metric", "value"]]
    return sorted(map(tuple, images.values.tolist())), sorted(map(tuple, scores.values.tolist()))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_completes_after_freeing_space(small_disk, tiny_run_dir):
    out = small_disk / "runs"
    failed = harness_main(*RUN, "--out", str(out))
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr and failed.stderr.count("harness: error:") == 1, failed.stderr[-3000:]
    error = failed.stderr.rstrip().rpartition("harness: error: ")[2]
    assert re.fullmatch(
        rf"no space left on {re.escape(str(small_disk))} while writing {re.escape(str(out))}/\S+; "
        "free space and rerun the same command",
        error,
    ), error
    assert _temporaries(out) == []

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    rerun = harness_main(*RUN, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _temporaries(out) == []
    assert _results(out) == _results(tiny_run_dir)  # as if the disk had never been full


def _fill(directory: Path) -> None:
    """Take every free byte."""
    try:
        with open(directory / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(bytes(1 << 16))
    except OSError:
        pass


def test_every_kind_of_write_on_a_full_disk_names_its_file(small_disk):
    from safetensors.torch import save_file

    _fill(small_disk)
    writers = {
        "state.pt": lambda path: torch.save({"w": torch.zeros(4096)}, path),  # a RuntimeError, no errno
        "unet.safetensors": lambda path: save_file({"w": torch.zeros(4096)}, str(path)),
        "notes.json": lambda path: path.write_text("x" * 100_000),
    }
    for name, write in writers.items():
        with (
            pytest.raises(
                DiskFullError,
                match=rf"no space left on {re.escape(str(small_disk))} while writing "
                rf"{re.escape(str(small_disk / name))}; free space",
            ),
            replacing(small_disk / name) as temporary,
        ):
            write(temporary)
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler"]  # no temporary left

    (small_disk / "filler").unlink()
    store = Store(small_disk / "results.db")
    _fill(small_disk)
    with pytest.raises(DiskFullError, match=r"while writing .*results\.db; free space"):
        run_id = store.get_or_create_run("base", method="base", preset=None, base_model="m", config={})
        store.log_training(run_id, [(step, {"loss": 0.5}) for step in range(50_000)])
    store.close()
    with closing(sqlite3.connect(small_disk / "results.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
