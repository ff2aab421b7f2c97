"""Shared fixtures: a tiny SD-shaped pipeline built offline once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub: fail fast instead of retrying for seconds.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(harness_cache: Path) -> Path:
    """A tiny StableDiffusionPipeline (random init, real CLIP tokenizer) saved in diffusers format."""
    from harness.models import save_tiny_pipeline

    return save_tiny_pipeline(harness_cache / "tiny-sd")


def harness_cli(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None):
    """Run the installed `harness` console script in a fresh process."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("harness")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path) -> Path:
    """A real `harness run --preset tiny --methods dpo` results directory, made once per session."""
    out = tmp_path_factory.mktemp("tiny-run")
    result = harness_cli("run", "--preset", "tiny", "--methods", "dpo", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out
