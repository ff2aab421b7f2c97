"""Locations a user gives: hub ids or local paths, output directories, base models."""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError


def looks_like_path(location: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local path."""
    return location.startswith(("/", ".", "~")) or location.count("/") > 1 or "\\" in location


def require_existing_path(location: str, what: str) -> None:
    """A location written as a local path must exist: it cannot mean a hub id instead."""
    if looks_like_path(location) and not Path(location).expanduser().exists():
        raise HarnessError(f"{what} {location!r} does not exist (a local path; a hub id has the form owner/name)")


def require_directory_or_nothing(path: Path, option: str) -> None:
    """An output location must be a directory, or not exist yet (it is then created)."""
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{option} {str(path)!r} is a file, not a directory; pass a directory (it is created if missing)")


def is_built_model(spec: str) -> bool:
    """A base model built here (a registered name such as ``tiny``) rather than downloaded or read."""
    from harness.api.registry import BASE_MODELS

    return spec in BASE_MODELS.names() and not Path(spec).exists()


def resolve_base_model(spec: str) -> str:
    """Turn a preset's base-model spec into something ``from_pretrained`` accepts, building it if needed."""
    from harness.api.caching import damage_lines
    from harness.api.registry import BASE_MODELS
    from harness.progress import say

    if is_built_model(spec):
        from harness.workers import quiet_libraries

        quiet_libraries()  # a first use builds and saves it: diffusers' notices about that are noise
        built = str(BASE_MODELS.get(spec)())
        for line in damage_lines():  # a damaged built model was found and built again
            say(f"   {line}")
        return built
    return str(Path(spec)) if Path(spec).exists() else spec
