"""Directories published into content-keyed caches: whole or not at all, and the first one wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.atomic import publishing


def test_a_published_directory_appears_whole_and_the_first_one_wins(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with publishing(target) as temporary:
        (temporary / "part").mkdir(parents=True)
        (temporary / "part" / "data.txt").write_text("first")
        assert not target.exists()  # nothing visible before the block ends
    with publishing(target) as temporary:  # another process built the same entry, later
        temporary.mkdir()
        (temporary / "data.txt").write_text("second")
    assert (target / "part" / "data.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # the loser's copy is gone


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), publishing(tmp_path / "entry") as temporary:
        temporary.mkdir()
        (temporary / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
