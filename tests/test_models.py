import pytest
import torch

from harness.errors import HarnessError
from harness.models.loading import load_pipeline
from harness.testing.tiny_models import TinyPipelineConfig, clip_tokenizer, save_tiny_pipeline

PROMPTS = [
    "a red square on a blue background",
    "A photo of an astronaut riding a horse, 4k, trending on ArtStation!",
    "émigré café naïve — 東京 🚀",
    "bond",
]


def test_clip_tokenizer_matches_open_clip(harness_cache):
    import open_clip

    ours = clip_tokenizer(harness_cache / "clip-tokenizer")
    reference = open_clip.tokenizer.SimpleTokenizer()
    assert len(ours) == 49408
    for prompt in PROMPTS:
        ids = ours(prompt).input_ids
        assert ids[0] == 49406 and ids[-1] == 49407
        assert ids[1:-1] == reference.encode(prompt), prompt


def test_tiny_pipeline_round_trip(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    generator = torch.Generator().manual_seed(0)
    image = pipe("a red circle", num_inference_steps=2, generator=generator, output_type="np").images[0]
    config = TinyPipelineConfig()
    assert image.shape == (config.image_size, config.image_size, 3)
    # Saved and reloaded weights give the same images.
    again = load_pipeline(tiny_model_dir)(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images[0]
    assert (image == again).all()


def test_trained_unet_replaces_the_base_unet(tiny_model_dir, tmp_path):
    pipe = load_pipeline(tiny_model_dir)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.01)
    pipe.unet.save_pretrained(tmp_path / "unet")
    swapped = load_pipeline(tiny_model_dir, unet=tmp_path / "unet")
    base = load_pipeline(tiny_model_dir)
    first = next(swapped.unet.parameters())
    assert torch.equal(first, next(pipe.unet.parameters()))
    assert not torch.equal(first, next(base.unet.parameters()))


def test_unreachable_model_is_a_one_line_error(tmp_path):
    with pytest.raises(HarnessError) as info:
        load_pipeline(tmp_path / "no-model-here")
    assert "\n" not in str(info.value) and "no-model-here' does not exist" in str(info.value)


def test_save_is_idempotent(harness_cache):
    first = save_tiny_pipeline(harness_cache / "tiny-twice")
    mtime = (first / "model_index.json").stat().st_mtime
    assert save_tiny_pipeline(harness_cache / "tiny-twice") == first
    assert (first / "model_index.json").stat().st_mtime == mtime
