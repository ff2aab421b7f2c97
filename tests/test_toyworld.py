"""The toy world: grammar, renderer, rewards on hand-made images, suites, base model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from toyworld import rewards
from toyworld.grammar import (
    BACKGROUND,
    COLOURS,
    POSITIONS,
    SHAPES,
    Scene,
    all_scenes,
    parse_caption,
    seen_scenes,
    training_captions,
    unseen_scenes,
)
from toyworld.render import Degradation, render, to_pil

SIZE = 32


# --- hand-made images: drawn here with plain array indexing, independently of the renderer ---


def canvas() -> np.ndarray:
    return np.tile(np.asarray(BACKGROUND), (SIZE, SIZE, 1))


def draw(image: np.ndarray, shape: str, colour: str, cx: int, cy: int) -> np.ndarray:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    if shape == "square":
        inside = (np.abs(xs - cx) <= 5.5) & (np.abs(ys - cy) <= 5.5)
    elif shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= 36
    else:  # triangle, apex up, rows widening by one pixel per row on each side
        row = ys - (cy - 7)
        inside = (row >= 0) & (row <= 14) & (np.abs(xs - cx) <= row * 8 / 14)
    image = image.copy()
    image[inside] = COLOURS[colour]
    return image


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    k = 2 * radius + 1
    return sum(padded[dy : dy + SIZE, dx : dx + SIZE] for dy in range(k) for dx in range(k)) / k**2


RED_SQUARE_LEFT = draw(canvas(), "square", "red", 9, 16)


# --- grammar and suites ---


def test_captions_round_trip_and_bad_captions_fail() -> None:
    for scene in all_scenes():
        assert parse_caption(scene.caption) == scene
    assert parse_caption("A Red Circle On The Left ") == Scene("red", "circle", "left")
    for bad in ("a red circle", "a pink circle on the left", "a red hexagon on the left", "draw a cat"):
        with pytest.raises(HarnessError):
            parse_caption(bad)


def test_held_out_combinations_are_new_combinations_of_seen_attributes() -> None:
    seen, unseen = set(seen_scenes()), set(unseen_scenes())
    assert seen.isdisjoint(unseen) and len(seen | unseen) == len(COLOURS) * len(SHAPES) * len(POSITIONS)
    assert len(unseen) >= 15
    pairs = lambda s: {(s.colour, s.shape), (s.colour, s.position), (s.shape, s.position)}  # noqa: E731
    seen_pairs = set().union(*(pairs(s) for s in seen))
    for scene in unseen:
        assert pairs(scene) <= seen_pairs, scene
    assert set(training_captions()) == {s.caption for s in seen}


def test_suites_match_the_grammar() -> None:
    from harness.evaluation.suites import get_suite

    seen, unseen = get_suite("toy-seen"), get_suite("toy-unseen")
    assert (seen.split, unseen.split) == ("seen", "unseen")
    assert [p.prompt for p in seen.prompts] == [s.caption for s in seen_scenes()]
    assert [p.prompt for p in unseen.prompts] == [s.caption for s in unseen_scenes()]
    assert all(p.category == parse_caption(p.prompt).shape for p in seen.prompts + unseen.prompts)
    assert len({p.prompt_id for p in seen.prompts + unseen.prompts}) == len(seen) + len(unseen)


# --- renderer ---


def test_render_places_the_shape_and_degrades_as_asked() -> None:
    scene = Scene("blue", "circle", "right")
    clean = render(scene)
    assert clean.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(clean[16, 23], COLOURS["blue"], atol=1e-6)  # centre of the right position
    np.testing.assert_allclose(clean[16, 8], BACKGROUND, atol=1e-6)  # the left is empty
    washed = render(scene, degradation=Degradation(contrast=0.5))
    np.testing.assert_allclose(washed[16, 23], (np.asarray(COLOURS["blue"]) + BACKGROUND) / 2, atol=1e-6)
    blurred = render(scene, degradation=Degradation(blur_sigma=1.5))
    assert abs(blurred.sum() - clean.sum()) / clean.sum() < 0.01  # blur moves light, does not add it
    assert np.abs(np.diff(blurred, axis=1)).max() < 0.6 * np.abs(np.diff(clean, axis=1)).max()
    recoloured = render(scene, degradation=Degradation(colour="yellow"))
    np.testing.assert_allclose(recoloured[16, 23], COLOURS["yellow"], atol=1e-6)


# --- rewards on hand-made images with known answers ---


def test_fidelity_of_a_hand_drawn_image_is_high_only_for_its_own_caption() -> None:
    right = rewards.fidelity(RED_SQUARE_LEFT, Scene("red", "square", "left"))
    assert right > 0.9
    one_wrong = [
        rewards.fidelity(RED_SQUARE_LEFT, Scene("blue", "square", "left")),
        rewards.fidelity(RED_SQUARE_LEFT, Scene("red", "circle", "left")),
        rewards.fidelity(RED_SQUARE_LEFT, Scene("red", "square", "right")),
    ]
    assert all(0.55 < f < 0.75 for f in one_wrong), one_wrong  # two of three attributes right
    assert rewards.fidelity(RED_SQUARE_LEFT, Scene("green", "triangle", "bottom")) < 0.1
    assert rewards.fidelity(canvas(), Scene("red", "square", "left")) == 0.0  # nothing drawn


@pytest.mark.parametrize(
    "shape, colour, cx, cy, position",
    [
        ("circle", "green", 16, 9, "top"),
        ("triangle", "purple", 16, 23, "bottom"),
        ("square", "white", 16, 16, "center"),
        ("triangle", "yellow", 23, 16, "right"),
        ("circle", "blue", 9, 16, "left"),
    ],
)
def test_reading_recovers_every_attribute_of_hand_drawn_images(shape, colour, cx, cy, position) -> None:
    reading = rewards.read(draw(canvas(), shape, colour, cx, cy))
    assert max(reading.colour, key=reading.colour.get) == colour
    assert max(reading.shape, key=reading.shape.get) == shape
    assert max(reading.position, key=reading.position.get) == position
    assert reading.shape[shape] > 0.8 and reading.colour[colour] > 0.8


def test_quality_drops_with_blur_low_contrast_and_noise_but_not_with_the_caption() -> None:
    clean = rewards.quality(RED_SQUARE_LEFT)
    assert clean > 0.9
    blurred = rewards.quality(box_blur(RED_SQUARE_LEFT, 1))
    washed = rewards.quality(BACKGROUND + 0.4 * (RED_SQUARE_LEFT - BACKGROUND))
    noisy = rewards.quality(
        np.clip(RED_SQUARE_LEFT + np.random.default_rng(0).normal(0, 0.05, RED_SQUARE_LEFT.shape), 0, 1)
    )
    assert blurred < clean - 0.05 and washed < clean - 0.15 and noisy < clean - 0.1
    assert rewards.read(BACKGROUND + 0.4 * (RED_SQUARE_LEFT - BACKGROUND)).contrast == pytest.approx(0.4, abs=0.05)
    # Blur and washing out leave the caption readable: fidelity is about content.
    scene = Scene("red", "square", "left")
    assert rewards.fidelity(BACKGROUND + 0.4 * (RED_SQUARE_LEFT - BACKGROUND), scene) > 0.9
    assert rewards.fidelity(box_blur(RED_SQUARE_LEFT, 1), scene) > 0.8
    assert rewards.quality(canvas()) == 0.0


def test_exact_judge_says_which_scene_is_shown_whatever_its_contrast_or_blur() -> None:
    """The held-out judge: yes for the hand-drawn scene (washed out or blurred too), no for every other caption."""
    washed = BACKGROUND + 0.3 * (RED_SQUARE_LEFT - BACKGROUND)
    for image in (RED_SQUARE_LEFT, washed, box_blur(RED_SQUARE_LEFT, 1)):
        said = {scene for scene in all_scenes() if rewards.exact(image, scene) == 1.0}
        assert said == {Scene("red", "square", "left")}
    circle_top = draw(canvas(), "circle", "green", 16, 9)
    assert [s for s in all_scenes() if rewards.exact(circle_top, s)] == [Scene("green", "circle", "top")]
    triangle = draw(canvas(), "triangle", "purple", 16, 16)
    assert [s for s in all_scenes() if rewards.exact(triangle, s)] == [Scene("purple", "triangle", "center")]
    # Nothing drawn, or only faint noise: no scene is shown.
    assert not any(rewards.exact(canvas(), s) for s in all_scenes())
    faint = canvas() + np.random.default_rng(0).normal(0, 0.01, canvas().shape)
    assert not any(rewards.exact(faint, s) for s in all_scenes())
    # Unlike fidelity, which gives a wrong colour two thirds of its credit, the judge gives none.
    wrong_colour = Scene("blue", "square", "left")
    assert rewards.fidelity(RED_SQUARE_LEFT, wrong_colour) > 0.6 and rewards.exact(RED_SQUARE_LEFT, wrong_colour) == 0.0


def test_exact_is_held_out_from_every_toy_training_signal() -> None:
    """toy-exact is a scorer of the toy presets that the toy panel never labels with: † can never mark it."""
    from harness.api import PRESETS
    from harness.scoring import get_scorer, same_signal

    for name in ("toy", "toy-flow"):
        preset = PRESETS.get(name)()
        labels = preset.synthesize["scorers"]
        assert "toy-exact" in preset.scorers and set(labels) < set(preset.scorers)
        assert not {m for scorer in labels for m in same_signal(scorer)} & set(same_signal("toy-exact"))
    assert get_scorer("toy-exact").score(
        [to_pil(RED_SQUARE_LEFT)] * 2, ["a red square on the left", "a red circle on the left"]
    ) == [1.0, 0.0]


def test_registered_scorers_score_pil_images_at_any_size() -> None:
    from harness.scoring import get_scorer

    fidelity, quality = get_scorer("toy-fidelity"), get_scorer("toy-quality")
    image = to_pil(RED_SQUARE_LEFT)
    big = image.resize((64, 64), Image.Resampling.NEAREST)
    prompts = ["a red square on the left", "a red square on the right"]
    values = fidelity.score([image, big], prompts)
    assert values[0] > 0.9 and 0.55 < values[1] < 0.75
    assert fidelity.score([big], prompts[:1])[0] == pytest.approx(values[0], abs=0.02)
    assert all(0.0 <= v <= 1.0 for v in quality.score([image, big], prompts))
    with pytest.raises(HarnessError, match="not a toy-world caption"):
        fidelity.score([image], ["a photo of a cat"])
    with pytest.raises(HarnessError, match="no model locations"):
        get_scorer("toy-quality", model="some/model")


# --- the imperfect world and the base model ---


def test_imperfect_training_images_score_lower_than_clean_ones() -> None:
    from toyworld.base import Imperfection, imperfect_dataset

    pixels, captions = imperfect_dataset(120, Imperfection(), seed=0)
    assert pixels.shape == (120, 3, SIZE, SIZE) and pixels.min() >= -1 and pixels.max() <= 1
    assert set(captions) <= set(training_captions())
    images = (pixels.transpose(0, 2, 3, 1) + 1) / 2
    fid = np.array([rewards.fidelity(im, parse_caption(c)) for im, c in zip(images, captions)])
    clean = np.array([rewards.fidelity(render(parse_caption(c)), parse_caption(c)) for c in captions])
    # About 40% of images have a wrong attribute: fidelity of the set is clearly below the clean one.
    assert clean.mean() > 0.9 and clean.mean() - fid.mean() > 0.08
    assert 0.25 < (fid < 0.8).mean() < 0.6
    perfect, _ = imperfect_dataset(40, Imperfection(0, 0, 0, 0, 0), seed=0)
    assert (
        np.mean(
            [
                rewards.fidelity((im.transpose(1, 2, 0) + 1) / 2, parse_caption(c))
                for im, c in zip(perfect, imperfect_dataset(40, Imperfection(0, 0, 0, 0, 0), seed=0)[1])
            ]
        )
        > 0.9
    )


@pytest.mark.slow  # builds the base model's weights, twice
def test_base_weights_build_is_reproducible_bit_for_bit(tmp_path, harness_cache) -> None:
    from toyworld.base import BuildSettings, build_weights, file_digest, pipeline_from_weights

    settings = BuildSettings(
        dataset_size=16, vae_steps=2, vae_batch_size=4, unet_steps=2, unet_batch_size=4, warmup_steps=1
    )
    a = build_weights(
        tmp_path / "a.safetensors", settings, tokenizer_dir=harness_cache / "clip-tokenizer", verbose=False
    )
    b = build_weights(
        tmp_path / "b.safetensors", settings, tokenizer_dir=harness_cache / "clip-tokenizer", verbose=False
    )
    assert file_digest(a) == file_digest(b)
    other = build_weights(
        tmp_path / "c.safetensors",
        BuildSettings(**{**settings.__dict__, "seed": 1}),
        tokenizer_dir=harness_cache / "clip-tokenizer",
        verbose=False,
    )
    assert file_digest(other) != file_digest(a)
    pipe = pipeline_from_weights(a, tokenizer_dir=harness_cache / "clip-tokenizer")
    assert pipe.vae.config.scaling_factor > 0 and pipe.unet.dtype.is_floating_point


@pytest.mark.slow  # samples and scores a suite
def test_the_committed_base_model_draws_the_toy_world(harness_cache, tiny_model_dir) -> None:
    """The shipped base is mediocre, not random: its samples follow captions far better than a random-init model's."""
    import torch

    from harness.api import Prompt, Suite
    from harness.evaluation.sampling import generate
    from harness.models.loading import load_pipeline
    from harness.scoring import get_scorer
    from toyworld.base import COMMITTED_WEIGHTS, ensure_base_model

    assert COMMITTED_WEIGHTS.stat().st_size <= 10_000_000
    first = ensure_base_model(harness_cache)
    assert ensure_base_model(harness_cache) == first  # built once, then reused
    suite = Suite("probe", "seen", tuple(Prompt(f"p{i}", s.caption) for i, s in enumerate(seen_scenes()[::12])))
    fidelity = get_scorer("toy-fidelity")
    means = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two fighting other processes
    try:
        for name, model in (("toy", first), ("random", tiny_model_dir)):
            out = harness_cache / f"probe-{name}"
            rows = generate(
                load_pipeline(model),
                suite,
                out,
                images_per_prompt=2,
                batch_size=16,
                seed=0,
                num_inference_steps=8,
                guidance_scale=3.0,
                scheduler="ddim",
                progress=False,
            )
            images = [Image.open(out / r["path"]) for r in rows]
            means[name] = np.mean(fidelity.score(images, [r["prompt"] for r in rows]))
    finally:
        torch.set_num_threads(threads)
    assert means["toy"] > 0.4 and means["toy"] > means["random"] + 0.2, means


def _tensors(path, prefix: str) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}


@pytest.mark.slow  # builds the base model's weights, twice
def test_flow_twin_build_is_reproducible_and_keeps_the_toy_vae(tmp_path, harness_cache) -> None:
    import torch

    from toyworld.base import (
        COMMITTED_WEIGHTS,
        BuildSettings,
        build_flow_weights,
        file_digest,
        pipeline_from_weights,
        read_description,
    )

    settings = BuildSettings(dataset_size=16, unet_steps=2, unet_batch_size=4, warmup_steps=1)
    tokenizer = harness_cache / "clip-tokenizer"
    a, b = (
        build_flow_weights(tmp_path / f"{n}.safetensors", settings, tokenizer_dir=tokenizer, verbose=False)
        for n in "ab"
    )
    assert file_digest(a) == file_digest(b)
    toy_vae = _tensors(COMMITTED_WEIGHTS, "vae.")
    assert toy_vae.keys() == _tensors(a, "vae.").keys()
    assert all(torch.equal(v, _tensors(a, "vae.")[k]) for k, v in toy_vae.items())
    description = read_description(a)
    assert description["vae_from"] == file_digest(COMMITTED_WEIGHTS)
    pipe = pipeline_from_weights(a, tokenizer_dir=tokenizer)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    # SD3's latent normalisation, fitted to this VAE: the training latents' mean and one over their std.
    assert pipe.vae.config.shift_factor == description["shift_factor"] != 0
    assert pipe.vae.config.scaling_factor == description["scaling_factor"] > 0
    assert pipe.vae.config.latent_channels == pipe.transformer.config.in_channels == 4


@pytest.mark.slow  # samples and scores a suite
def test_the_committed_flow_twin_matches_its_metadata_and_draws_the_toy_world(harness_cache) -> None:
    """The shipped flow twin is the build its metadata describes, on the committed toy base's VAE, and mediocre,
    not random: its flow-Euler samples follow captions."""
    import dataclasses

    import torch

    from harness.api import Prompt, Suite
    from harness.evaluation.sampling import generate
    from harness.models.loading import load_pipeline
    from harness.scoring import get_scorer
    from toyworld.base import (
        COMMITTED_WEIGHTS,
        FLOW_BUILD_SETTINGS,
        FLOW_PIPELINE_CONFIG,
        FLOW_WEIGHTS,
        ensure_flow_base_model,
        file_digest,
        pipeline_config,
        read_description,
    )

    assert FLOW_WEIGHTS.stat().st_size <= 10_000_000
    description = read_description(FLOW_WEIGHTS)
    assert pipeline_config(description) == FLOW_PIPELINE_CONFIG
    assert description["build_settings"] == json_ready(dataclasses.asdict(FLOW_BUILD_SETTINGS))
    assert description["vae_from"] == file_digest(COMMITTED_WEIGHTS)
    toy_vae, flow_vae = _tensors(COMMITTED_WEIGHTS, "vae."), _tensors(FLOW_WEIGHTS, "vae.")
    assert all(torch.equal(v, flow_vae[k]) for k, v in toy_vae.items()) and toy_vae.keys() == flow_vae.keys()

    model = ensure_flow_base_model(harness_cache)
    assert ensure_flow_base_model(harness_cache) == model  # built once, then reused
    pipe = load_pipeline(model)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    suite = Suite("probe", "seen", tuple(Prompt(f"p{i}", s.caption) for i, s in enumerate(seen_scenes()[::12])))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = generate(
            pipe,
            suite,
            harness_cache / "probe-flow",
            images_per_prompt=2,
            batch_size=16,
            seed=0,
            num_inference_steps=8,
            guidance_scale=3.0,
            scheduler="flow-euler",
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    images = [Image.open(harness_cache / "probe-flow" / r["path"]) for r in rows]
    # A random-init model scores ~0.2 here (the toy base's test); the toy base ~0.5.
    assert np.mean(get_scorer("toy-fidelity").score(images, [r["prompt"] for r in rows])) > 0.4


def json_ready(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(value))


def test_toy_flow_is_the_toy_protocol_on_the_flow_twin() -> None:
    """Every method resolves a config under toy-flow: its toy one, unless it has a toy-flow entry of its own."""
    import dataclasses

    from harness.api import METHODS, PRESETS
    from harness.plan.recipes import own_recipe
    from harness.train.trainer import resolve_config

    toy, flow = PRESETS.get("toy")(), PRESETS.get("toy-flow")()
    assert (flow.base_model, flow.method_settings_from, flow.generation.scheduler) == ("toy-flow", "toy", "flow-euler")
    assert dataclasses.replace(flow.generation, scheduler=toy.generation.scheduler) == toy.generation
    assert {**flow.synthesize, "scheduler": toy.synthesize["scheduler"]} == toy.synthesize
    assert (flow.suites, flow.scorers, flow.method_defaults) == (toy.suites, toy.scorers, toy.method_defaults)
    for method in METHODS.names():
        own = {name: setting.value for name, setting in (own_recipe(method, "toy-flow") or {}).items()}
        expected = dataclasses.replace(resolve_config(method, "toy"), **own)
        assert resolve_config(method, "toy-flow") == expected, method


def test_presets_and_method_entries_name_real_settings() -> None:
    """Every preset's settings for all methods are shared fields, every method's recipe for a preset names
    fields of its own Config (own_recipe refuses others), and the toy data settings are synthesize's."""
    import dataclasses
    import inspect

    from harness.api import METHODS, PRESETS, TrainConfig
    from harness.data.synthesis import synthesize
    from harness.plan.recipes import own_recipe
    from toyworld.presets import TOY_DATA, TOY_GENERATION

    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, make in PRESETS.items():
        assert set(make().method_defaults) <= shared, name
    for method in METHODS.names():
        for preset in PRESETS.names():
            own_recipe(method, preset)
    assert TOY_GENERATION.height == SIZE
    assert set(TOY_DATA) <= set(inspect.signature(synthesize).parameters)
