"""Where scorer weights come from: hub ids, local paths, URLs; safe loading; versions.

Every location a scorer accepts is one of
- a local file or directory (used as is; nothing is downloaded),
- an ``http(s)://`` URL (downloaded once into the harness cache),
- a Hugging Face hub id (resolved through ``huggingface_hub``, so an already populated HF cache
  works offline with ``HF_HUB_OFFLINE=1``).
A location that cannot be resolved raises a one-line ``HarnessError`` naming the file and how
to provide it.  Weights are read with safetensors or ``torch.load(weights_only=True)``: a
checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api.environment import cache_dir, looks_like_path
from harness.errors import HarnessError, refused_pickle

if TYPE_CHECKING:  # torch is imported where it is used: listing scorers stays fast
    import torch


def pick_device(device: str | torch.device | None) -> torch.device:
    """The requested device, else the GPU when there is one."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_file(location: str | Path, filename: str, *, what: str, option: str) -> Path:
    """Path of ``filename`` given a local file, a local directory holding it, a URL or a hub repo id.

    ``what`` names the weights in messages; ``option`` is the keyword that overrides the location.
    """
    location = str(location)
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise HarnessError(f"{what}: {path} has no {filename}; put the file there or pass {option}=/path/to/{filename}")
    if location.startswith(("http://", "https://")):
        return _download_url(location, what=what, option=option)
    if looks_like_path(location):
        raise HarnessError(f"{what}: no such file or directory {location}; pass {option}=/path/to/{filename}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=location, filename=filename))
    except Exception as exc:  # offline, missing repo or file, HTTP errors: all mean "not available here"
        raise HarnessError(
            f"{what}: cannot get {filename} from the hub repo {location} ({_first_line(exc)}); "
            f"download it with `hf download {location} {filename} --local-dir DIR` and pass {option}=DIR"
        ) from None


def _download_url(url: str, *, what: str, option: str) -> Path:
    import torch

    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    target = cache_dir() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        return target
    from huggingface_hub import constants

    # Offline means offline for every source, not only the hub.
    if constants.HF_HUB_OFFLINE:
        raise HarnessError(
            f"{what}: {name} is not cached and HF_HUB_OFFLINE is set; download {url} and pass {option}=/path/to/{name}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        torch.hub.download_url_to_file(url, str(partial), progress=False)
    except Exception as exc:
        raise HarnessError(
            f"{what}: cannot download {url} ({_first_line(exc)}); fetch the file yourself and pass {option}=/path/to/{name}"
        ) from None
    partial.rename(target)
    return target


def load_state_dict(path: Path, *, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors or ``torch.save`` file, never unpickling code.

    Training checkpoints that wrap the weights (``{"state_dict": ...}``) and DataParallel's
    ``module.`` prefix are unwrapped.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HarnessError(
            f"{what}: cannot read weights from {path}: {refused_pickle(exc) or _first_line(exc)}"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise HarnessError(f"{what}: {path} does not hold a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def from_pretrained(cls: Any, location: str | Path, *, what: str, option: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(location)`` with a one-line error when the files are not available."""
    location = str(location)
    path = Path(location).expanduser()
    if path.exists():
        location = str(path)
    elif looks_like_path(location):
        raise HarnessError(
            f"{what}: no such directory {location}; pass {option}=DIR (a save_pretrained directory or hub id)"
        )
    try:
        return cls.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise HarnessError(
            f"{what}: cannot load {location} ({_first_line(exc)}); "
            f"download it with `hf download {location} --local-dir DIR` and pass {option}=DIR"
        ) from None


def weights_version(version: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """``version`` for the official weights; a distinct version for any other location.

    Cached and stored scores are keyed by version, so scores of a user's own (or a tiny test)
    model must never share a key with the published metric.
    """
    custom = {key: str(value) for key, value in given.items() if str(value) != str(defaults.get(key))}
    if not custom:
        return version
    digest = hashlib.sha256(repr(sorted(custom.items())).encode()).hexdigest()[:10]
    return f"{version}+custom-{digest}"
