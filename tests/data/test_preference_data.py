"""Synthesised preference data: the noisy labeller, and synthesize() on a tiny random-init pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.data.synthesis import noisy_label, synthesize
from harness.errors import HarnessError

CAPTIONS = ["a red circle on the left", "a blue square at the top", "a white triangle in the center"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_noisy_label_follows_bradley_terry() -> None:
    rng = np.random.default_rng(0)
    temperature = 0.05
    labels = [noisy_label(temperature, temperature, 1e-3, rng) for _ in range(4000)]
    # A utility gap of one temperature: image 0 preferred with probability sigmoid(1) = 0.731.
    assert np.mean(labels) == pytest.approx(1 / (1 + math.exp(-1)), abs=0.03)
    assert np.mean([noisy_label(-0.5, temperature, 1e-3, rng) for _ in range(500)]) == 0.0
    assert noisy_label(5e-4, temperature, 1e-3, rng) == 0.5  # a tie


@pytest.fixture(scope="module")
def synthesized(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    settings = dict(
        scorers=["toy-fidelity", "toy-quality"],
        samples_per_caption=4,
        seed=0,
        pairs_per_caption=3,
        expert_top_k=5,
        num_inference_steps=2,
        batch_size=6,
    )
    synthesize(tiny_model_dir, CAPTIONS, out, **settings)
    return out, settings


def test_synthesize_writes_pairs_experts_and_scores(synthesized) -> None:
    out, _ = synthesized
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == len(CAPTIONS) * 4
    assert all((out / s["image"]).is_file() for s in samples)
    for s in samples:  # the reward is the equal-weight mean of the scorers
        assert s["reward"] == pytest.approx((s["toy-fidelity"] + s["toy-quality"]) / 2)
    reward = {s["image"]: s["reward"] for s in samples}
    caption_of = {s["image"]: s["caption"] for s in samples}

    pairs = read_jsonl(out / "pairs.jsonl")
    assert len(pairs) == len(CAPTIONS) * 3
    for p in pairs:
        assert p["image_0"] != p["image_1"]
        assert caption_of[p["image_0"]] == caption_of[p["image_1"]] == p["caption"]
        assert p["label_0"] in (0.0, 0.5, 1.0)
        assert (p["score_0"], p["score_1"]) == (reward[p["image_0"]], reward[p["image_1"]])

    experts = read_jsonl(out / "experts.jsonl")
    assert [e["score"] for e in experts] == sorted(reward.values(), reverse=True)[:5]
    assert all(reward[e["image"]] == e["score"] and caption_of[e["image"]] == e["caption"] for e in experts)


def test_the_trainer_side_reads_the_synthesized_data(synthesized) -> None:
    from harness.data.readers import load_experts, load_pairs

    out, _ = synthesized
    rows = read_jsonl(out / "pairs.jsonl")
    pairs = load_pairs(out)
    assert len(pairs) == sum(r["label_0"] != 0.5 for r in rows)
    assert all(p.image_w.is_file() for p in pairs)
    assert len(load_experts(out)) == 5


def test_synthesize_is_idempotent_and_redoes_work_when_settings_change(synthesized, tiny_model_dir: Path) -> None:
    out, settings = synthesized
    before = {name: (out / name).stat().st_mtime_ns for name in ("pairs.jsonl", "experts.jsonl", "samples.jsonl")}
    synthesize(tiny_model_dir, CAPTIONS, out, **settings)
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    # A different labeller: labels are redrawn from the same images (no new sampling needed).
    synthesize(tiny_model_dir, CAPTIONS, out, **{**settings, "expert_top_k": 2, "temperature": 1e-6})
    experts = read_jsonl(out / "experts.jsonl")
    assert len(experts) == 2
    # With a near-zero temperature and a single-scorer panel the label is the utility's argmax.
    synthesize(tiny_model_dir, CAPTIONS, out, **{**settings, "temperature": 1e-6, "scorers": ["toy-fidelity"]})
    for p in read_jsonl(out / "pairs.jsonl"):
        if abs(p["score_0"] - p["score_1"]) >= 1e-3:
            assert p["label_0"] == float(p["score_0"] > p["score_1"])


def _data_files(data_dir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(data_dir)): path.read_bytes()
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and not path.name.startswith("scores.sqlite")
    }


def test_data_made_once_is_copied_from_the_cache(
    synthesized, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import harness.data.synthesis as preference_data

    _, settings = synthesized
    cache = tmp_path / "cache"
    first = synthesize(tiny_model_dir, CAPTIONS, tmp_path / "first", cache_dir=cache, **settings)
    (entry,) = cache.iterdir()
    assert not list(entry.glob("scores.sqlite*"))  # the synthesis's own score cache is not published

    def no_sampling(*args, **kwargs):
        raise AssertionError("the base model was sampled again")

    monkeypatch.setattr(preference_data, "_sample", no_sampling)
    second = synthesize(tiny_model_dir, CAPTIONS, tmp_path / "second", cache_dir=cache, **settings)
    assert _data_files(second) == _data_files(first)
    assert len(_data_files(second)) > len(CAPTIONS) * 4  # the images came too
    # Other settings are other data: made again (here: the sampler is called).
    with pytest.raises(AssertionError, match="sampled again"):
        synthesize(tiny_model_dir, CAPTIONS, tmp_path / "third", cache_dir=cache, **{**settings, "seed": 1})


def test_the_cache_key_follows_the_model_files_and_skips_hub_models(
    synthesized, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import os
    import shutil

    from harness.data.synthesis import _cache_entry

    _, settings = synthesized
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    before = _cache_entry(tmp_path, model, settings)
    assert _cache_entry(tmp_path, model, settings) == before
    weights = next(model.glob("unet/*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))  # retrained in place
    assert _cache_entry(tmp_path, model, settings) != before
    assert _cache_entry(tmp_path, model, {**settings, "seed": 7}) not in (
        before,
        _cache_entry(tmp_path, model, settings),
    )
    assert _cache_entry(tmp_path, "org/hub-model", settings) is None  # a hub id names no fixed files


@pytest.mark.parametrize(
    "change, message",
    [
        ({"samples_per_caption": 1}, "samples_per_caption"),
        ({"pairs_per_caption": 7}, "pairs_per_caption"),
        ({"expert_top_k": 0}, "expert_top_k"),
        ({"scorers": []}, "scorer"),
        ({"scorer_weights": [1.0]}, "scorer_weights"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_settings_fail_with_one_line(change, message, tmp_path: Path) -> None:
    settings = {**dict(scorers=["toy-fidelity", "toy-quality"], samples_per_caption=4, seed=0), **change}
    with pytest.raises(HarnessError, match=message):
        synthesize("unused", CAPTIONS, tmp_path, **settings)
