"""CLIP-family scorers on tiny random-init models saved in the official layouts.

Each scorer is built through ``get_scorer`` from files on disk (as the real weights would be)
and checked against a computation written here from the raw embeddings, with our own
preprocessing and open_clip's tokenizer rather than the scorer's.  The images come at the
model's size and at others (wider, taller, larger, smaller), so each scorer's resizing is
checked against the published preprocessing, written out here with PIL (``preprocessed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.api.registry import SCORERS, UnknownEntryError, register_scorer
from harness.errors import HarnessError
from harness.scoring import get_scorer, same_signal
from harness.scoring.pickscore import PickScore
from harness.testing.scorer_weights import register_tiny_open_clip, save_aesthetic_head, save_hf_clip, save_open_clip
from support.scorer_images import (
    CLIP_MEAN,
    CLIP_STD,
    OTHER_SIZES,
    longest_side_and_pad,
    longest_side_and_pad_unrounded,
    odd_sized_images,
    shortest_side_and_centre_crop,
)

SIZE = 32  # the tiny models' input resolution
TINY_ARCH = "tiny-test-ViT"
PROMPTS = ["a red cube on a table", "two dogs playing in the snow", "an oil painting of a lighthouse"]


def random_images(n: int, size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def preprocessed(images: list[Image.Image], fit=shortest_side_and_centre_crop, size: int = SIZE) -> torch.Tensor:
    """Model input: each image fitted to ``size`` x ``size``, then CLIP's normalisation,
    (x / 255 - mean) / std, channels first."""
    arrays = [(np.asarray(fit(image, size), dtype=np.float64) / 255.0 - CLIP_MEAN) / CLIP_STD for image in images]
    return torch.tensor(np.stack(arrays), dtype=torch.float32).permute(0, 3, 1, 2)


def test_the_odd_sized_images_tell_crop_pad_and_squash_apart():
    """Otherwise the scorer tests below could not see a wrong resize."""

    def squash(image: Image.Image, size: int) -> Image.Image:
        return image.resize((size, size), Image.Resampling.BICUBIC)

    images = odd_sized_images()
    not_square = [i for i, (width, height) in enumerate(OTHER_SIZES) if width != height]
    for a, b in (
        (shortest_side_and_centre_crop, longest_side_and_pad),
        (shortest_side_and_centre_crop, squash),
        (longest_side_and_pad, squash),
    ):
        gap = (preprocessed(images, a) - preprocessed(images, b)).abs().amax(dim=(1, 2, 3))
        assert (gap[not_square] > 1.0).all(), (a.__name__, b.__name__, gap)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def open_clip_tokens(prompts: list[str]) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize(prompts)  # OpenAI CLIP's BPE, the official models' tokenizer


# ---------------------------------------------------------------- transformers CLIP (PickScore, aesthetic)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir, processor dir) of a tiny CLIPModel (logit scale 3.1) and a real CLIP processor."""
    return save_hf_clip(tmp_path_factory.mktemp("hf-clip"), "tiny", logit_scale=3.1)


def hf_embeddings(
    model_dir: Path, images: list[Image.Image], prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Raw (unnormalised) projected embeddings and exp(logit_scale), straight from the saved model;
    images preprocessed as the CLIP processor does (shortest side, centre crop)."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=preprocessed(images)).pooler_output)
        text = model.text_projection(model.text_model(input_ids=open_clip_tokens(prompts)).pooler_output)
        scale = model.logit_scale.exp().item()
    return image, text, scale


def test_pickscore_is_exp_logit_scale_times_cosine(hf_clip):
    model_dir, processor_dir = hf_clip
    images = random_images(3)
    scorer = get_scorer("pickscore", model=str(model_dir), processor=str(processor_dir), device="cpu")
    image, text, scale = hf_embeddings(model_dir, images, PROMPTS)
    expected = scale * cosine(image, text)
    assert scale == pytest.approx(np.exp(3.1), rel=1e-5)
    np.testing.assert_allclose(scorer.score(images, PROMPTS), expected.numpy(), rtol=1e-4, atol=1e-4)
    # Resized by the processor: on the 40x24 image a few of its pixels are one intensity level off
    # PIL's (a score difference of ~1.5e-3, where a pad or a squash moves scores by 0.01 to 0.8).
    others = odd_sized_images(seed=5)
    prompts = [PROMPTS[i % 3] for i in range(len(others))]
    image, text, _ = hf_embeddings(model_dir, others, prompts)
    np.testing.assert_allclose(
        scorer.score(others, prompts), (scale * cosine(image, text)).numpy(), rtol=1e-4, atol=2e-3
    )
    # Scores depend on the pair, not on what else is in the batch (padding, batching).
    assert scorer.score(images[1:2], PROMPTS[1:2])[0] == pytest.approx(float(expected[1]), rel=1e-4, abs=1e-4)
    swapped = scorer.score(images, PROMPTS[::-1])
    assert swapped[0] != pytest.approx(float(expected[0]), abs=1e-3)
    assert scorer.version.startswith("v1+custom-") and scorer.higher_is_better


def test_pickscore_cosine_is_the_raw_cosine_smpo_stores(hf_clip):
    model_dir, processor_dir = hf_clip
    images = random_images(2, seed=4)
    scorer = get_scorer("pickscore-cosine", model=str(model_dir), processor=str(processor_dir), device="cpu")
    image, text, _ = hf_embeddings(model_dir, images, PROMPTS[:2])
    np.testing.assert_allclose(scorer.score(images, PROMPTS[:2]), cosine(image, text).numpy(), rtol=1e-4, atol=1e-5)
    assert scorer.name == "pickscore-cosine" and scorer.family == "pickscore"


def test_aesthetic_is_a_linear_head_on_normalised_image_embeddings(hf_clip, tmp_path):
    model_dir, processor_dir = hf_clip
    head = torch.nn.Linear(16, 1)
    head.load_state_dict(
        torch.load(save_aesthetic_head(tmp_path / "sa_0_4_vit_l_14_linear.pth", 16), weights_only=True)
    )
    images = random_images(3, seed=1) + odd_sized_images(seed=1)
    prompts = [PROMPTS[i % 3] for i in range(len(images))]
    scorer = get_scorer(
        "aesthetic", model=str(model_dir), processor=str(processor_dir), checkpoint=str(tmp_path), device="cpu"
    )
    image, _, _ = hf_embeddings(model_dir, images, prompts)
    with torch.no_grad():
        expected = head(image / image.norm(dim=-1, keepdim=True)).squeeze(-1)
    np.testing.assert_allclose(scorer.score(images, prompts), expected.numpy(), rtol=1e-4, atol=1e-5)
    # The prompt plays no part in an aesthetic rating.
    assert scorer.score(images, [""] * len(images)) == pytest.approx(scorer.score(images, prompts))

    with pytest.raises(HarnessError, match=r"sa_0_4_vit_l_14_linear\.pth is not cached and HF_HUB_OFFLINE is set"):
        get_scorer("aesthetic", model=str(model_dir), processor=str(processor_dir))  # the head's default is a URL
    torch.save(torch.nn.Linear(8, 1).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(HarnessError, match=r"expected a Linear\(16, 1\)"):
        get_scorer(
            "aesthetic", model=str(model_dir), processor=str(processor_dir), checkpoint=str(tmp_path / "wrong.pth")
        )


# ---------------------------------------------------------------- OpenCLIP (HPSv2 v2.0 / v2.1, CLIP score)


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding HPSv2-style and OpenCLIP-style checkpoints of a tiny registered architecture."""
    root = tmp_path_factory.mktemp("open-clip")
    register_tiny_open_clip(root, TINY_ARCH)
    for seed, filename, wrapped in (
        (0, "HPS_v2_compressed.pt", True),
        (1, "HPS_v2.1_compressed.pt", True),
        (2, "open_clip_pytorch_model.bin", False),
    ):
        save_open_clip(root / filename, TINY_ARCH, training_checkpoint=wrapped, seed=seed)
    return root


def open_clip_cosine(checkpoint: Path, images: list[Image.Image], prompts: list[str], fit) -> torch.Tensor:
    import open_clip

    model = open_clip.create_model(TINY_ARCH, pretrained=None).eval()
    state = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    with torch.no_grad():
        return cosine(model.encode_image(preprocessed(images, fit)), model.encode_text(open_clip_tokens(prompts)))


@pytest.mark.parametrize("name, filename", [("hpsv2", "HPS_v2_compressed.pt"), ("hpsv2.1", "HPS_v2.1_compressed.pt")])
def test_hpsv2_is_100_times_cosine_with_its_own_checkpoint(tiny_open_clip, name, filename):
    images = random_images(3, seed=2) + odd_sized_images(seed=2)
    prompts = [PROMPTS[i % 3] for i in range(len(images))]
    scorer = get_scorer(name, checkpoint=str(tiny_open_clip), arch=TINY_ARCH, device="cpu")
    scores = scorer.score(images, prompts)
    expected = 100 * open_clip_cosine(tiny_open_clip / filename, images, prompts, longest_side_and_pad_unrounded)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-5)
    # The 8-bit PIL resize (what the native scorer did first) gives other numbers: the check above tells them apart.
    rounded = 100 * open_clip_cosine(tiny_open_clip / filename, images, prompts, longest_side_and_pad)
    resized = [3 + i for i, (width, height) in enumerate(OTHER_SIZES) if max(width, height) != SIZE]
    assert (np.abs(np.asarray(scores) - rounded.numpy())[resized] > 1e-5).all()
    # The preprocessing revision is in the version (cached scores of the 8-bit resize are never reused), the
    # weights' name in front of it.
    assert scorer.name == name and scorer.version.startswith({"hpsv2": "v2.0+pre1", "hpsv2.1": "v2.1+pre1"}[name])


def test_hpsv2_versions_are_distinct_metrics(tiny_open_clip):
    images = random_images(2, seed=3)
    v20 = get_scorer("hpsv2", checkpoint=str(tiny_open_clip), arch=TINY_ARCH, device="cpu")
    v21 = get_scorer("hpsv2.1", checkpoint=str(tiny_open_clip), arch=TINY_ARCH, device="cpu")
    assert v20.version != v21.version
    assert v20.score(images, PROMPTS[:2]) != pytest.approx(v21.score(images, PROMPTS[:2]))


def test_hps_preprocessing_keeps_the_whole_image_and_pads():
    from harness.scoring.hpsv2 import hps_transform

    # A 2:1 image becomes 32x16 content centred in a 32x32 square of black (zero) padding.
    image = Image.fromarray(np.full((20, 40, 3), 200, dtype=np.uint8))
    tensor = hps_transform(SIZE)(image)
    assert tensor.shape == (3, SIZE, SIZE)
    black = torch.tensor((0 - CLIP_MEAN) / CLIP_STD, dtype=torch.float32)
    content = torch.tensor((200 / 255 - CLIP_MEAN) / CLIP_STD, dtype=torch.float32)
    torch.testing.assert_close(tensor[:, :8, :], black[:, None, None].expand(3, 8, SIZE))
    torch.testing.assert_close(tensor[:, 24:, :], black[:, None, None].expand(3, 8, SIZE))
    torch.testing.assert_close(tensor[:, 8:24, :], content[:, None, None].expand(3, 16, SIZE), atol=0.02, rtol=0)


def test_clip_score_is_plain_cosine(tiny_open_clip):
    images = random_images(3, seed=4) + odd_sized_images(seed=4)
    prompts = [PROMPTS[i % 3] for i in range(len(images))]
    scorer = get_scorer(
        "clip", checkpoint=str(tiny_open_clip / "open_clip_pytorch_model.bin"), arch=TINY_ARCH, device="cpu"
    )
    expected = open_clip_cosine(
        tiny_open_clip / "open_clip_pytorch_model.bin", images, prompts, shortest_side_and_centre_crop
    )
    scores = scorer.score(images, prompts)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert all(-1 <= s <= 1 for s in scores)
    # Its image embeddings (in-prompt diversity's space) are the unit vectors the score takes the cosine of.
    embeddings = np.asarray(scorer.embed(images))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    with torch.inference_mode():
        text = scorer.model.encode_text(scorer.tokenizer(prompts), normalize=True).float().numpy()
    np.testing.assert_allclose((embeddings * text).sum(axis=1), expected.numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- loading rules shared by all scorers


def test_every_scorer_is_registered_and_describes_its_scale():
    for name in ("pickscore", "hpsv2", "hpsv2.1", "imagereward", "clip", "aesthetic"):
        cls = SCORERS.get(name)
        assert cls.name == name and cls.version and cls.scale and cls.description and cls.higher_is_better


def test_scorers_of_one_family_are_one_signal(monkeypatch):
    hps = ["hpsv2", "hpsv2-official", "hpsv2.1", "hpsv2.1-official"]  # the official packages are the same signal
    assert same_signal("hpsv2") == same_signal("hpsv2.1-official") == hps
    assert same_signal("pickscore") == same_signal("pickscore-cosine") == ["pickscore", "pickscore-cosine"]
    assert same_signal("imagereward") == ["imagereward", "imagereward-official"]
    for name in ("clip", "aesthetic", "toy-fidelity", "toy-quality"):
        assert same_signal(name) == [name]
    with pytest.raises(UnknownEntryError, match=r"^unknown scorer 'nosuch'; available: .*hpsv2"):
        same_signal("nosuch")

    SCORERS.names()  # built-ins loaded before the entries are copied
    monkeypatch.setattr(SCORERS, "_entries", dict(SCORERS._entries))  # undone after the test

    @register_scorer("pickscore-test-cosine")
    class Cosine(PickScore):
        name = "pickscore-test-cosine"
        family = "pickscore"

    @register_scorer("pickscore-test-variant")
    class Variant(PickScore):  # a new name without a family: its own signal, not inherited
        name = "pickscore-test-variant"

    assert (
        same_signal("pickscore")
        == same_signal("pickscore-test-cosine")
        == ["pickscore", "pickscore-cosine", "pickscore-test-cosine"]
    )
    assert same_signal("pickscore-test-variant") == ["pickscore-test-variant"]


@pytest.mark.parametrize(
    "name, locations, message",
    [
        ("hpsv2", {}, r"HPS_v2_compressed\.pt .*xswu/HPSv2.*hf download"),
        ("hpsv2.1", {}, r"HPS_v2\.1_compressed\.pt"),
        ("clip", {}, r"open_clip_pytorch_model\.bin .*laion/CLIP-ViT-H-14"),
        ("pickscore", {}, r"yuvalkirstain/PickScore_v1.*hf download"),
        ("imagereward", {}, r"ImageReward\.pt .*THUDM/ImageReward"),
        ("hpsv2", {"checkpoint": "/nowhere/HPS_v2_compressed.pt"}, r"no such file or directory /nowhere"),
        ("pickscore", {"model": "./no/such/dir"}, r"no such directory \./no/such/dir"),
    ],
)
def test_missing_weights_give_one_line_naming_the_file(name, locations, message):
    # conftest sets HF_HUB_OFFLINE=1: nothing is downloaded, the hub cache is empty.
    with pytest.raises(HarnessError, match=message) as info:
        get_scorer(name, **locations)
    assert "\n" not in str(info.value)


def test_a_directory_without_the_file_says_where_to_put_it(tmp_path):
    with pytest.raises(HarnessError, match=rf"{tmp_path} has no HPS_v2_compressed\.pt; .*checkpoint="):
        get_scorer("hpsv2", checkpoint=str(tmp_path))


class _Payload:
    """Unpickling this would create a file: a checkpoint must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_never_unpickle_code(tmp_path, tiny_open_clip):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": _Payload(marker)}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(HarnessError, match="cannot read weights"):
        get_scorer("hpsv2", checkpoint=str(tmp_path), arch=TINY_ARCH)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_architecture_are_reported(tmp_path, tiny_open_clip):
    torch.save({"state_dict": {"visual.unknown": torch.zeros(1)}}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(
        HarnessError, match=r"do not fit OpenCLIP tiny-test-ViT: missing .*unexpected \['visual.unknown'\]"
    ):
        get_scorer("hpsv2", checkpoint=str(tmp_path), arch=TINY_ARCH)
