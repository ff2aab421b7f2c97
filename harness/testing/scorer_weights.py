"""Random-init scorer weights written in the official file layouts (tests and bench/score.py).

No published weights can be downloaded here, so the real loading code is exercised on files
that look like the published ones: a ``save_pretrained`` CLIP directory (PickScore, the
aesthetic backbone), OpenCLIP state dicts (HPSv2, CLIP score), ``ImageReward.pt`` with its
``med_config.json``, the aesthetic linear head, ``HPSv3.safetensors`` with its Qwen2-VL base, and a
Qwen2.5-VL Instruct checkpoint for VQAScore.  ``"tiny"`` shapes run in seconds on a CPU;
the real shapes are for timing on a GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.api.environment import cache_dir
from harness.atomic import replacing
from harness.scoring.hpsv3 import chat_text, empty_reward_model, official_key
from harness.scoring.vqascore import question
from harness.testing.tiny_models import write_clip_tokenizer


@dataclass(frozen=True)
class Tower:
    width: int
    layers: int
    heads: int
    mlp: int


@dataclass(frozen=True)
class ClipShape:
    image_size: int
    patch_size: int
    vision: Tower
    text: Tower
    projection: int


CLIP_SHAPES = {
    "tiny": ClipShape(32, 8, Tower(32, 2, 2, 64), Tower(32, 2, 2, 64), 16),
    "ViT-H-14": ClipShape(224, 14, Tower(1280, 32, 16, 5120), Tower(1024, 24, 16, 4096), 1024),  # PickScore
    "ViT-L-14": ClipShape(224, 14, Tower(1024, 24, 16, 4096), Tower(768, 12, 12, 3072), 768),  # aesthetic backbone
}


def save_hf_clip(out_dir: Path, shape: str = "tiny", *, logit_scale: float = 3.1, seed: int = 0) -> tuple[Path, Path]:
    """(model dir, processor dir): a random CLIPModel and a real CLIP processor, as ``save_pretrained`` writes them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    s = CLIP_SHAPES[shape]
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=s.text.width,
            intermediate_size=s.text.mlp,
            num_hidden_layers=s.text.layers,
            num_attention_heads=s.text.heads,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=s.vision.width,
            intermediate_size=s.vision.mlp,
            num_hidden_layers=s.vision.layers,
            num_attention_heads=s.vision.heads,
            image_size=s.image_size,
            patch_size=s.patch_size,
        ),
        projection_dim=s.projection,
    )
    model = CLIPModel(config)
    with torch.no_grad():  # not the init value, so a scorer that assumes it instead of reading it is caught
        model.logit_scale.fill_(logit_scale)
    model.save_pretrained(out_dir / "model")
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(out_dir / "tokenizer")), model_max_length=77)
    images = CLIPImageProcessor(
        size={"shortest_edge": s.image_size}, crop_size={"height": s.image_size, "width": s.image_size}
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out_dir / "processor")
    return out_dir / "model", out_dir / "processor"


def save_aesthetic_head(path: Path, width: int, *, seed: int = 0) -> Path:
    """The LAION aesthetic v1 head: a ``Linear(width, 1)`` state dict saved with torch.save."""
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(width, 1).state_dict(), path)
    return path


TINY_OPEN_CLIP_ARCH = "tiny-test-ViT"


def register_tiny_open_clip(config_dir: Path | None = None, name: str = TINY_OPEN_CLIP_ARCH) -> str:
    """Register a tiny OpenCLIP architecture (CLIP BPE text tower, 77 tokens) and return its name.

    open_clip reads architectures from JSON files, which must stay where they are for the rest
    of the process: ``config_dir`` defaults to the harness cache.  The file is replaced
    atomically, so processes starting together may all register it.
    """
    import open_clip

    s = CLIP_SHAPES["tiny"]
    config = {
        "embed_dim": s.projection,
        "vision_cfg": {
            "image_size": s.image_size,
            "layers": s.vision.layers,
            "width": s.vision.width,
            "head_width": s.vision.width // s.vision.heads,
            "patch_size": s.patch_size,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": s.text.width,
            "heads": s.text.heads,
            "layers": s.text.layers,
        },
    }
    config_dir = cache_dir() / "open-clip-configs" if config_dir is None else config_dir
    config_dir.mkdir(parents=True, exist_ok=True)
    with replacing(config_dir / f"{name}.json") as temporary:
        temporary.write_text(json.dumps(config))
    open_clip.add_model_config(config_dir / f"{name}.json")
    return name


def save_open_clip(path: Path, arch: str, *, training_checkpoint: bool, seed: int = 0) -> Path:
    """A random OpenCLIP ``arch`` state dict; HPSv2 ships it wrapped as ``{"state_dict": ...}``."""
    import open_clip

    torch.manual_seed(seed)
    state = open_clip.create_model(arch, pretrained=None).state_dict()
    torch.save({"state_dict": state} if training_checkpoint else state, path)
    return path


@dataclass(frozen=True)
class ImageRewardShape:
    image_size: int
    patch_size: int
    vision: Tower  # BLIP ViT; 64-wide heads
    text: Tower  # BERT with cross-attention
    text_positions: int
    vocab: tuple[str, ...]


_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TINY_WORDS = tuple(
    ["a", "red", "cube", "on", "table", "two", "dogs", "playing", "in", "the", "snow", "painting", "of", "lighthouse"]
)
IMAGEREWARD_SHAPES = {
    "tiny": ImageRewardShape(32, 8, Tower(128, 2, 2, 256), Tower(32, 2, 2, 64), 40, _SPECIAL + _TINY_WORDS),
    # ViT-L/16 at 224 and bert-base (30522 words + BLIP's [DEC] and [ENC]); the words are placeholders.
    "large": ImageRewardShape(
        224,
        16,
        Tower(1024, 24, 16, 4096),
        Tower(768, 12, 12, 3072),
        512,
        _SPECIAL + tuple(f"word{i}" for i in range(30524 - len(_SPECIAL))),
    ),
}


def imagereward_state_dict(shape: str = "tiny", *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of the image-reward package's ``ImageReward``."""
    s = IMAGEREWARD_SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)

    def rand(*size: int, scale: float) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * scale

    def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(width, scale=0.1), f"{prefix}.bias": rand(width, scale=0.1)}

    def linear(prefix: str, n_out: int, n_in: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": rand(n_out, n_in, scale=1 / math.sqrt(n_in)),
            f"{prefix}.bias": rand(n_out, scale=0.1),
        }

    v, vw, grid = "blip.visual_encoder", s.vision.width, s.image_size // s.patch_size
    state = {
        f"{v}.cls_token": rand(1, 1, vw, scale=0.2),
        f"{v}.pos_embed": rand(1, grid * grid + 1, vw, scale=0.2),
        f"{v}.patch_embed.proj.weight": rand(vw, 3, s.patch_size, s.patch_size, scale=0.05),
        f"{v}.patch_embed.proj.bias": rand(vw, scale=0.2),
        **norm(f"{v}.norm", vw),
    }
    for i in range(s.vision.layers):
        b = f"{v}.blocks.{i}"
        state |= norm(f"{b}.norm1", vw) | norm(f"{b}.norm2", vw) | linear(f"{b}.attn.qkv", 3 * vw, vw)
        state |= linear(f"{b}.attn.proj", vw, vw) | linear(f"{b}.mlp.fc1", s.vision.mlp, vw)
        state |= linear(f"{b}.mlp.fc2", vw, s.vision.mlp)
    t, tw = "blip.text_encoder", s.text.width
    state |= {
        f"{t}.embeddings.word_embeddings.weight": rand(len(s.vocab), tw, scale=1.0),
        f"{t}.embeddings.position_embeddings.weight": rand(s.text_positions, tw, scale=0.5),
        f"{t}.embeddings.position_ids": torch.arange(s.text_positions)[None],
        **norm(f"{t}.embeddings.LayerNorm", tw),
    }
    for i in range(s.text.layers):
        b = f"{t}.encoder.layer.{i}"
        for part, kv_width in (("attention", tw), ("crossattention", vw)):
            state |= linear(f"{b}.{part}.self.query", tw, tw) | linear(f"{b}.{part}.self.key", tw, kv_width)
            state |= linear(f"{b}.{part}.self.value", tw, kv_width) | linear(f"{b}.{part}.output.dense", tw, tw)
            state |= norm(f"{b}.{part}.output.LayerNorm", tw)
        state |= linear(f"{b}.intermediate.dense", s.text.mlp, tw) | linear(f"{b}.output.dense", tw, s.text.mlp)
        state |= norm(f"{b}.output.LayerNorm", tw)
    for index, (n_out, n_in) in zip((0, 2, 4, 6, 7), ((1024, tw), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state |= linear(f"mlp.layers.{index}", n_out, n_in)
    # BLIP's retrieval projection is in the published file too; the reward does not use it.
    state["blip.vision_proj.weight"] = rand(256, vw, scale=0.02)
    return state


def save_imagereward(out_dir: Path, shape: str = "tiny", *, seed: int = 0) -> Path:
    """``ImageReward.pt`` + ``med_config.json`` (BLIP's keys) in ``out_dir``, and a WordPiece
    vocabulary in ``out_dir/tokenizer`` (bert-base-uncased's cannot be downloaded here)."""
    s = IMAGEREWARD_SHAPES[shape]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(imagereward_state_dict(shape, seed=seed), out_dir / "ImageReward.pt")
    med_config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": s.text.width,
        "initializer_range": 0.02,
        "intermediate_size": s.text.mlp,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": s.text_positions,
        "model_type": "bert",
        "num_attention_heads": s.text.heads,
        "num_hidden_layers": s.text.layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(s.vocab),
        "encoder_width": 768,
        "add_cross_attention": True,
    }
    (out_dir / "med_config.json").write_text(json.dumps(med_config, indent=1))
    (out_dir / "tokenizer").mkdir(exist_ok=True)
    (out_dir / "tokenizer" / "vocab.txt").write_text("\n".join(s.vocab) + "\n")
    return out_dir


def save_scorer_set(root: Path, *, seed: int = 0) -> dict[str, dict[str, str]]:
    """Tiny random weights for every scorer of the sd15 / sdxl presets, in the official layouts.

    Returns, per scorer name, the keywords ``get_scorer(name, **locations)`` takes.  Layout (what
    each directory stands for)::

        ROOT/pickscore/model, processor        yuvalkirstain/PickScore_v1 (CLIPModel save_pretrained)
                                               and the laion/CLIP-ViT-H-14 processor it is used with
        ROOT/hpsv2/HPS_v2_compressed.pt        xswu/HPSv2: OpenCLIP state dicts wrapped in
        ROOT/hpsv2/HPS_v2.1_compressed.pt      {"state_dict": ...}, one file per version
        ROOT/imagereward/ImageReward.pt        THUDM/ImageReward: BLIP + MLP state dict, its
        ROOT/imagereward/med_config.json       text config, and (here only) a WordPiece vocabulary
        ROOT/imagereward/tokenizer/vocab.txt   standing in for bert-base-uncased
        ROOT/clip/open_clip_pytorch_model.bin  laion/CLIP-ViT-H-14-laion2B-s32B-b79K (OpenCLIP state dict)
        ROOT/aesthetic/model, processor        openai/clip-vit-large-patch14 (CLIPModel save_pretrained)
        ROOT/aesthetic/sa_0_4_vit_l_14_linear.pth  the LAION aesthetic v1 head (Linear state dict)

    The OpenCLIP scorers (hpsv2, hpsv2.1, clip) use the tiny architecture ``TINY_OPEN_CLIP_ARCH``,
    registered here; another process must register it too before building them (in tests,
    ``--plugin tests/plugins/tiny_scorer_archs.py``).  Every file has its own seed.
    """
    arch = register_tiny_open_clip()
    pickscore_model, pickscore_processor = save_hf_clip(root / "pickscore", seed=seed)
    aesthetic_model, aesthetic_processor = save_hf_clip(root / "aesthetic", logit_scale=4.6, seed=seed + 1)
    head = save_aesthetic_head(
        root / "aesthetic" / "sa_0_4_vit_l_14_linear.pth", CLIP_SHAPES["tiny"].projection, seed=seed + 2
    )
    (root / "hpsv2").mkdir(parents=True, exist_ok=True)
    (root / "clip").mkdir(parents=True, exist_ok=True)
    for offset, path, wrapped in (
        (3, root / "hpsv2" / "HPS_v2_compressed.pt", True),
        (4, root / "hpsv2" / "HPS_v2.1_compressed.pt", True),
        (5, root / "clip" / "open_clip_pytorch_model.bin", False),
    ):
        save_open_clip(path, arch, training_checkpoint=wrapped, seed=seed + offset)
    imagereward = save_imagereward(root / "imagereward", "tiny", seed=seed + 6)
    return {
        "pickscore": {"model": str(pickscore_model), "processor": str(pickscore_processor)},
        "hpsv2": {"checkpoint": str(root / "hpsv2"), "arch": arch},
        "hpsv2.1": {"checkpoint": str(root / "hpsv2"), "arch": arch},
        "imagereward": {"checkpoint": str(imagereward), "tokenizer": str(imagereward / "tokenizer")},
        "clip": {"checkpoint": str(root / "clip"), "arch": arch},
        "aesthetic": {"model": str(aesthetic_model), "processor": str(aesthetic_processor), "checkpoint": str(head)},
    }


# HPSv3: a Qwen2-VL in the flat config.json layout the Qwen/Qwen2-VL-7B-Instruct repo uses, scaled down;
# save_hpsv3 fills in the vocabulary size and the special tokens' ids from the tokenizer it builds.
QWEN2_VL_SPECIAL_TOKENS = {
    "<|endoftext|>": "bos_token_id",
    "<|im_start|>": None,
    "<|im_end|>": "eos_token_id",
    "<|vision_start|>": "vision_start_token_id",
    "<|vision_end|>": "vision_end_token_id",
    "<|vision_pad|>": "vision_token_id",
    "<|image_pad|>": "image_token_id",
    "<|video_pad|>": "video_token_id",
}
TINY_QWEN2_VL_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "hidden_act": "silu",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 2,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "vision_config": {
        "depth": 2,
        "embed_dim": 32,
        "mlp_ratio": 2,
        "num_heads": 2,
        "in_chans": 3,
        "hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


def save_qwen2_vl_processor(
    out_dir: Path, vocab_size: int = 2000, *, corpus: list[str] | None = None, qwen2_5: bool = False
):
    """A Qwen2-VL processor (with ``qwen2_5`` Qwen2.5-VL's, with its chat template) saved with
    ``save_pretrained`` and returned: the real image processor settings (14-pixel patches, 2x2 merge, CLIP
    normalisation, 3136..12845056 pixels) and a byte-level BPE tokenizer with Qwen2-VL's special tokens
    (ids 0-7), padding with ``<|endoftext|>``.

    Its merges are learnt from ``corpus`` (default HPSv3's prompt), so that text takes about as many
    tokens as with Qwen2's own vocabulary, not one per byte: the tests stay fast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN2_VL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([chat_text("")] if corpus is None else corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    parts = dict(
        image_processor=Qwen2VLImageProcessor(size=pixels), tokenizer=fast, video_processor=Qwen2VLVideoProcessor()
    )
    processor = Qwen2_5_VLProcessor(**parts, chat_template=QWEN_CHAT_TEMPLATE) if qwen2_5 else Qwen2VLProcessor(**parts)
    processor.save_pretrained(out_dir)
    return processor


def random_weights(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Random values for the tensor ``name`` of a transformer drawn at unit scale (not its small init), so
    that a tiny random model's outputs depend clearly on its inputs: norm weights near one, everything
    else normal with variance 1 / fan-in."""
    if len(shape) == 1 and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(shape[-1] if len(shape) > 1 else 1)


def hpsv3_state_dict(config: dict, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under HPSv3.safetensors' key names (transformers 4.45's Qwen2-VL layout plus
    ``rm_head``), the vocabulary one longer than ``config``'s for the added ``<|Reward|>``.

    Backbone tensors are bfloat16 and the head float32, as the published file stores them."""
    from transformers import Qwen2VLConfig

    qwen_config = Qwen2VLConfig(**{**config, "vocab_size": config["vocab_size"] + 1})
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in empty_reward_model(qwen_config, reward_token_id=config["vocab_size"]).state_dict().items():
        values = random_weights(name, tensor.shape, gen)
        dtype = torch.float32 if name.startswith("rm_head.") else torch.bfloat16
        state[official_key(name)] = values.to(dtype)
    state["lm_head.weight"] = torch.randn(config["vocab_size"] + 1, config["hidden_size"], generator=gen).to(
        torch.bfloat16
    )
    return state


def save_hpsv3(out_dir: Path, config: dict | None = None, *, seed: int = 0) -> dict[str, str]:
    """``out_dir/checkpoint/HPSv3.safetensors`` (MizzenAI/HPSv3) and ``out_dir/base`` (config.json and
    processor, standing in for Qwen/Qwen2-VL-7B-Instruct); returns the scorer's keywords."""
    from safetensors.torch import save_file

    base, checkpoint = out_dir / "base", out_dir / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    tokenizer = save_qwen2_vl_processor(base).tokenizer
    ids = {key: tokenizer.convert_tokens_to_ids(token) for token, key in QWEN2_VL_SPECIAL_TOKENS.items() if key}
    config = {**(TINY_QWEN2_VL_CONFIG if config is None else config), **ids, "vocab_size": len(tokenizer)}
    (base / "config.json").write_text(json.dumps(config, indent=1))
    save_file(hpsv3_state_dict(config, seed=seed), str(checkpoint / "HPSv3.safetensors"))
    return {"checkpoint": str(checkpoint), "base": str(base)}


# VQAScore: a Qwen2.5-VL Instruct checkpoint as the Qwen/Qwen2.5-VL-7B-Instruct repository holds it (flat
# config.json, weights under transformers 4.49's names, generation_config.json, processor), scaled down.
TINY_QWEN2_5_VL_CONFIG = {
    **{key: value for key, value in TINY_QWEN2_VL_CONFIG.items() if key != "vision_config"},
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_chans": 3,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
        "hidden_act": "silu",
    },
}
# Qwen's chat format for a list of messages (a default system turn first), written for these tests: a text
# part is its text, an image part Qwen's three vision tokens.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0].role != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}{% else %}{% for part in message.content %}"
    "{%- if part.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Stand-in values of the Instruct repositories' generation_config.json: what the scorer must read is the
# repetition penalty (applied in greedy decoding); the sampling settings are not used.
TINY_GENERATION_CONFIG = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001}


def official_qwen2_5_vl_key(name: str) -> str:
    """A transformers 5 ``Qwen2_5_VLForConditionalGeneration`` tensor's name in the published files."""
    for new, old in (("model.visual.", "visual."), ("model.language_model.", "model.")):
        if name.startswith(new):
            return old + name.removeprefix(new)
    return name


def save_vqascore_model(out_dir: Path, *, seed: int = 0) -> dict[str, str]:
    """A random Qwen2.5-VL Instruct checkpoint in ``out_dir`` (standing in for Qwen/Qwen2.5-VL-7B-Instruct);
    returns the ``vqascore`` scorer's keywords.

    Weights are drawn by ``random_weights``: P("Yes") differs by tens of percent between images and
    prompts.  "Yes" is one token of the tokenizer, as in Qwen's; the weights are bfloat16, as published."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    corpus = [question(p) for p in ("a red cube on a table", "two dogs playing in the snow")] + ["Yes", "No"]
    tokenizer = save_qwen2_vl_processor(out_dir, corpus=corpus, qwen2_5=True).tokenizer
    ids = {key: tokenizer.convert_tokens_to_ids(token) for token, key in QWEN2_VL_SPECIAL_TOKENS.items() if key}
    config = {**TINY_QWEN2_5_VL_CONFIG, **ids, "vocab_size": len(tokenizer)}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    generation = {**TINY_GENERATION_CONFIG, "bos_token_id": ids["bos_token_id"], "pad_token_id": ids["bos_token_id"]}
    generation["eos_token_id"] = [ids["eos_token_id"], ids["bos_token_id"]]
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=1))
    with torch.device("meta"):
        shapes = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config)).state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in shapes.items():
        state[official_qwen2_5_vl_key(name)] = random_weights(name, tensor.shape, gen).to(torch.bfloat16)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return {"model": str(out_dir)}
