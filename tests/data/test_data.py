"""Training data readers and the frozen-feature cache."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from harness.api import Experts, LabelledImages, Pairs
from harness.data import specs as data_specs
from harness.data.readers import (
    Expert,
    ImageLoader,
    content_key,
    load_experts,
    load_pairs,
    to_pixels,
    top_k_experts,
    training_captions,
)
from harness.errors import HarnessError
from support.train_fixtures import one_torch_thread, write_expert_dir, write_pair_dir  # noqa: F401 (autouse fixture)


def test_local_pairs_put_the_preferred_image_first_and_drop_ties(tmp_path):
    write_pair_dir(tmp_path, n_pairs=4)
    pairs = load_pairs(tmp_path)
    assert len(pairs) == 4  # the tie row is dropped
    assert pairs[0].image_w == tmp_path / "0_0.png"  # label_0 = 1: image_0 wins
    assert pairs[1].image_w == tmp_path / "1_1.png"  # label_0 = 0: image_1 wins
    assert all(p.score_w > p.score_l for p in pairs)  # scores travel with their images


def test_bad_label_and_missing_fields_are_one_line_errors(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"caption": "x", "image_0": "a", "image_1": "b", "label_0": 0.7}))
    with pytest.raises(HarnessError, match="label_0 must be"):
        load_pairs(tmp_path)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"caption": "x", "image_0": "a"}))
    with pytest.raises(HarnessError, match="missing field.*image_1"):
        load_pairs(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("{not json")
    with pytest.raises(HarnessError, match="not valid JSON"):
        load_pairs(tmp_path)


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pickapic_through_datasets_local_copy_drops_ties_and_orients_pairs(tmp_path):
    import datasets

    red, blue, green = png_bytes((255, 0, 0)), png_bytes((0, 0, 255)), png_bytes((0, 255, 0))
    table = datasets.Dataset.from_dict(
        {
            "caption": ["red wins", "blue wins", "tie"],
            "jpg_0": [red, red, green],
            "jpg_1": [blue, blue, green],
            "label_0": [1.0, 0.0, 0.5],
        }
    )
    table.save_to_disk(str(tmp_path / "pickapic"))
    pairs = load_pairs(tmp_path / "pickapic")
    assert len(pairs) == 2 and pairs.ties_dropped == 1
    assert pairs[0].image_w == red and pairs[1].image_w == blue
    assert ImageLoader().load(pairs[1].image_w).getpixel((0, 0)) == (0, 0, 255)


def test_the_synthetic_pickapic_split_reads_as_a_downloaded_dataset_folder(tmp_path, monkeypatch):
    """bench/data_loader.py's split: the hub's parquet layout, read by the real loader (ties dropped, pairs
    oriented), every image distinct."""
    import pyarrow.parquet as pq

    from harness.testing.pickapic import write_pickapic

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    write_pickapic(tmp_path / "pp", 20, image_size=16)
    rows = pq.read_table(next((tmp_path / "pp" / "data").glob("train-*.parquet"))).to_pylist()
    pairs = load_pairs(tmp_path / "pp")
    assert len(pairs) == 18 and pairs.ties_dropped == 2  # rows 9 and 19
    assert pairs[0].image_w == rows[0]["jpg_1"] and pairs[1].image_w == rows[1]["jpg_0"]  # label_0 0, then 1
    assert len({content_key(p.image_w) for p in pairs} | {content_key(p.image_l) for p in pairs}) == 36
    assert ImageLoader().load(pairs[0].image_w).size == (16, 16)


def test_missing_dataset_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="cannot load dataset"):
        load_pairs(tmp_path / "nowhere")


def test_corrupt_images_are_counted_not_raised(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    loader = ImageLoader()
    assert loader.load(tmp_path / "bad.png") is None
    assert loader.load(tmp_path / "missing.png") is None
    assert loader.load(png_bytes((1, 2, 3))) is not None
    assert len(loader.skipped) == 2


def test_to_pixels_resizes_centre_crops_and_scales():
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    pixels = to_pixels(image, 16)
    assert pixels.shape == (3, 16, 16)
    assert torch.allclose(pixels[0], torch.ones(16, 16)) and torch.allclose(pixels[1], -torch.ones(16, 16))


@pytest.mark.parametrize("size", [(97, 61), (40, 123), (64, 64)])
def test_to_pixels_is_the_public_scripts_torchvision_transform(size):
    from torchvision import transforms

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    for flip in (False, True):
        published = transforms.Compose(
            [
                transforms.Resize(32, interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.CenterCrop(32),
                transforms.RandomHorizontalFlip(p=1.0 if flip else 0.0),
                transforms.ToTensor(),
                transforms.Normalize([0.5], [0.5]),
            ]
        )
        torch.testing.assert_close(to_pixels(image, 32, flip=flip), published(image), rtol=0, atol=1e-6)


def test_experts_from_jsonl_or_from_scored_pairs(tmp_path):
    write_expert_dir(tmp_path / "e", n=3)
    assert [e.score for e in load_experts(tmp_path / "e")] == pytest.approx([1.0, 0.9, 0.8])
    write_pair_dir(tmp_path / "p", n_pairs=4)
    top = load_experts(tmp_path / "p", top_k=3)  # the top 3 by the pairs' own scores
    assert [round(e.score, 3) for e in top] == [0.24, 0.23, 0.22]
    winners = data_specs.examples(Experts(), tmp_path / "p")  # no ranking: SFT on the preferred images
    assert len(winners) == 4 and winners[1].images == (tmp_path / "p" / "1_1.png",)


def test_experts_ranked_by_a_reward_never_fall_back_silently(tmp_path):
    write_pair_dir(tmp_path / "p", n_pairs=4)
    with pytest.raises(HarnessError, match=r"harness data experts --data .* --scorer hpsv2 --top-k 500"):
        data_specs.examples(Experts(scorer="hpsv2", top_k=500), tmp_path / "p")
    rows = (tmp_path / "p" / "pairs.jsonl").read_text().splitlines()
    (tmp_path / "p" / "pairs.jsonl").write_text("\n".join(r.replace('"score_0"', '"s0"') for r in rows))
    with pytest.raises(HarnessError, match="needs score_0 and score_1"):
        load_experts(tmp_path / "p", top_k=2)  # unscored pairs: no winners-as-experts substitute


def test_top_k_also_cuts_an_experts_file(tmp_path):
    write_expert_dir(tmp_path / "e", n=3)
    assert [e.score for e in load_experts(tmp_path / "e", top_k=2)] == pytest.approx([1.0, 0.9])
    assert len(load_experts(tmp_path / "e", top_k=10)) == 3  # fewer rows than k: all of them
    rows = (tmp_path / "e" / "experts.jsonl").read_text().splitlines()
    (tmp_path / "e" / "experts.jsonl").write_text("\n".join(r.replace('"score"', '"unscored"') for r in rows))
    with pytest.raises(HarnessError, match="needs a 'score'"):
        load_experts(tmp_path / "e", top_k=2)


def test_top_k_counts_each_image_once(tmp_path):
    same = png_bytes((9, 9, 9))
    experts = [Expert("a", same, 0.9), Expert("b", same, 0.8), Expert("c", png_bytes((1, 1, 1)), 0.1)]
    assert [e.caption for e in top_k_experts(experts, 2)] == ["a", "c"]


def test_feature_cache_is_content_keyed_and_reused(tiny_model_dir, tmp_path):
    from harness.models.loading import load_pipeline
    from harness.train.features import FeatureEncoder

    write_pair_dir(tmp_path / "d", n_pairs=2)
    sources = [tmp_path / "d" / "0_0.png", tmp_path / "d" / "0_1.png"]
    pipe = load_pipeline(tiny_model_dir)
    first = FeatureEncoder(
        pipe, device=torch.device("cpu"), resolution=32, cache_dir=tmp_path / "c", loader=ImageLoader()
    )
    latents = first.latents(sources)
    cond = first.cond(["a photo", ""])
    assert latents[0][1].mean.shape == (4, 8, 8) and cond.hidden.shape == (2, 77, 32)
    assert latents[0][0] == content_key(sources[0])
    # A second encoder (a new run) reads the disk cache: poison its VAE to prove it is not called.
    second = FeatureEncoder(
        pipe, device=torch.device("cpu"), resolution=32, cache_dir=tmp_path / "c", loader=ImageLoader()
    )
    second._encode_image = None  # type: ignore[assignment]
    again = second.latents(sources)
    assert all(torch.equal(a[1].mean, b[1].mean) and torch.equal(a[1].std, b[1].std) for a, b in zip(latents, again))
    assert torch.equal(second.cond(["a photo", ""]).hidden, cond.hidden)
    # A flipped image is another entry: the VAE's latent of a mirrored image, under its own key.
    flipped = first.latents(sources[:1], [True])[0]
    assert flipped[0] == content_key(sources[0]) + "-flip" and not torch.equal(flipped[1].mean, latents[0][1].mean)
    # Other VAE weights: another fingerprint, so the old entries are never served.
    with torch.no_grad():
        next(pipe.vae.parameters()).add_(1.0)
    third = FeatureEncoder(
        pipe, device=torch.device("cpu"), resolution=32, cache_dir=tmp_path / "c", loader=ImageLoader()
    )
    assert third.latent_dir != first.latent_dir


def test_cached_latents_do_not_depend_on_what_was_cached_before(tiny_model_dir, tmp_path):
    """A first run killed after caching some images, then rerun, must see the features of an uninterrupted
    run: each entry is computed alone, whatever else was encoded in the same call."""
    from harness.models.loading import load_pipeline
    from harness.train.features import FeatureEncoder

    write_pair_dir(tmp_path / "d", n_pairs=4)
    sources = sorted((tmp_path / "d").glob("*.png"))
    pipe = load_pipeline(tiny_model_dir)

    def encoder(cache: str) -> FeatureEncoder:
        return FeatureEncoder(
            pipe, device=torch.device("cpu"), resolution=32, cache_dir=tmp_path / cache, loader=ImageLoader()
        )

    at_once = encoder("a").latents(sources)
    piecemeal = encoder("b")
    piecemeal.latents(sources[5:6])  # what an interrupted run (or another worker) cached first
    piecemeal.latents(sources[1:4])
    later = encoder("b").latents(sources)
    for (_, x), (_, y) in zip(at_once, later):
        assert torch.equal(x.mean, y.mean) and torch.equal(x.std, y.std)


def test_training_captions_cover_pairs_and_experts_but_not_ties(tmp_path):
    data = write_pair_dir(tmp_path / "data", n_pairs=3)
    write_expert_dir(data, n=2)
    assert training_captions(data) == [f"a photo of thing {i}" for i in range(3)] + [
        f"an expert picture {i}" for i in range(2)
    ]


def test_labelled_images_from_pairs_or_from_their_own_file(tmp_path):
    write_pair_dir(tmp_path / "p", n_pairs=3)
    pairs = data_specs.examples(Pairs(), tmp_path / "p")
    labelled = data_specs.examples(LabelledImages(), tmp_path / "p")
    assert len(labelled) == 2 * len(pairs)  # each pair: its winner desirable, then its loser undesirable
    for i, pair in enumerate(pairs):
        assert labelled[2 * i].images == pair.images[:1] and labelled[2 * i].labels == (1.0,)
        assert labelled[2 * i + 1].images == pair.images[1:] and labelled[2 * i + 1].labels == (0.0,)
        assert labelled[2 * i].scores + labelled[2 * i + 1].scores == pair.scores
    own = tmp_path / "l"
    own.mkdir()
    (own / "labelled.jsonl").write_text(
        '{"caption": "a", "image": "x.png", "label": 1}\n{"caption": "b", "image": "y.png", "label": 0, "score": 0.5}\n'
    )
    rows = data_specs.examples(LabelledImages(), own)
    assert [(r.caption, r.images, r.labels) for r in rows] == [
        ("a", (own / "x.png",), (1.0,)),
        ("b", (own / "y.png",), (0.0,)),
    ]
    assert training_captions(own) == ["a", "b"]
    (own / "labelled.jsonl").write_text('{"caption": "a", "image": "x.png", "label": 0.7}\n')
    with pytest.raises(HarnessError, match=r"labelled.jsonl:1: label must be 1 \(desirable\) or 0"):
        data_specs.examples(LabelledImages(), own)


def test_half_precision_latents_are_rounded_once_whether_cached_or_not(tiny_model_dir, tmp_path):
    """float16 posteriors: fp32's rounded to the nearest half (numpy's rounding, computed apart), stored as halves,
    the same values from the disk, from memory and uncached; an fp32 cache in the same folder is never read."""
    from safetensors import safe_open

    from harness.models.loading import load_pipeline
    from harness.train.features import FeatureEncoder

    write_pair_dir(tmp_path / "d", n_pairs=2)
    sources = sorted((tmp_path / "d").glob("*.png"))[:3]
    pipe = load_pipeline(tiny_model_dir)

    def encoder(precision: str, cache: str | None = "c") -> FeatureEncoder:
        where = None if cache is None else tmp_path / cache
        return FeatureEncoder(
            pipe, device=torch.device("cpu"), resolution=32, cache_dir=where, loader=ImageLoader(), precision=precision
        )

    full = encoder("float32")
    exact = [p for _, p in full.latents(sources)]
    assert full.latent_dir.name.endswith("-32")  # float32 keeps the folder caches had before latent_precision
    half = encoder("float16")
    assert half.latent_dir == full.latent_dir.with_name(full.latent_dir.name + "-float16")
    encoded = half._encode_image
    calls = []
    half._encode_image = lambda pixels: calls.append(1) or encoded(pixels)
    rounded = [p for _, p in half.latents(sources)]
    assert len(calls) == len(sources)  # the fp32 entries beside them were not served to the fp16 run
    for x, y in zip(exact, rounded):
        for a, b in ((x.mean, y.mean), (x.std, y.std)):
            assert b.dtype == torch.float32 and not torch.equal(a, b)
            assert torch.equal(b, torch.from_numpy(a.numpy().astype(np.float16).astype(np.float32)))
            assert ((a - b).abs() <= a.abs() * 2.0**-11 + 2.0**-25).all()  # half a unit in fp16's last place
    entry = next(half.latent_dir.rglob("*.safetensors"))
    with safe_open(str(entry), "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys()} == {torch.float16}
    from_disk = encoder("float16")
    uncached = encoder("float16", cache=None)
    from_disk._encode_image = half._encode_image = None  # type: ignore[assignment]
    served = [half.latents(sources), from_disk.latents(sources), uncached.latents(sources)]  # memory, disk, none
    for fresh, *others in zip(rounded, *([p for _, p in s] for s in served)):
        assert all(torch.equal(o.mean, fresh.mean) and torch.equal(o.std, fresh.std) for o in others)


def test_auto_caches_when_the_estimate_fits_half_the_free_space(tmp_path):
    from harness.train.features import CacheEstimate, free_space

    # SD1.5 at 512 px: 4 x 64 x 64 latents, a mean and a std each: 2 x 16384 x 2 bytes = 64 KiB in float16.
    sd15 = CacheEstimate(images=1000, latent_shape=(4, 64, 64), precision="float16", free=0)
    assert sd15.per_image == 64 * 1024 and sd15.needed == 1000 * 64 * 1024
    assert CacheEstimate(1000, (4, 64, 64), "float32", 0).per_image == 128 * 1024
    fits = CacheEstimate(1000, (4, 64, 64), "float16", free=2 * sd15.needed)
    short = CacheEstimate(1000, (4, 64, 64), "float16", free=2 * sd15.needed - 1)
    assert fits.caches("auto") and not short.caches("auto")
    assert short.caches(True) and not fits.caches(False)  # an explicit setting wins
    assert short.describe("auto").startswith("auto -> off: latents <= 62.5 MiB (1,000 images x 64.0 KiB")
    assert fits.describe(False).startswith("set -> off")
    # A cache folder not made yet: the free space of the disk it will be made on.
    assert abs(free_space(tmp_path / "not" / "yet") - free_space(tmp_path)) < 1 << 30


def test_latent_precision_and_cache_features_are_checked(tmp_path):
    from harness.train.trainer import resolve_config

    assert resolve_config("dpo", "tiny").latent_precision == "float16"
    assert resolve_config("dpo", "toy").latent_precision == "float32"  # the toy leaderboard predates fp16 caches
    assert resolve_config("dpo", "tiny", {"cache_features": "auto"}).cache_features == "auto"
    assert resolve_config("dpo", "tiny", {"cache_features": "false"}).cache_features is False
    with pytest.raises(HarnessError, match="latent_precision must be one of float16, float32, not 'bfloat16'"):
        resolve_config("dpo", "tiny", {"latent_precision": "bfloat16"})
    with pytest.raises(HarnessError, match="cache_features must be one of True, False, auto, not 'maybe'"):
        resolve_config("dpo", "tiny", {"cache_features": "maybe"})
