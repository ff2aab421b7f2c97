"""The data steps on Pick-a-Pic-shaped data: every image scored once and resumably, DRO's experts, SmPO's scores."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from harness.api import Pairs
from harness.api.registry import register_scorer
from harness.api.scorer import Scorer
from harness.data import specs as data_specs
from harness.data.readers import load_experts
from harness.data.score_table import ScoreTable
from harness.data.steps import experts_recipe, score_training_images, select_experts
from harness.errors import HarnessError

CALLS: list[int] = []  # images per score() call of the scorer below
BUILT: list[int | None] = []  # each instance built, by its fail_after


@register_scorer("test-brightness")
class Brightness(Scorer):
    """A programmatic reward: mean pixel value in [0, 1], plus 0.001 per caption character so that
    the same image scores differently under two captions."""

    name = "test-brightness"
    version = "1"
    scale = "[0, 1]"

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        BUILT.append(fail_after)

    def score(self, images, prompts):
        if self.fail_after is not None and len(CALLS) >= self.fail_after:
            raise KeyboardInterrupt  # an interruption in the middle of the step
        CALLS.append(len(images))
        return [
            float(np.asarray(image, dtype=np.float32).mean() / 255 + 0.001 * len(p))
            for image, p in zip(images, prompts)
        ]


def jpeg(value: int, size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def brightness_of(data: bytes, caption: str) -> float:
    return float(
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32).mean() / 255 + 0.001 * len(caption)
    )


@pytest.fixture()
def pickapic(tmp_path, monkeypatch):
    """Rows as Pick-a-Pic has them: an image shown in several comparisons (same uid, same caption), once
    under another caption, a tie, and image_1 preferred."""
    import datasets

    images = {f"u{i}": jpeg(20 * i + 10, (24 + i, 16)) for i in range(6)}
    rows = [
        ("a cat", "u0", "u1", 1.0),
        ("a cat", "u0", "u2", 0.0),
        ("a dog", "u3", "u4", 0.5),
        ("a dog", "u5", "u3", 1.0),
        ("a cat on a mat", "u0", "u5", 0.0),
    ]
    table = datasets.Dataset.from_dict(
        {
            "caption": [r[0] for r in rows],
            "image_0_uid": [r[1] for r in rows],
            "image_1_uid": [r[2] for r in rows],
            "jpg_0": [images[r[1]] for r in rows],
            "jpg_1": [images[r[2]] for r in rows],
            "label_0": [r[3] for r in rows],
            "label_1": [1 - r[3] for r in rows],
        }
    )
    table.save_to_disk(str(tmp_path / "pickapic"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # score tables are cached by content: start empty
    CALLS.clear()
    return tmp_path / "pickapic", images, rows


def test_every_unique_image_caption_is_scored_once_and_an_interrupted_step_resumes(pickapic):
    source, images, rows = pickapic
    unique = {
        (uid, caption) for caption, a, b, _ in rows for uid in (a, b)
    }  # ties included (DiffusionDRO tools/pickapic.py:105-110)
    with pytest.raises(KeyboardInterrupt):
        with_failure = {"fail_after": 1}
        score_training_images(source, "test-brightness", scorer_options=with_failure, batch_size=3, progress=False)
    assert CALLS == [3]  # one batch committed before the interruption
    path = score_training_images(source, "test-brightness", batch_size=3, progress=False)
    assert sum(CALLS) == len(unique) == 8  # the rest, nothing twice
    with ScoreTable(path) as table:
        values = table.values()
        assert table.meta["scorer"] == "test-brightness" and table.meta["scale"] == "[0, 1]"
    assert values.keys() == unique
    for (uid, caption), value in values.items():
        assert value == pytest.approx(brightness_of(images[uid], caption), rel=1e-6)
    assert BUILT[-2:] == [1, None]
    CALLS.clear()
    score_training_images(source, "test-brightness", progress=False)
    assert CALLS == [] and BUILT[-2:] == [1, None]  # a finished step does nothing, and loads no scorer


def test_experts_are_the_top_k_ranked_by_the_reward_with_their_bytes_and_recipe(pickapic, tmp_path):
    source, images, rows = pickapic
    out = select_experts(source, "test-brightness", 3, tmp_path / "experts", progress=False)
    experts = [json.loads(line) for line in (out / "experts.jsonl").read_text().splitlines()]
    everything = sorted(
        ((brightness_of(images[uid], caption), uid, caption) for caption, a, b, _ in rows for uid in (a, b)),
        reverse=True,
    )
    expected = list(dict.fromkeys((uid, caption) for _, uid, caption in everything))[:3]
    assert [(e["uid"], e["caption"]) for e in experts] == expected
    for expert in experts:
        assert (out / expert["image"]).read_bytes() == images[expert["uid"]]  # copied, never re-encoded
    recipe = experts_recipe(out)
    assert recipe["scorer"] == "test-brightness" and recipe["top_k"] == 3 and recipe["scale"] == "[0, 1]"
    assert [e.score for e in load_experts(out, top_k=3)] == pytest.approx([e["score"] for e in experts])
    CALLS.clear()
    select_experts(source, "test-brightness", 3, tmp_path / "experts", progress=False)
    assert CALLS == [] and experts_recipe(out) == recipe  # kept as is
    select_experts(source, "test-brightness", 2, tmp_path / "experts", progress=False)
    assert (
        len((out / "experts.jsonl").read_text().splitlines()) == 2 and CALLS == []
    )  # new k: re-selected, not re-scored


def test_smpo_pairs_read_their_scores_from_the_table_or_say_how_to_make_them(pickapic):
    source, images, rows = pickapic
    spec = Pairs(scorer="test-brightness")
    with pytest.raises(HarnessError, match=r"harness data score --data .* --scorer test-brightness"):
        data_specs.examples(spec, source)
    score_training_images(source, "test-brightness", progress=False)
    pairs = data_specs.examples(spec, source).records
    decisive = [r for r in rows if r[3] != 0.5]
    assert len(pairs) == len(decisive)
    for pair, (caption, a, b, label) in zip(pairs, decisive):
        winner, loser = (a, b) if label == 1.0 else (b, a)
        assert pair.score_w == pytest.approx(brightness_of(images[winner], caption), rel=1e-6)
        assert pair.score_l == pytest.approx(brightness_of(images[loser], caption), rel=1e-6)
