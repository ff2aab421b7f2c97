"""The offline stand-ins of the sd15 / sdxl recipes, each read through the harness's real loaders:
Pick-a-Pic v2 and HPDv2 copies in the hub layouts, SD1.5- / SDXL-shaped tiny pipelines, and
tiny weights of the six published scorers (with the plugin that registers their architecture)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from harness.data.readers import load_pairs, training_captions
from harness.errors import HarnessError
from harness.evaluation.suites import get_suite
from harness.models.loading import load_pipeline
from harness.scoring import get_scorer
from harness.testing.tiny_models import clip_tokenizer
from support.offline_world import HPDV2_STYLES, PICKAPIC_COLUMNS, pickapic_test_file, write_pickapic_v2

PLUGIN = Path(__file__).parent / "plugins" / "tiny_scorer_archs.py"

# ---------------------------------------------------------------- Pick-a-Pic v2


def test_pickapic_copy_has_the_hub_files_and_schema(pickapic_v2_dir):
    names = sorted(p.name.rsplit("-", 1)[0] for p in (pickapic_v2_dir / "data").glob("*.parquet"))
    assert names == [
        "test-00000-of-00001",
        "test_unique-00000-of-00001",
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00001",
        "validation_unique-00000-of-00001",
    ]
    schema = pq.read_schema(next((pickapic_v2_dir / "data").glob("train-00000-*.parquet")))
    published = {name: pa.type_for_alias(dtype) for name, dtype in PICKAPIC_COLUMNS.items()}
    assert {field.name: field.type for field in schema} == published
    assert b"huggingface" in schema.metadata  # the features, as datasets writes them
    card = (pickapic_v2_dir / "README.md").read_text()
    assert card.startswith("---\ndataset_info:\n") and "  - name: test_unique\n" in card


def test_pickapic_copy_loads_with_datasets_and_as_harness_pairs(pickapic_v2_dir):
    import datasets

    rows = datasets.load_dataset(str(pickapic_v2_dir), split="train")
    assert rows.column_names == list(PICKAPIC_COLUMNS) and len(rows) == 24
    labels = rows["label_0"]
    assert set(labels) == {0.0, 0.5, 1.0} and list(rows["label_1"]) == [1 - x for x in labels]

    # Pairs come out preferred-first, ties dropped, in the data set's order.
    pairs = load_pairs(pickapic_v2_dir)
    decided = [row for row in rows if row["label_0"] != 0.5]
    assert (len(pairs), pairs.ties_dropped) == (len(decided), labels.count(0.5))
    for pair, row in zip(pairs, decided):
        winner, loser = ("jpg_0", "jpg_1") if row["label_0"] == 1.0 else ("jpg_1", "jpg_0")
        assert (pair.caption, pair.image_w, pair.image_l) == (row["caption"], row[winner], row[loser])
        assert row["best_image_uid"] == row[winner.replace("jpg", "image") + "_uid"]
    assert training_captions(pickapic_v2_dir) == list(rows["caption"])


def test_pickapic_copy_is_as_varied_as_the_real_data(pickapic_v2_dir):
    import datasets

    rows = list(datasets.load_dataset(str(pickapic_v2_dir), split="train"))
    shown = [(row[f"image_{side}_uid"], row[f"jpg_{side}"], row["caption"]) for row in rows for side in (0, 1)]
    bytes_of: dict[str, set[bytes]] = {}
    captions_of: dict[str, Counter] = {}
    for uid, jpeg, caption in shown:
        bytes_of.setdefault(uid, set()).add(jpeg)
        captions_of.setdefault(uid, Counter())[caption] += 1
    assert all(len(versions) == 1 for versions in bytes_of.values())  # a uid is one image
    # Some image is compared several times for one caption and also appears under another caption.
    assert any(len(c) >= 2 and max(c.values()) >= 2 for c in captions_of.values())
    assert any(row["label_0"] == 0.0 for row in rows) and any(row["label_0"] == 1.0 for row in rows)
    captions = Counter(row["caption"] for row in rows)
    assert max(captions.values()) >= 3
    assert all(row["num_example_per_prompt"] == captions[row["caption"]] for row in rows)
    sizes = {Image.open(io.BytesIO(jpeg)).size for _, jpeg, _ in shown}
    assert len(sizes) >= 4 and any(w != h for w, h in sizes) and min(min(s) for s in sizes) < 256
    assert max(len(jpeg) for _, jpeg, _ in shown) < 20_000


def test_pickapic_test_suite_reads_test_unique_from_the_file_or_the_download(pickapic_v2_dir, tmp_path):
    import datasets

    expected = [c.strip() for c in datasets.load_dataset(str(pickapic_v2_dir), split="test_unique")["caption"]]
    assert len(expected) == len(set(expected)) == 6
    assert not set(expected) & set(training_captions(pickapic_v2_dir))
    # The shard itself, the repository download and its data/ folder (the last two failed before:
    # the directory went to load_from_disk, which only reads save_to_disk output).
    for path in (pickapic_test_file(pickapic_v2_dir), pickapic_v2_dir, pickapic_v2_dir / "data"):
        suite = get_suite(f"pickapic-test:{path}")
        assert [p.prompt for p in suite.prompts] == expected and suite.split == "seen"
    with pytest.raises(HarnessError, match=r"neither a save_to_disk directory nor a download of .*test_unique"):
        get_suite(f"pickapic-test:{tmp_path}")


def test_pickapic_copy_is_deterministic(pickapic_v2_dir, tmp_path):
    again = write_pickapic_v2(tmp_path / "again")
    for path in sorted(pickapic_v2_dir.rglob("*.*")):
        assert (again / path.relative_to(pickapic_v2_dir)).read_bytes() == path.read_bytes(), path.name
    other = write_pickapic_v2(tmp_path / "other", seed=1)
    assert pickapic_test_file(other).read_bytes() != pickapic_test_file(again).read_bytes()


def test_hpdv2_suite_reads_the_benchmark_copy(hpdv2_dir):
    files = {style: json.loads((hpdv2_dir / "benchmark" / f"{style}.json").read_text()) for style in HPDV2_STYLES}
    for path in (hpdv2_dir, hpdv2_dir / "benchmark"):
        suite = get_suite(f"hpdv2:{path}")
        assert suite.split == "unseen"
        assert [(p.category, p.prompt) for p in suite.prompts] == [(s, text) for s in HPDV2_STYLES for text in files[s]]
    assert len(suite) == 12 and len({p.prompt for p in suite.prompts}) == 12


# ---------------------------------------------------------------- SD1.5- and SDXL-shaped pipelines


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sd15_shaped_pipeline_has_sd15s_structure(tiny_sd15_dir, one_thread):
    from diffusers import DiffusionPipeline, PNDMScheduler

    pipe = load_pipeline(tiny_sd15_dir)
    unet, vae = pipe.unet.config, pipe.vae.config
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert tuple(unet.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(unet.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size and unet.addition_embed_type is None
    assert (unet.sample_size, pipe.vae_scale_factor, len(vae.block_out_channels)) == (64, 8, 4)
    assert vae.scaling_factor == 0.18215
    assert isinstance(pipe.scheduler, PNDMScheduler)
    scheduler = pipe.scheduler.config
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end, scheduler.steps_offset) == (
        "scaled_linear",
        0.00085,
        0.012,
        1,
    )
    assert type(DiffusionPipeline.from_pretrained(tiny_sd15_dir)).__name__ == "StableDiffusionPipeline"
    image = pipe(
        "a corgi on the moon",
        num_inference_steps=2,
        height=64,
        width=96,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 96, 3) and np.isfinite(image).all()


def test_sdxl_shaped_pipeline_has_sdxls_structure(tiny_sdxl_dir, harness_cache, one_thread):
    from diffusers import EulerDiscreteScheduler

    pipe = load_pipeline(tiny_sdxl_dir)  # DiffusionPipeline.from_pretrained(tiny_sdxl_dir), nothing more for SDXL
    unet, vae = pipe.unet.config, pipe.vae.config
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipe.config.force_zeros_for_empty_prompt
    assert tuple(unet.down_block_types) == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert tuple(unet.up_block_types) == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    # Hidden states of both encoders concatenated; pooled embedding + 6 size/crop numbers as extra conditioning.
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.addition_embed_type == "text_time"
    assert unet.projection_class_embeddings_input_dim == (
        pipe.text_encoder_2.config.projection_dim + 6 * unet.addition_time_embed_dim
    )
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection" and pipe.tokenizer_2.pad_token == "!"
    # The tokenizers as SDXL's hub folders hold them (vocab + merges, no tokenizer.json), tokenizing as the ones the
    # pipeline was built with.
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        assert sorted(path.name for path in (tiny_sdxl_dir / name).iterdir()) == [
            "merges.txt",
            "tokenizer_config.json",
            "vocab.json",
        ]
        built = clip_tokenizer(harness_cache / "clip-tokenizer", pad_token=pad)
        prompts = ["a corgi on the moon", "", "Émoji 🐱, ü and 中文!", "word " * 100]
        loaded = getattr(pipe, name)(prompts, padding="max_length", max_length=77, truncation=True).input_ids
        assert loaded == built(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    assert (unet.sample_size, pipe.vae_scale_factor, vae.scaling_factor) == (128, 8, 0.13025)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert (pipe.scheduler.config.beta_schedule, pipe.scheduler.config.timestep_spacing) == ("scaled_linear", "leading")
    image = pipe(
        "a corgi on the moon",
        num_inference_steps=2,
        height=64,
        width=96,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 96, 3) and np.isfinite(image).all()


# ---------------------------------------------------------------- scorers


def random_images(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.mark.parametrize("name", ["pickscore", "hpsv2", "hpsv2.1", "imagereward", "clip", "aesthetic"])
def test_every_published_scorer_builds_from_the_tiny_weights(scorer_locations, name):
    scorer = get_scorer(name, device="cpu", **scorer_locations[name])
    prompts = ["a corgi in the snow, oil painting", "a castle at sunset, anime style"]
    scores = scorer.score(random_images(0), prompts)
    assert len(scores) == 2 and all(np.isfinite(scores)) and scores[0] != scores[1]
    assert "+custom-" in scorer.version  # never stored as the published metric
    assert type(scorer).version_for(device="cpu", **scorer_locations[name]) == scorer.version  # known unbuilt


@pytest.mark.slow  # a new interpreter
def test_the_plugin_registers_the_tiny_architecture_in_another_process(scorer_locations, harness_cache, tmp_path):
    images = random_images(1)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    expected = get_scorer("hpsv2", device="cpu", **scorer_locations["hpsv2"]).score(images, ["a", "b"])
    script = f"""
import json, sys
from PIL import Image
from harness.errors import HarnessError
from harness.api.registry import load_plugin
from harness.scoring import get_scorer
from harness.testing.tiny_models import clip_tokenizer
locations = json.loads(sys.argv[1])
try:
    get_scorer("hpsv2", device="cpu", **locations)
    sys.exit("built without the plugin")
except HarnessError as error:
    assert "unknown OpenCLIP architecture" in str(error), error
load_plugin({str(PLUGIN)!r})
images = [Image.open(r"{tmp_path}/%d.png" % i) for i in range(2)]
print(json.dumps(get_scorer("hpsv2", device="cpu", **locations).score(images, ["a", "b"])))
"""
    fresh_cache = tmp_path / "cache"  # the plugin writes its architecture file into a new cache
    env = {**os.environ, "HARNESS_CACHE": str(fresh_cache)}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(scorer_locations["hpsv2"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)
    assert (fresh_cache / "open-clip-configs" / "tiny-test-ViT.json").exists()
