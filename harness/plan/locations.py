"""Locations a user gives: hub ids or local paths, output directories, base models."""

from __future__ import annotations

from pathlib import Path

from harness.api.caching import damage_lines
from harness.api.environment import say
from harness.api.registry import BASE_MODELS
from harness.errors import HarnessError
from harness.libraries import quiet_libraries


def require_directory_or_nothing(path: Path, option: str) -> None:
    """An output location must be a directory, or not exist yet (it is then created)."""
    if path.exists() and not path.is_dir():
        raise HarnessError(
            f"{option} {str(path)!r} is a file, not a directory; pass a directory (it is created if missing)"
        )


def is_built_model(spec: str) -> bool:
    """A base model built here (a registered name such as ``tiny``) rather than downloaded or read."""
    return spec in BASE_MODELS.names() and not Path(spec).exists()


def resolve_base_model(spec: str) -> str:
    """Turn a preset's base-model spec into something ``from_pretrained`` accepts, building it if needed."""
    if is_built_model(spec):
        quiet_libraries()  # a first use builds and saves it: diffusers' notices about that are noise
        built = str(BASE_MODELS.get(spec)())
        for line in damage_lines():  # a damaged built model was found and built again
            say(f"   {line}")
        return built
    return str(Path(spec)) if Path(spec).exists() else spec
