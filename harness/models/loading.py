"""Load Stable-Diffusion-shaped pipelines (SD1.5, SDXL, SD3 / SD3.5) by hub id or local directory.

What differs between the families is asked of ``harness.models.families``; the tiny offline pipelines the tests and
the ``tiny`` presets load are built in ``harness.testing.tiny_models``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from harness.api.environment import require_existing_path
from harness.errors import HarnessError, refused_pickle
from harness.models.families import family_named


def _pipeline_index(model: str) -> dict[str, Any]:
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(model)


def pipeline_scheduler(model: str) -> str:
    """The class name of the scheduler a pipeline (local directory, or a hub id already fetched) ships with."""
    return _pipeline_index(model)["scheduler"][1]


def _absent_components(index: dict[str, Any]) -> dict[str, None]:
    """Components saved as absent (SD3 without T5: ``text_encoder_3: [null, null]``), which
    ``from_pretrained`` wants passed as None explicitly."""
    return {
        name: None
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value == [None, None]
    }


@contextmanager
def reporting_load_errors(what: str, location: str | Path) -> Iterator[None]:
    """One line saying what is wrong with a model that does not load, and a download hint only for a hub id."""
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        refused = refused_pickle(exc)
        if refused:
            raise HarnessError(f"cannot load {what} {str(location)!r}: a weights file was refused: {refused}") from None
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if Path(location).exists():
            raise HarnessError(f"cannot load {what} from the local directory {str(location)!r}: {first_line}") from None
        raise HarnessError(
            f"cannot load {what} {str(location)!r} from the Hugging Face hub or its local cache: {first_line} "
            "(download it first, e.g. `huggingface-cli download ID --local-dir DIR`, and pass the directory)"
        ) from None


def _weights_format(location: str | Path, subfolder: str | None) -> dict[str, Any]:
    """A local directory without safetensors files has pickled weights: asking for safetensors first
    would only make diffusers log an error before it falls back to them."""
    folder = Path(location) / (subfolder or "")
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        return {"use_safetensors": False}
    return {}


def load_pipeline(
    model: str | Path,
    *,
    unet: str | Path | None = None,
    unet_subfolder: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    vae: str | None = None,
):
    """Load an SD1.5 / SDXL / SD3 pipeline from a hub id or a local directory.

    ``unet`` replaces the pipeline's denoising network (its UNet, SD3's transformer) by one saved with
    ``save_pretrained`` (a harness checkpoint or a published one such as ``mhdang/dpo-sd1.5-text2image-v1``).
    ``vae`` replaces the VAE (e.g. ``madebyollin/sdxl-vae-fp16-fix`` for SDXL in fp16).  The components are
    the directory's (SD3 with or without T5), T5 left out under ``HARNESS_DROP_T5=1`` (``harness.models.families``).
    """
    from diffusers import AutoencoderKL, DiffusionPipeline

    model = str(model)
    for what, location in (("model", model), ("UNet", unet), ("VAE", vae)):
        if location is not None:
            require_existing_path(str(location), what)
    with reporting_load_errors("model", model):
        index = _pipeline_index(model)
    family = family_named(index["_class_name"])
    kwargs: dict[str, Any] = {"dtype": dtype, **_absent_components(index), **family.load_options()}
    if unet is not None:
        with reporting_load_errors("UNet", unet):
            kwargs[family.denoiser_component] = family.load_denoiser(
                unet, subfolder=unet_subfolder, dtype=dtype, **_weights_format(unet, unet_subfolder)
            )
    if vae is not None:
        with reporting_load_errors("VAE", vae):
            kwargs["vae"] = AutoencoderKL.from_pretrained(vae, dtype=dtype)
    with reporting_load_errors("model", model):
        pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def check_model_available(
    location: str, *, config_file: str, subfolder: str | None = None, what: str, pass_as: str
) -> None:
    """Fail with one line unless ``location`` (a local directory or a hub id) has ``config_file``.

    Reads only the config, from the directory, the local Hugging Face cache, or (online) the hub,
    so a run can check every model it will load before it creates anything.  ``what`` names the
    model in the message, ``pass_as`` is the option that takes a local copy (``--model DIR``).
    """
    from huggingface_hub import constants, hf_hub_download

    require_existing_path(location, what)
    path = Path(location).expanduser()
    where = path / subfolder if subfolder else path
    if path.exists():
        if not (where / config_file).is_file():
            raise HarnessError(
                f"{what}: {where} has no {config_file} (not a diffusers "
                f"{'pipeline' if config_file == 'model_index.json' else 'model'} directory)"
            )
        return
    try:
        hf_hub_download(location, config_file, subfolder=subfolder)
    except Exception as exc:  # offline and not cached, no such repository, a malformed id: all "not available"
        reason = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if constants.HF_HUB_OFFLINE
            else str(exc).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        raise HarnessError(
            f"{what} {location!r} is not available ({reason}): download it with "
            f"`hf download {location} --local-dir DIR` and pass {pass_as}"
        ) from None


def inference_device() -> tuple[str, torch.dtype]:
    """Where and in which precision to generate: bf16 on a GPU (the papers' protocol), fp32 on CPU."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32
