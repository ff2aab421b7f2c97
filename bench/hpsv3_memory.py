"""HPSv3's memory and speed: parameters, weights memory, peak memory and images/s per batch size.

The model is the scorer's own ``HPSv3Reward`` (Qwen2VLModel + reward head) with random weights, built
at the public Qwen2-VL-7B-Instruct config (written out below) or, with ``--tiny``, at the test size.
Inputs are what the scorer feeds it: one 448x448 image (256 merged tokens, 1024 patches) and the
HPSv3 prompt.  The number of text tokens depends on Qwen2's tokenizer, which is not available
offline: by default it is estimated as the prompt's words and punctuation marks (pass
``--text-tokens`` to set it).  bfloat16 on CUDA when available, float32 on CPU.

    python bench/hpsv3_memory.py --tiny                 # CPU, seconds
    python bench/hpsv3_memory.py --offload              # GPU: also weights in CPU memory (accelerate cpu_offload)
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

from harness.scoring.hpsv3 import chat_text, empty_reward_model
from harness.testing.scorer_weights import TINY_QWEN2_VL_CONFIG

# config.json of Qwen/Qwen2-VL-7B-Instruct (public values); HPSv3 resizes the vocabulary to the
# tokenizer's 151657 tokens plus <|Reward|>.
QWEN2_VL_7B_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
    "vocab_size": 152064,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}
HPSV3_VOCAB = 151657 + 1
TINY_VOCAB = 2000  # the tests' tokenizer (harness.testing.scorer_weights.save_qwen2_vl_processor)
IMAGE_GRID = (1, 32, 32)  # a 448x448 image in 14-pixel patches


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, int]:
    """(random ``HPSv3Reward`` on ``device``, reward token id) at the tiny or the 7B config."""
    from transformers import Qwen2VLConfig

    if tiny:
        ids = dict(
            zip(
                (
                    "bos_token_id",
                    "eos_token_id",
                    "vision_start_token_id",
                    "vision_end_token_id",
                    "vision_token_id",
                    "image_token_id",
                    "video_token_id",
                ),
                (0, 2, 3, 4, 5, 6, 7),
            )
        )
        config = Qwen2VLConfig(**{**TINY_QWEN2_VL_CONFIG, **ids, "vocab_size": TINY_VOCAB})
    else:
        config = Qwen2VLConfig(**{**QWEN2_VL_7B_CONFIG, "vocab_size": HPSV3_VOCAB})
    reward_token_id = config.text_config.vocab_size - 1
    model = empty_reward_model(config, reward_token_id).to_empty(device=device)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.normal_(std=0.02) if tensor.ndim > 1 else tensor.fill_(1.0 if name.endswith("weight") else 0.0)
    model.backbone.to(dtype)
    return model.eval(), reward_token_id


def default_text_tokens() -> int:
    """Words and punctuation marks of the HPSv3 chat text (special tokens one each, the image excluded)."""
    text = chat_text("a photo of a cat").replace("<|image_pad|>", "")
    specials = re.findall(r"<\|[a-z_A-Z]+\|>", text)
    return len(specials) + len(re.findall(r"\w+|[^\w\s]", re.sub(r"<\|[a-z_A-Z]+\|>", " ", text)))


def inputs(
    model: torch.nn.Module, reward_token_id: int, batch: int, text_tokens: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """A batch as the scorer builds it: text ids around the image's tokens, ``<|Reward|>`` near the end."""
    t, h, w = IMAGE_GRID
    image_tokens = t * h * w // 4
    ids = torch.randint(10, reward_token_id - 10, (batch, text_tokens + image_tokens))
    ids[:, 10 : 10 + image_tokens] = model.image_token_id
    ids[:, -8] = reward_token_id
    patch = 3 * 2 * 14 * 14
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids, device=device),
        "pixel_values": torch.randn(batch * t * h * w, patch, device=device),
        "image_grid_thw": torch.tensor([IMAGE_GRID] * batch, device=device),
    }


def measure(
    model, reward_token_id: int, batch: int, text_tokens: int, device: torch.device, repeats: int
) -> tuple[float | None, float]:
    """(peak GPU memory in GB, None on CPU; median images/s) over ``repeats`` forward passes after one warm-up."""
    data = inputs(model, reward_token_id, batch, text_tokens, device)
    cuda = device.type == "cuda"
    times = []
    with torch.inference_mode():
        model(**data)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            start = time.perf_counter()
            model(**data)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    return peak, batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny Qwen2-VL instead of the 7B config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--text-tokens", type=int, default=default_text_tokens())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--offload", action="store_true", help="also with the weights in CPU memory (batch 1 and 2)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, reward_token_id = build(args.tiny, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    print(
        f"HPSv3 {'tiny' if args.tiny else 'Qwen2-VL-7B'} on {device} ({str(dtype).removeprefix('torch.')}): "
        f"{params:,} parameters ({params / 1e9:.2f}e9; lm_head, unused by the reward, not built), "
        f"weights {weights:.2f} GB"
    )
    print(
        f"per image: 256 image tokens (448x448) + {args.text_tokens} text tokens "
        f"(default: words and punctuation of the prompt, an estimate of Qwen2's BPE count)"
    )
    print(f"{'mode':10s} {'batch':>5s} {'peak GB':>9s} {'images/s':>9s}")
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    for batch in sizes:
        peak, speed = measure(model, reward_token_id, batch, args.text_tokens, device, args.repeats)
        print(f"{'on device':10s} {batch:5d} {'-' if peak is None else f'{peak:.2f}':>9s} {speed:9.2f}")
    if args.offload:
        from accelerate import cpu_offload

        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        cpu_offload(model, execution_device=device)
        for batch in [size for size in sizes if size <= 2]:
            peak, speed = measure(model, reward_token_id, batch, args.text_tokens, device, max(1, args.repeats - 1))
            print(f"{'offload':10s} {batch:5d} {'-' if peak is None else f'{peak:.2f}':>9s} {speed:9.2f}")
    if device.type != "cuda":
        print("(peak memory is measured on CUDA only)")


if __name__ == "__main__":
    main()
