"""Where scorer weights come from: hub ids, local paths, URLs; safe loading; versions.

Every location a scorer accepts is one of
- a local file or directory (used as is; nothing is downloaded),
- an ``http(s)://`` URL (downloaded once into the harness cache),
- a Hugging Face hub id (resolved through ``huggingface_hub``, so an already populated HF cache
  works offline with ``HF_HUB_OFFLINE=1``).
A location that cannot be resolved raises a one-line ``HarnessError`` naming the file and how
to provide it.  Weights are read with safetensors or ``torch.load(weights_only=True)``: a
checkpoint can never run code.

Also what the large transformers scorers share: their ``dtype`` / ``batch_size`` / ``offload`` options
(``torch_dtype``, ``positive``, ``flag``, ``place``), batches that shrink after a GPU out-of-memory error
(``in_batches``) and the Qwen-VL image sizing rule (``qwen_fitted_size``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
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


def torch_dtype(scorer: str, dtype: str, device: torch.device) -> torch.dtype:
    """The ``dtype`` option (``auto``: bfloat16 on CUDA, float32 elsewhere) as a torch dtype."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    choices = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in choices:
        raise HarnessError(f"{scorer}: dtype must be auto, {', '.join(choices)}; got {dtype!r}")
    return choices[dtype]


def flag(scorer: str, value: bool | str, option: str) -> bool:
    """A yes/no option given as a bool or (from --scorer-option) as text."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise HarnessError(f"{scorer}: {option} must be true or false, got {value!r}")


def positive(scorer: str, value: int | str, option: str) -> int:
    """A whole-number option above zero, given as an int or (from --scorer-option) as text."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise HarnessError(f"{scorer}: {option} must be a positive whole number, got {value!r}")
    return number


def place(model: torch.nn.Module, device: torch.device, offload: bool) -> None:
    """``model`` on ``device``, or with ``offload`` kept in CPU memory, each layer copied to ``device``
    when it runs (accelerate's ``cpu_offload``: slow, but needs little GPU memory)."""
    if offload:
        from accelerate import cpu_offload

        cpu_offload(model, execution_device=device)
    else:
        model.to(device)


def in_batches(scorer: Any, count: int, forward: Callable[[int, int], torch.Tensor]) -> list[torch.Tensor]:
    """``forward(start, stop)`` over ``range(count)`` in slices of ``scorer.batch_size``, under inference mode.

    On a CUDA out-of-memory error the slice is retried at half the size, and ``scorer.batch_size`` keeps
    the smaller size for later calls (the memory will not grow); at one item it is a ``HarnessError``
    suggesting ``offload``."""
    import torch

    outputs, start = [], 0
    with torch.inference_mode():
        while start < count:
            stop = start + scorer.batch_size
            try:
                outputs.append(forward(start, stop).cpu())
            except torch.cuda.OutOfMemoryError:
                if scorer.batch_size == 1:
                    raise HarnessError(
                        f"{scorer.name}: out of GPU memory with one image per batch; "
                        f"pass --scorer-option {scorer.name}.offload=true"
                    ) from None
                scorer.batch_size //= 2
                torch.cuda.empty_cache()
                continue
            start = stop
    return outputs


def qwen_fitted_size(
    width: int, height: int, *, min_pixels: int, max_pixels: int, factor: int, what: str
) -> tuple[int, int]:
    """(width, height) the Qwen-VL resizing rule (qwen-vl-utils' ``smart_resize``) gives: sides rounded to
    multiples of ``factor``, then scaled (keeping the aspect ratio) down to at most ``max_pixels`` or up to
    at least ``min_pixels`` when the rounded area is outside; an aspect ratio above 200 is refused."""
    if max(width, height) / min(width, height) > 200:
        raise HarnessError(f"{what} cannot score a {width}x{height} image: its aspect ratio is above 200")
    new_w, new_h = (max(factor, round(side / factor) * factor) for side in (width, height))
    if new_w * new_h > max_pixels:
        shrink = math.sqrt(width * height / max_pixels)
        # at least one factor wide: the reference would produce an empty side for extreme shapes
        new_w, new_h = (max(factor, math.floor(side / shrink / factor) * factor) for side in (width, height))
    elif new_w * new_h < min_pixels:
        grow = math.sqrt(min_pixels / (width * height))
        new_w, new_h = (math.ceil(side * grow / factor) * factor for side in (width, height))
    return new_w, new_h
