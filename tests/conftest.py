"""Shared fixtures: a tiny SD-shaped pipeline built offline once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub: fail fast instead of retrying for seconds.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `make test` runs two pytest-xdist workers on a 2-core machine: each worker, and every process it starts, computes
# on one thread.  Two workers of two threads each fight over the cores, and OpenMP's waiting threads then make
# torch many times slower.  Set before anything imports torch (it reads the variable once).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


# Fixtures that make a real `harness run`: a test that takes one is an end-to-end test, whatever its file.
END_TO_END_FIXTURES = ("tiny_run_dir", "tiny_parti_run_dir")


# The files that take longest in `make test` (docs/testing.md), longest first.
LONGEST_FILES = (
    "test_ray_backend.py",
    "test_rehearsal.py",
    "test_train_distributed.py",
    "test_toy_alignment.py",
    "training/test_trainer.py",
    "test_cli.py",
    "faults/test_train_process_kills.py",
    "faults/test_run_kills.py",
    "faults/test_damaged_caches.py",
)
if missing := [name for name in LONGEST_FILES if not (Path(__file__).parent / name).is_file()]:
    raise pytest.UsageError(f"tests/conftest.py LONGEST_FILES names files that do not exist: {missing}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` (left out of ``make test-fast``) every test that takes an END_TO_END_FIXTURES run, and order
    the files: LONGEST_FILES first, longest first, then the other files holding slow tests, then the rest.
    `make test`'s workers take whole files in this order (``--no-loadscope-reorder``), so the long ones start at
    once and the short ones fill the end."""
    for item in items:
        if set(END_TO_END_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> tuple[int, bool]:
        name = item.path.relative_to(here).as_posix()
        return (LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES), item.path not in slow_files)

    items.sort(key=rank)  # stable: each file's own order is kept


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest leaves the dashboard script registered as ``__main__``; worker processes
    spawned by a later test would import it, run the app and die."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def harness_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session HARNESS_CACHE so tests never touch the user's cache."""
    cache = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(cache)
    # datasets converts local copies (Pick-a-Pic parquet shards) into Arrow files under its cache.
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")
    if "datasets" in sys.modules:  # imported already: its cache path was read at import
        sys.modules["datasets"].config.HF_DATASETS_CACHE = str(cache / "hf-datasets")
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(harness_cache: Path) -> Path:
    """A tiny StableDiffusionPipeline (random init, real CLIP tokenizer) saved in diffusers format."""
    from harness.testing.tiny_models import save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sd")


def harness_cli(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None):
    """Run the installed `harness` console script in a fresh process."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("harness")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path) -> Path:
    """A real `harness run --preset tiny --methods dpo` results directory, made once per session."""
    out = tmp_path_factory.mktemp("tiny-run")
    result = harness_cli("run", "--preset", "tiny", "--methods", "dpo", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


# The first 40 PartiPrompts fall in three categories of 37, 2 and 1 prompts: a per-category
# leaderboard with a well-sampled category, a small one and one without a CI.
PARTI_CATEGORIES = {"Abstract": 37, "Illustrations": 2, "Vehicles": 1}


@pytest.fixture(scope="session")
def tiny_parti_run_dir(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path) -> Path:
    """`harness run --preset tiny --methods dpo` on the first 40 PartiPrompts (one sampler step, scored
    by toy-quality, the toy reward that does not read the caption), made once per session."""
    out = tmp_path_factory.mktemp("tiny-parti-run")
    result = harness_cli(
        "run",
        "--preset",
        "tiny",
        "--methods",
        "dpo",
        "--suites",
        "parti",
        "--scorers",
        "toy-quality",
        "--max-prompts",
        str(sum(PARTI_CATEGORIES.values())),
        "--steps",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


# Offline stand-ins for the sd15 / sdxl recipes' downloads (tests/support/offline_world.py documents the layouts).


@pytest.fixture(scope="session")
def pickapic_v2_dir(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path) -> Path:
    """A small Pick-a-Pic v2 in the hub repository's layout (``--data DIR``; the pickapic-test suite
    takes DIR or its test_unique parquet file)."""
    from support.offline_world import write_pickapic_v2

    return write_pickapic_v2(tmp_path_factory.mktemp("pickapic_v2"))


@pytest.fixture(scope="session")
def hpdv2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HPDv2's benchmark prompts as the hub stores them (``--suites hpdv2:DIR``)."""
    from support.offline_world import write_hpdv2_benchmark

    return write_hpdv2_benchmark(tmp_path_factory.mktemp("HPDv2"))


@pytest.fixture(scope="session")
def scorer_locations(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path) -> dict[str, dict[str, str]]:
    """Tiny random weights of the six published scorers: name -> ``get_scorer`` keywords."""
    from harness.testing.scorer_weights import save_scorer_set

    return save_scorer_set(tmp_path_factory.mktemp("scorer-weights"))


@pytest.fixture(scope="session")
def hpsv3_locations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random HPSv3 (HPSv3.safetensors in the official key layout, and a Qwen2-VL base config and
    processor built offline): the ``get_scorer("hpsv3", ...)`` keywords."""
    from harness.testing.scorer_weights import save_hpsv3

    return save_hpsv3(tmp_path_factory.mktemp("hpsv3-weights"))


@pytest.fixture(scope="session")
def vqascore_locations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random Qwen2.5-VL Instruct checkpoint in the hub repository's layout (config, weights under
    the published names, generation_config.json, processor with a chat template), built offline: the
    ``get_scorer("vqascore", ...)`` keywords."""
    from harness.testing.scorer_weights import save_vqascore_model

    return save_vqascore_model(tmp_path_factory.mktemp("vqascore-weights"))


@pytest.fixture(scope="session")
def tiny_sd15_dir(harness_cache: Path) -> Path:
    """An SD1.5-shaped random-init pipeline (512 px native), saved in diffusers format."""
    from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sd15", TINY_SHAPES["sd15"])


@pytest.fixture(scope="session")
def tiny_sdxl_dir(harness_cache: Path) -> Path:
    """An SDXL-shaped random-init pipeline (1024 px native), saved in diffusers format."""
    from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sdxl", TINY_SHAPES["sdxl"])


@pytest.fixture(scope="session")
def tiny_sd3_dir(harness_cache: Path) -> Path:
    """The SD3.5-Medium-shaped random-init flow-matching pipeline at 32 px (the ``tiny-sd3`` base model),
    saved in diffusers format."""
    from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sd3", TINY_SHAPES["tiny-sd3"])


@pytest.fixture(scope="session")
def tiny_sd35_dir(harness_cache: Path) -> Path:
    """An SD3.5-Medium-shaped random-init pipeline (1024 px native, 128x128 latents), saved in diffusers format."""
    from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sd35", TINY_SHAPES["sd35"])


@pytest.fixture(scope="session")
def small_sdxl_dir(harness_cache: Path) -> Path:
    """The SDXL-shaped pipeline at 128 px native (latents 16x16): SDXL's conditioning in fast tests.

    Not smaller: with 8x8 latents or less the UNet's deepest levels are 2x2 or 1x1, and on CPU their
    results then depend by ~1e-6 on the batch size (see harness.evaluation.sampling) and even on the weights'
    memory (a deep copy of the UNet gives other outputs), which batch-invariance tests and the
    "policy == reference at step 1" checks see."""
    from dataclasses import replace

    from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sdxl-128", replace(TINY_SHAPES["sdxl"], image_size=128))


@pytest.fixture(scope="session")
def tiny_models():
    """(a small random UNet, a DDPM scheduler): the networks the loss tests run a method's loss on (each test
    trains deep copies of the UNet, never the UNet itself)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    return unet, DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.fixture(scope="session")
def flow_nets(harness_cache):
    """The tiny-sd3 transformer as reference, and a policy a small random step away from it (so the
    losses' policy-minus-reference terms are not all zero); shared by every module: no test changes them."""
    import copy

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from harness.testing.tiny_models import TINY_SHAPES, build_tiny_pipeline
    from support.flow import SHIFT, T

    reference = build_tiny_pipeline(TINY_SHAPES["tiny-sd3"]).transformer.requires_grad_(False)
    policy = copy.deepcopy(reference).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return policy, reference, FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=SHIFT)
