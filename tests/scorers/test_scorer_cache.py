"""ScoreCache and score_images: unchanged images are never rescored, changed ones always are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.api.registry import SCORERS, register_scorer
from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring import LazyScorer
from harness.scoring.cache import ScoreCache, image_sha256, score_images


class Brightness(Scorer):
    """A real (if simple) metric: mean pixel value plus prompt length; it records every call."""

    name = "brightness"
    version = "1"
    scale = "[0, 255] + len(prompt)"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self.batches.append(len(images))
        return [float(np.asarray(image).mean()) + len(prompt) for image, prompt in zip(images, prompts)]

    @property
    def calls(self) -> int:
        return sum(self.batches)


def gray(level: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (level, level, level))


def expected(level: int, prompt: str) -> float:
    return float(level + len(prompt))


def test_scores_are_computed_once_then_served_from_the_cache(tmp_path: Path):
    images = [gray(level) for level in (10, 20, 30, 40, 50)]
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    scorer = Brightness()
    with ScoreCache(tmp_path / "scores.db") as cache:
        first = score_images(scorer, images, prompts, cache=cache, batch_size=2)
        assert first == [expected(level, p) for level, p in zip((10, 20, 30, 40, 50), prompts)]
        assert scorer.batches == [2, 2, 1]
        assert score_images(scorer, images, prompts, cache=cache, batch_size=2) == first
        assert scorer.calls == 5
    # The cache is a file: a later run (a new process) finds the same scores.
    reopened_scorer = Brightness()
    with ScoreCache(tmp_path / "scores.db") as cache:
        assert score_images(reopened_scorer, images, prompts, cache=cache) == first
        assert reopened_scorer.calls == 0 and len(cache) == 5


def test_a_scorer_loads_its_weights_only_when_the_cache_lacks_a_score(tmp_path: Path, monkeypatch):
    """A run's scorers are ``LazyScorer``s: the cache is read under the version their class gives for their options
    (``Scorer.version_for``), and a scorer is built only for a batch to score; built, its version must be that one."""
    SCORERS.names()  # built-ins loaded before the entries are copied
    monkeypatch.setattr(SCORERS, "_entries", dict(SCORERS._entries))  # undone after the test
    built: list[str] = []

    @register_scorer("brightness-of-weights")
    class Weighted(Brightness):
        name = "brightness-of-weights"

        def __init__(self, weights: str = "official") -> None:
            super().__init__()
            built.append(weights)
            self.version = self.version_for(weights=weights)

        @classmethod
        def version_for(cls, weights: str = "official", **_: object) -> str:
            return weights_version(cls.version, {"weights": weights}, {"weights": "official"})

    @register_scorer("brightness-forgetful")
    class Forgetful(Brightness):  # its version depends on its weights, but its class does not say so
        name = "brightness-forgetful"

        def __init__(self, weights: str = "official") -> None:
            super().__init__()
            self.version = weights_version(self.version, {"weights": weights}, {"weights": "official"})

    images, prompts = [gray(10), gray(20)], ["a", "b"]
    with ScoreCache(tmp_path / "scores.db") as cache:
        for weights in ("official", "mine"):
            scorer = LazyScorer("brightness-of-weights", weights=weights)
            assert score_images(scorer, images, prompts, cache=cache) == [expected(10, "a"), expected(20, "b")]
            assert scorer.version == scorer.loaded().version  # what the cache filed its scores under
        assert built == ["official", "mine"] and cache.get(Weighted(), [image_sha256(images[0])], ["a"])
        rerun = [LazyScorer("brightness-of-weights", weights=weights) for weights in ("official", "mine")]
        for scorer in rerun:
            assert score_images(scorer, images, prompts, cache=cache) == [expected(10, "a"), expected(20, "b")]
        assert built == ["official", "mine", "official"] and rerun[1]._scorer is None  # the rerun built nothing
        with pytest.raises(
            HarnessError,
            match=r"^scorer brightness-forgetful: built with \{'weights': 'mine'\} its "
            r"version is 1\+custom-\w+, but its class's version_for gives 1; .* overrides Scorer\.version_for$",
        ):
            score_images(LazyScorer("brightness-forgetful", weights="mine"), images, prompts, cache=cache)


def test_only_changed_images_are_rescored_whatever_their_path(tmp_path: Path):
    paths = []
    for i, level in enumerate((10, 20, 30)):
        paths.append(tmp_path / f"img{i}.png")
        gray(level).save(paths[-1])
    prompts = ["x", "y", "z"]
    scorer = Brightness()
    cache = ScoreCache(tmp_path / "scores.db")
    keys = [image_sha256(p) for p in paths]
    score_images(scorer, paths, prompts, keys, cache)
    assert scorer.calls == 3
    # Move one file and regenerate another with new pixels: only the regenerated one is scored.
    moved = tmp_path / "moved.png"
    paths[0].rename(moved)
    gray(99).save(paths[2])
    new_paths = [moved, paths[1], paths[2]]
    values = score_images(scorer, new_paths, prompts, [image_sha256(p) for p in new_paths], cache)
    assert scorer.calls == 4
    assert values == [expected(10, "x"), expected(20, "y"), expected(99, "z")]


def test_the_key_includes_prompt_and_scorer_version(tmp_path: Path):
    cache = ScoreCache(tmp_path / "scores.db")
    image = gray(7)
    scorer = Brightness()
    score_images(scorer, [image], ["short"], cache=cache)
    # Same image against another prompt is another score.
    assert score_images(scorer, [image], ["much longer"], cache=cache) == [expected(7, "much longer")]
    assert scorer.calls == 2
    newer = Brightness()
    newer.version = "2"  # new weights or formula: nothing cached may be reused
    score_images(newer, [image], ["short"], cache=cache)
    assert newer.calls == 1 and len(cache) == 3


def test_duplicates_are_scored_once_and_without_cache_everything_is_scored():
    scorer = Brightness()
    images = [gray(5), gray(5), gray(6)]
    assert score_images(scorer, images, ["p", "p", "p"], cache=None) == [expected(5, "p")] * 2 + [expected(6, "p")]
    assert scorer.calls == 2


def test_pixel_hash_ignores_how_the_image_was_made_and_sees_any_change():
    a = gray(3)
    b = Image.fromarray(np.full((8, 8, 3), 3, dtype=np.uint8))
    assert image_sha256(a) == image_sha256(b)
    c = np.full((8, 8, 3), 3, dtype=np.uint8)
    c[7, 7, 2] = 4
    assert image_sha256(Image.fromarray(c)) != image_sha256(a)


def test_bad_arguments_are_user_errors(tmp_path: Path):
    scorer = Brightness()
    with pytest.raises(HarnessError, match="one prompt and key per image"):
        score_images(scorer, [gray(1), gray(2)], ["only one"])
    with pytest.raises(HarnessError, match="batch_size"):
        score_images(scorer, [gray(1)], ["p"], batch_size=0)
    with pytest.raises(HarnessError, match="cannot read image"):
        score_images(scorer, [tmp_path / "missing.png"], ["p"], keys=["k"])


def test_a_score_cache_that_is_not_a_database_is_moved_aside_and_rebuilt(tmp_path: Path, capsys):
    garbage = b"this is not sqlite" * 100
    (tmp_path / "scores.sqlite").write_bytes(garbage)
    scorer = Brightness()
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        assert len(cache) == 0
        assert score_images(scorer, [gray(4)], ["p"], cache=cache) == [expected(4, "p")]
    [aside] = tmp_path.glob("scores.sqlite.damaged-*")
    assert aside.read_bytes() == garbage  # kept as it was, for a look
    [line] = capsys.readouterr().out.splitlines()
    assert "warning:" in line and "scores.sqlite" in line and "only a cache" in line
    with ScoreCache(tmp_path / "scores.sqlite") as cache:  # the rebuilt one is whole: no second warning
        assert score_images(scorer, [gray(4)], ["p"], cache=cache) == [expected(4, "p")]
    assert scorer.calls == 1 and capsys.readouterr().out == ""


def test_a_truncated_score_cache_is_moved_aside_and_rebuilt(tmp_path: Path, capsys):
    path = tmp_path / "scores.sqlite"
    scorer = Brightness()
    with ScoreCache(path) as cache:
        score_images(
            scorer, [gray(level) for level in range(200)], [f"prompt {n}" * 20 for n in range(200)], cache=cache
        )
    import sqlite3

    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = path.read_bytes()
    assert len(data) > 3 * 4096
    path.write_bytes(data[: len(data) // 2])
    with ScoreCache(path) as cache:
        assert len(cache) == 0
    assert len(list(tmp_path.glob("scores.sqlite.damaged-*Z"))) == 1
    assert "warning:" in capsys.readouterr().out
