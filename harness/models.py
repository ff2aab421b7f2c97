"""Build and load Stable-Diffusion-shaped pipelines.

Real models (SD1.5, SDXL) are loaded by hub id or local directory through
diffusers' ``from_pretrained``.  Offline, the same code path is exercised on
tiny pipelines built here from configs and saved with ``save_pretrained``;
their tokenizer is the real CLIP BPE tokenizer, rebuilt from the vocabulary
file that ``open_clip_torch`` ships.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.atomic import publishing
from harness.config import require_existing_path
from harness.errors import HarnessError, refused_pickle

CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_clip_tokenizer(out_dir: str | Path) -> Path:
    """Write vocab.json + merges.txt of the CLIP BPE tokenizer from open_clip's vocabulary file."""
    import open_clip.tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(open_clip.tokenizer.default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # CLIP keeps the first 49152 - 256 - 2 merges after the header line.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out_dir


def clip_tokenizer(cache_dir: str | Path):
    """The real CLIP tokenizer (transformers ``CLIPTokenizer``), built offline once into ``cache_dir``."""
    from transformers import CLIPTokenizer

    cache_dir = Path(cache_dir)
    if not (cache_dir / "merges.txt").exists():
        write_clip_tokenizer(cache_dir)
    return CLIPTokenizer.from_pretrained(str(cache_dir), model_max_length=77)


@dataclass(frozen=True)
class TinyPipelineConfig:
    """Shape of a tiny SD-like pipeline; plain data so presets can carry it."""

    image_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_hidden_size: int = 32
    text_layers: int = 2
    vae_block_out_channels: tuple[int, ...] = (32, 32, 64)  # 3 blocks: latents are image_size / 4
    latent_channels: int = 4
    seed: int = 0


def build_tiny_pipeline(config: TinyPipelineConfig = TinyPipelineConfig(), tokenizer_dir: str | Path | None = None):
    """A randomly initialised StableDiffusionPipeline of the given tiny shape."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    latent_size = config.image_size // 2 ** (len(config.vae_block_out_channels) - 1)
    n_blocks = len(config.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.attention_head_dim,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_blocks - 1) + ("UpBlock2D",),
        norm_num_groups=min(32, config.block_out_channels[0]),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=config.latent_channels,
        block_out_channels=config.vae_block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_block_out_channels),
        layers_per_block=1,
        norm_num_groups=min(32, config.vae_block_out_channels[0]),
        sample_size=config.image_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=config.text_hidden_size,
            intermediate_size=config.text_hidden_size * 4,
            num_hidden_layers=config.text_layers,
            num_attention_heads=max(1, config.text_hidden_size // 16),
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    if tokenizer_dir is None:
        tokenizer_dir = default_cache_dir() / "clip-tokenizer"
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(out_dir: str | Path, config: TinyPipelineConfig = TinyPipelineConfig()) -> Path:
    """Build a tiny pipeline and save it in diffusers format (idempotent)."""
    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").exists():
        return out_dir
    with publishing(out_dir) as temporary:
        build_tiny_pipeline(config).save_pretrained(temporary)
        (temporary / "tiny_config.json").write_text(json.dumps(asdict(config)), encoding="utf-8")
    return out_dir


def default_cache_dir() -> Path:
    """Where built artefacts (tokenizer, tiny and toy models) are cached across runs."""
    import os

    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def _pipeline_class_name(model: str) -> str:
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(model)
    return config["_class_name"]


@contextmanager
def _reporting_load_errors(what: str, location: str | Path) -> Iterator[None]:
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
    """Load an SD1.5 / SDXL pipeline from a hub id or a local directory.

    ``unet`` replaces the pipeline's UNet by one saved with ``save_pretrained``
    (a harness checkpoint or a published one such as ``mhdang/dpo-sd1.5-text2image-v1``).
    ``vae`` replaces the VAE (e.g. ``madebyollin/sdxl-vae-fp16-fix`` for SDXL in fp16).
    """
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

    model = str(model)
    for what, location in (("model", model), ("UNet", unet), ("VAE", vae)):
        if location is not None:
            require_existing_path(str(location), what)
    with _reporting_load_errors("model", model):
        class_name = _pipeline_class_name(model)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if class_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if unet is not None:
        with _reporting_load_errors("UNet", unet):
            kwargs["unet"] = UNet2DConditionModel.from_pretrained(str(unet), subfolder=unet_subfolder, dtype=dtype,
                                                                  **_weights_format(unet, unet_subfolder))
    if vae is not None:
        with _reporting_load_errors("VAE", vae):
            kwargs["vae"] = AutoencoderKL.from_pretrained(vae, dtype=dtype)
    with _reporting_load_errors("model", model):
        pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def inference_device() -> tuple[str, torch.dtype]:
    """Where and in which precision to generate: bf16 on a GPU (the papers' protocol), fp32 on CPU."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32
