"""Tiny Stable-Diffusion-shaped pipelines built offline from configs and saved with ``save_pretrained``, so the
real loading path (``harness.models.loading.load_pipeline``) runs without downloads; their tokenizer is the real CLIP BPE
tokenizer, rebuilt from the vocabulary file that ``open_clip_torch`` ships.  Registers the ``tiny`` and
``tiny-sd3`` base models.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.api.caching import built_model_ready
from harness.api.environment import cache_dir
from harness.api.registry import register_base_model
from harness.atomic import publishing

CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
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


def clip_tokenizer(cache_dir: str | Path, **options: Any):
    """The real CLIP tokenizer (transformers ``CLIPTokenizer``), built offline once into ``cache_dir``;
    ``options`` go to ``from_pretrained`` (e.g. ``pad_token="!"``, SDXL's second tokenizer)."""
    from transformers import CLIPTokenizer

    cache_dir = Path(cache_dir)
    if not (cache_dir / "merges.txt").exists():
        write_clip_tokenizer(cache_dir)
    return CLIPTokenizer.from_pretrained(str(cache_dir), model_max_length=77, **options)


@dataclass(frozen=True)
class TinyPipelineConfig:
    """Shape of a tiny SD-like pipeline; plain data so presets can carry it.

    ``layout`` picks the architecture family, the widths below pick its size:
    - ``"tiny"``: the test pipeline (StableDiffusionPipeline, DownBlock2D first, DDPM scheduler);
    - ``"sd15"``: Stable Diffusion 1.5's layout (CrossAttnDownBlock2D x (n-1) then DownBlock2D,
      PNDM scheduler with SD1.5's settings, VAE scaling factor 0.18215);
    - ``"sdxl"``: SDXL base's layout (StableDiffusionXLPipeline: DownBlock2D then
      CrossAttnDownBlock2D, two CLIP text encoders whose hidden states are concatenated, the second
      with a projection giving the pooled embedding, "text_time" added conditioning, Euler
      scheduler, VAE scaling factor 0.13025, ``force_zeros_for_empty_prompt``);
    - ``"sd3"``: SD3.5 Medium's layout (StableDiffusion3Pipeline: an MMDiT ``SD3Transformer2DModel``
      with dual attention in its first layers and RMS query/key norms, two CLIP text encoders with
      projections (the pooled embedding is both projections side by side), no T5 (the pipeline feeds
      zeros in its place), a 16-channel VAE with shift 0.0609 and scale 1.5305, flow-matching Euler
      scheduler with shift 3).  ``transformer_*`` set its size; ``block_out_channels`` are unused.
    ``TINY_SHAPES`` holds small instances of each.
    """

    image_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int | tuple[int, ...] = 8  # diffusers' name for the number of heads (as in SD's configs)
    text_hidden_size: int = 32
    text_layers: int = 2
    vae_block_out_channels: tuple[int, ...] = (32, 32, 64)  # 3 blocks: latents are image_size / 4
    latent_channels: int = 4
    seed: int = 0
    layout: str = "tiny"
    text_hidden_size_2: int = 32  # sdxl: width and projection of the second text encoder (OpenCLIP bigG's role)
    addition_time_embed_dim: int = 8  # sdxl: embedding width of each of the 6 size / crop conditioning numbers
    transformer_layers: int = 2  # sd3: MMDiT blocks (the first one with dual attention, as SD3.5 Medium)
    transformer_heads: int = 2
    transformer_head_dim: int = 8
    joint_attention_dim: int = 64  # sd3: T5's width (4096 in SD3); the CLIP states are zero-padded to it
    t5: bool = False  # sd3: with a tiny T5 encoder (a character-level tokenizer built here) as text_encoder_3

    def recorded(self) -> dict[str, Any]:
        """The fields this layout uses, as plain data (a UNet layout leaves out the sd3-only ones): what a saved
        model records of its shape, unchanged for UNet models by fields that later layouts added."""
        fields = asdict(self)
        if self.layout != "sd3":
            for name in _SD3_ONLY_FIELDS:
                del fields[name]
        return fields


_SD3_ONLY_FIELDS = ("transformer_layers", "transformer_heads", "transformer_head_dim", "joint_attention_dim", "t5")


# The real models' structure at widths small enough for CPU tests: SD1.5 (512 px, latents 64x64,
# 4 UNet levels, one text encoder) and SDXL base (1024 px, latents 128x128, 3 UNet levels, two text
# encoders).  One attention head at the 64x64 level: self-attention over 4096 tokens is most of a
# UNet forward's time there, and it grows with the number of heads, not with their width.
TINY_SHAPES: dict[str, TinyPipelineConfig] = {
    "tiny": TinyPipelineConfig(),
    "sd15": TinyPipelineConfig(
        layout="sd15",
        image_size=512,
        block_out_channels=(8, 16, 32, 32),
        attention_head_dim=1,
        text_hidden_size=32,
        text_layers=1,
        vae_block_out_channels=(4, 8, 16, 16),
    ),
    "sdxl": TinyPipelineConfig(
        layout="sdxl",
        image_size=1024,
        block_out_channels=(8, 16, 32),
        attention_head_dim=(1, 1, 2),
        text_hidden_size=16,
        text_hidden_size_2=32,
        text_layers=1,
        vae_block_out_channels=(4, 8, 16, 16),
        addition_time_embed_dim=8,
    ),
    # SD3.5 Medium: 1024 px, 16-channel latents 128x128, patches of 2 (4096 image tokens).
    "sd35": TinyPipelineConfig(
        layout="sd3",
        image_size=1024,
        latent_channels=16,
        text_hidden_size=16,
        text_hidden_size_2=32,
        text_layers=1,
        vae_block_out_channels=(4, 8, 16, 16),
        transformer_layers=2,
        transformer_heads=1,
        transformer_head_dim=16,
    ),
    # The flow-matching test pipeline: SD3's layout at the test pipeline's 32 px.
    "tiny-sd3": TinyPipelineConfig(layout="sd3", latent_channels=16),
}


def _down_block_types(config: TinyPipelineConfig) -> tuple[str, ...]:
    n_blocks = len(config.block_out_channels)
    if config.layout == "sd15":
        return ("CrossAttnDownBlock2D",) * (n_blocks - 1) + ("DownBlock2D",)
    if config.layout in ("tiny", "sdxl"):
        return ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_blocks - 1)
    raise ValueError(f"unknown tiny pipeline layout {config.layout!r}; expected 'tiny', 'sd15' or 'sdxl'")


def _clip_text_config(width: int, layers: int, **extra: Any):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 16),
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **extra,
    )


# The scheduler configs the real models ship (hub ``scheduler/scheduler_config.json``): SD1.5
# (stable-diffusion-v1-5/stable-diffusion-v1-5) and SDXL (stabilityai/stable-diffusion-xl-base-1.0), keys their
# own class ignores included: schedulers built from them (DDIMInverseScheduler, SmPO's inversion, a DDIM sampler)
# read clip_sample and set_alpha_to_one there, both false in the real files.
_HUB_SCHEDULER_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "sdxl": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
}


def _scheduler(layout: str):
    """The scheduler each family ships with (SD1.5: PNDM, SDXL: Euler, from the hub configs above; SD3: flow
    matching, shift 3); the test layout keeps DDPM."""
    import diffusers

    if layout in _HUB_SCHEDULER_CONFIGS:
        config = _HUB_SCHEDULER_CONFIGS[layout]
        return getattr(diffusers, config["_class_name"]).from_config(config)
    if layout == "sd3":
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )


def _tiny_vae(config: TinyPipelineConfig, **extra: Any):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=config.latent_channels,
        block_out_channels=config.vae_block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_block_out_channels),
        layers_per_block=1,
        norm_num_groups=min(32, config.vae_block_out_channels[0]),
        sample_size=config.image_size,
        **extra,
    )


def _tiny_sd3_pipeline(config: TinyPipelineConfig, tokenizer_dir: Path):
    """SD3.5 Medium's structure at a tiny size, without T5 (see ``TinyPipelineConfig``)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    latent_size = config.image_size // 2 ** (len(config.vae_block_out_channels) - 1)
    encoders = [
        CLIPTextModelWithProjection(
            _clip_text_config(width, config.text_layers, projection_dim=width, hidden_act="gelu")
        )
        for width in (config.text_hidden_size, config.text_hidden_size_2)
    ]
    transformer = SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=2,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        num_layers=config.transformer_layers,
        attention_head_dim=config.transformer_head_dim,
        num_attention_heads=config.transformer_heads,
        joint_attention_dim=config.joint_attention_dim,
        caption_projection_dim=config.transformer_heads * config.transformer_head_dim,
        pooled_projection_dim=config.text_hidden_size + config.text_hidden_size_2,
        pos_embed_max_size=latent_size // 2 * 3,  # SD3.5 Medium: 384 for 128 / 2 = 64 patches a side
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = _tiny_vae(config, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_scheduler("sd3"),
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=clip_tokenizer(tokenizer_dir),
        # CLIP-G's tokenizer pads with "!" (OpenCLIP's convention), CLIP-L's with <|endoftext|>.
        text_encoder_2=encoders[1],
        tokenizer_2=clip_tokenizer(tokenizer_dir, pad_token="!"),
        **(_tiny_t5(config.joint_attention_dim) if config.t5 else {"text_encoder_3": None, "tokenizer_3": None}),
    )


def _tiny_t5(width: int) -> dict[str, Any]:
    """A one-layer T5 encoder of ``width`` and a tokenizer of single characters (offline: no SentencePiece file)."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    symbols = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in symbols]
    encoder = T5EncoderModel(
        T5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=width, num_layers=1, num_heads=2)
    )
    return {"text_encoder_3": encoder, "tokenizer_3": T5TokenizerFast(vocab=vocab, extra_ids=0)}


def build_tiny_pipeline(config: TinyPipelineConfig = TinyPipelineConfig(), tokenizer_dir: str | Path | None = None):
    """A randomly initialised pipeline of the given tiny shape: StableDiffusionPipeline, StableDiffusionXLPipeline
    or (layout ``"sd3"``) StableDiffusion3Pipeline."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(config.seed)
    if tokenizer_dir is None:
        tokenizer_dir = cache_dir() / "clip-tokenizer"
    if config.layout == "sd3":
        return _tiny_sd3_pipeline(config, Path(tokenizer_dir))
    sdxl = config.layout == "sdxl"
    down_blocks = _down_block_types(config)
    latent_size = config.image_size // 2 ** (len(config.vae_block_out_channels) - 1)
    conditioning: dict[str, Any] = {"cross_attention_dim": config.text_hidden_size}
    if sdxl:  # the text encoders' hidden states are concatenated; the pooled one joins 6 size numbers
        conditioning = dict(
            cross_attention_dim=config.text_hidden_size + config.text_hidden_size_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=config.addition_time_embed_dim,
            projection_class_embeddings_input_dim=config.text_hidden_size_2 + 6 * config.addition_time_embed_dim,
            use_linear_projection=True,
            transformer_layers_per_block=1,
        )
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        down_block_types=down_blocks,
        up_block_types=tuple(block.replace("Down", "Up") for block in reversed(down_blocks)),
        norm_num_groups=min(32, config.block_out_channels[0]),
        **conditioning,
    )
    vae = _tiny_vae(config, scaling_factor=0.13025 if sdxl else 0.18215)
    text_encoder = CLIPTextModel(_clip_text_config(config.text_hidden_size, config.text_layers))
    tokenizer = clip_tokenizer(tokenizer_dir)
    scheduler = _scheduler(config.layout)
    if sdxl:
        text_encoder_2 = CLIPTextModelWithProjection(
            _clip_text_config(
                config.text_hidden_size_2,
                config.text_layers,
                projection_dim=config.text_hidden_size_2,
                hidden_act="gelu",
            )
        )
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            # SDXL's second tokenizer pads with "!" (OpenCLIP's convention), the first with <|endoftext|>.
            tokenizer_2=clip_tokenizer(tokenizer_dir, pad_token="!"),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe: Any, out_dir: str | Path) -> None:
    """``pipe.save_pretrained(out_dir)``, its CLIP tokenizers in the layout of the SD checkpoints on the hub:
    ``vocab.json`` and ``merges.txt``.  transformers 5 saves a ``tokenizer.json`` instead, which loads ~5x slower
    (0.25 s against 0.05 s a tokenizer, every time a job loads the pipeline)."""
    from transformers import CLIPTokenizer

    pipe.save_pretrained(out_dir)
    for name, component in pipe.components.items():
        if isinstance(component, CLIPTokenizer):
            write_clip_tokenizer(Path(out_dir) / name)
            (Path(out_dir) / name / "tokenizer.json").unlink()


def save_tiny_pipeline(out_dir: str | Path, config: TinyPipelineConfig = TinyPipelineConfig()) -> Path:
    """Build a tiny pipeline and save it in diffusers format (idempotent)."""
    out_dir = Path(out_dir)
    if built_model_ready(out_dir):
        return out_dir
    with publishing(out_dir) as temporary:
        save_pipeline(build_tiny_pipeline(config), temporary)
        (temporary / "tiny_config.json").write_text(json.dumps(config.recorded()), encoding="utf-8")
    return out_dir


@register_base_model("tiny")
def tiny_base_model() -> str:
    """The random-init tiny SD1.5-shaped pipeline (the ``tiny`` preset's base model)."""
    return str(save_tiny_pipeline(cache_dir() / "tiny-sd"))


@register_base_model("tiny-sd3")
def tiny_sd3_base_model() -> str:
    """The random-init tiny SD3.5-shaped (flow-matching) pipeline (the ``tiny-flow`` preset's base model)."""
    return str(save_tiny_pipeline(cache_dir() / "tiny-sd3", TINY_SHAPES["tiny-sd3"]))
