"""Per-method training-step time against a bare loop, side by side in one process.

The UNet is mid-sized (block_out_channels (64, 128, 256), 2 layers per block,
16x16 latents, 23.8 M parameters with the tiny text width), random init, built offline.  Every variant
runs one optimizer step per round, in turn, for several rounds; medians are
reported as ratios:

- ``bare``: the unavoidable compute of a DPO step -- policy forward + backward and
  reference forward on the same 2B latents, then AdamW -- written inline, no
  trainer, no data pipeline.
- ``dpo``: the harness trainer's DPO step (latents and text embeddings cached).
- ``smpo/reference``: SmPO with the reference inverting, inversions cached (warm).
- ``smpo/policy``: SmPO as published: the policy inverts every step (5 ReNoise steps).
- ``dro/published``: DRO as the public code (DiffusionDRO train.py:655-684): before every forward/backward
  the micro-batch's experts become replay-buffer rows, each with a trajectory the policy samples from its caption.
- ``dro/every-step``: the cheaper variant, refilling once per optimizer step
  (``refill_every`` = grad_accum: the step's micro-batches share the rows).

Usage: ``python bench/train_step.py [--rounds 7] [--pairs 4] [--accum 4]``
(on a shared CPU, ``OMP_NUM_THREADS=1`` gives steadier numbers).

``--sd15-gpu`` instead measures one DPO step (the real ``DPO.loss``) of an
SD1.5-sized UNet (random init, 64x64 latents, batch 1 pair, bf16 autocast over
fp32 master weights, AdamW) with and without gradient checkpointing: median step
time and peak GPU memory.  ``--unet mid --device cpu`` runs the same code path small.

``--sd35-gpu`` measures the same for SD3.5 Medium's transformer (its published config, random init,
flow matching, DPO's loss on velocity errors, 1 pair, prompt of 77 CLIP + 256 T5 tokens) at 512 and
1024 px: full fine-tuning with and without gradient checkpointing, and LoRA rank 32 / alpha 64 on the
attention projections (flow_grpo's SD3 DPO adapters; the reference is the same network, adapters off).
``--transformer mid --device cpu`` runs it small.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.api.registry import METHODS
from harness.testing.tiny_models import TinyPipelineConfig, save_tiny_pipeline
from harness.train.trainer import Trainer, resolve_config

MID = TinyPipelineConfig(image_size=64, block_out_channels=(64, 128, 256), layers_per_block=2)


def write_data(path: Path, n_pairs: int) -> Path:
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    pairs, experts = [], []
    for i in range(n_pairs):
        for j in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path / f"{i}_{j}.png")
        pairs.append(
            {
                "caption": f"thing {i}",
                "image_0": f"{i}_0.png",
                "image_1": f"{i}_1.png",
                "label_0": 1.0,
                "score_0": 0.22,
                "score_1": 0.18,
            }
        )
        experts.append({"caption": f"thing {i}", "image": f"{i}_0.png", "score": 1.0})
    (path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (path / "experts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in experts))
    return path


class Timed(Trainer):
    """A trainer whose steps are timed one at a time, DRO's refills (its sampler) separately."""

    def setup_for_bench(self) -> None:
        self._setup()
        self.params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        self.step = 0
        self.refill_s = 0.0
        refill = getattr(self.method, "refill", None)
        if refill is not None:

            def timed_refill(*args, **kwargs):
                started = time.perf_counter()
                refill(*args, **kwargs)
                self.refill_s += time.perf_counter() - started

            self.method.refill = timed_refill

    def one_step(self) -> float:
        started = time.perf_counter()
        self._optimizer_step(self.step, self.params)
        self.step += 1
        return time.perf_counter() - started


def make_trainer(method: str, model: Path, data: Path, out: Path, cache: Path, overrides: dict) -> Timed:
    # No flips: a flipped image is another cache entry (latent, SmPO's cached inversion), and the two
    # warm-up steps must fill every cache for the rounds to time cached steps.
    config = resolve_config(
        method,
        None,
        {
            "lr": 1e-6,
            "scale_lr": False,
            "warmup_steps": 0,
            "max_steps": 10_000,
            "caption_dropout": 0.0,
            "random_flip": False,
            "cache_dir": str(cache),
            **overrides,
        },
    )
    trainer = Timed(
        METHODS.get(method)(config), base_model=str(model), data_dir=data, output_dir=out, seed=0, on_log=None
    )
    trainer.setup_for_bench()
    return trainer


def bare_loop(model: Path, pairs: int):
    """Policy fwd+bwd and reference fwd on the same 2B latents, AdamW: nothing else."""
    from diffusers import UNet2DConditionModel

    policy = UNet2DConditionModel.from_pretrained(model / "unet")
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    latents = torch.randn(2 * pairs, 4, 16, 16)
    hidden = torch.randn(2 * pairs, 77, MID.text_hidden_size)
    t = torch.randint(0, 1000, (2 * pairs,))
    noise = torch.randn_like(latents)

    def step() -> float:
        started = time.perf_counter()
        pred = policy(latents, t, hidden).sample
        with torch.no_grad():
            ref = reference(latents, t, hidden).sample
        loss = ((pred - noise) ** 2).mean() - ((ref - noise) ** 2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return step


SD15_UNET = dict(
    sample_size=64,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
MID_UNET = dict(
    sample_size=16,
    block_out_channels=(64, 128, 256),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
    up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
)


def timed_steps(method, batch, models, optimizer, device: str, rounds: int) -> tuple[float, float]:
    """(median seconds of an optimizer step after a warm-up one, peak GPU memory in GiB or NaN on a CPU)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(rounds + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        batch.generator.manual_seed(i)
        loss, _ = method.loss(batch, models)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return statistics.median(times[1:]), peak


def sd15_dpo_step(unet_kind: str, device: str, rounds: int) -> None:
    """DPO step time and peak memory of an SD1.5-sized UNet, with and without gradient checkpointing."""
    from contextlib import nullcontext

    from diffusers import DDPMScheduler, UNet2DConditionModel

    from harness.api.method import Batch, Cond
    from harness.models.families import SD15
    from methods.dpo import DPO, DPOConfig

    shape = SD15_UNET if unet_kind == "sd15" else MID_UNET
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    dtype = torch.bfloat16
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy = UNet2DConditionModel(**shape).to(device)
        if checkpointing:
            policy.enable_gradient_checkpointing()
        reference = copy.deepcopy(policy).requires_grad_(False).to(dtype)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
        autocast = lambda: torch.autocast(device_type=device, dtype=dtype)  # noqa: E731
        models = SD15.models(
            policy=policy,
            unwrapped=policy,
            reference=lambda: (reference, nullcontext()),
            scheduler=scheduler,
            autocast=autocast,
        )
        method = DPO(DPOConfig())
        size = shape["sample_size"]
        latents = torch.randn(2, 4, size, size, device=device)
        batch = Batch(
            latents=latents,
            means=latents,
            cond=Cond(torch.randn(1, 77, 768, device=device)),
            keys=["w", "l"],
            scores=torch.full((2,), float("nan")),
            labels=torch.full((2,), float("nan")),
            captions=["x"],
            generator=torch.Generator(),
        )
        step, peak = timed_steps(method, batch, models, optimizer, device, rounds)
        n_params = sum(p.numel() for p in policy.parameters()) / 1e6
        print(
            f"{unet_kind} UNet {n_params:.0f} M params, 1 pair, bf16, gradient checkpointing {checkpointing}: "
            f"median step {step:.3f} s, peak memory {peak:.2f} GiB",
            flush=True,
        )
        del policy, reference, optimizer, models
        if device == "cuda":
            torch.cuda.empty_cache()


SD35_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
MID_TRANSFORMER = {
    **SD35_TRANSFORMER,
    "num_layers": 2,
    "num_attention_heads": 2,
    "caption_projection_dim": 128,
    "dual_attention_layers": (0,),
    "joint_attention_dim": 256,
    "pooled_projection_dim": 64,
}


def sd35_dpo_step(kind: str, device: str, rounds: int) -> None:
    """DPO step time and peak memory of SD3.5 Medium's transformer: full (checkpointing off / on) and LoRA."""
    from contextlib import nullcontext

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from harness.api.method import Batch, Cond
    from harness.models.families import SD3
    from harness.train.trainer import adapters_disabled
    from methods.dpo import DPO, DPOConfig

    shape = SD35_TRANSFORMER if kind == "sd35" else MID_TRANSFORMER
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    dtype = torch.bfloat16
    for resolution in (512, 1024):
        for variant in ("full", "full+checkpointing", "lora32"):
            torch.manual_seed(0)
            with torch.device(device):
                policy = SD3Transformer2DModel(**shape)
            if variant == "lora32":
                from peft import LoraConfig

                policy.requires_grad_(False)
                policy.add_adapter(
                    LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian", target_modules=SD3.lora_targets())
                )  # the trainer's
                reference = lambda: (policy, adapters_disabled(policy))  # noqa: E731
            else:
                frozen = copy.deepcopy(policy).requires_grad_(False).to(dtype)
                reference = lambda: (frozen, nullcontext())  # noqa: E731
            if variant == "full+checkpointing":
                policy.enable_gradient_checkpointing()
            trainable = [p for p in policy.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-6)
            autocast = lambda: torch.autocast(device_type=device, dtype=dtype)  # noqa: E731
            models = SD3.models(
                policy=policy, unwrapped=policy, reference=reference, scheduler=scheduler, autocast=autocast
            )
            method = DPO(DPOConfig(beta=100.0))
            size = resolution // 8
            latents = torch.randn(2, 16, size, size, device=device)
            cond = Cond(
                torch.randn(1, 77 + 256, shape["joint_attention_dim"], device=device),
                {"pooled_projections": torch.randn(1, shape["pooled_projection_dim"], device=device)},
            )
            batch = Batch(
                latents=latents,
                means=latents,
                cond=cond,
                keys=["w", "l"],
                scores=torch.full((2,), float("nan")),
                labels=torch.full((2,), float("nan")),
                captions=["x"],
                generator=torch.Generator(),
            )
            step, peak = timed_steps(method, batch, models, optimizer, device, rounds)
            n_params = sum(p.numel() for p in policy.parameters()) / 1e6
            n_trained = sum(p.numel() for p in trainable) / 1e6
            print(
                f"{kind} transformer {n_params:.0f} M params ({n_trained:.1f} M trained), {resolution} px, 1 pair, "
                f"bf16 autocast, {variant}: median step {step:.3f} s, "
                f"peak memory {peak:.2f} GiB",
                flush=True,
            )
            del policy, optimizer, models, reference, trainable
            if variant != "lora32":
                del frozen
            if device == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=4, help="pairs (DPO/SmPO) or images (DRO) per micro-batch")
    parser.add_argument("--accum", type=int, default=4, help="DRO micro-batches per optimizer step")
    parser.add_argument("--sd15-gpu", action="store_true", help="SD1.5-sized DPO step time and peak memory")
    parser.add_argument("--unet", choices=("sd15", "mid"), default="sd15")
    parser.add_argument("--sd35-gpu", action="store_true", help="SD3.5-Medium-sized DPO step time and peak memory")
    parser.add_argument("--transformer", choices=("sd35", "mid"), default="sd35")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.sd15_gpu:
        sd15_dpo_step(args.unet, args.device, args.rounds)
        return
    if args.sd35_gpu:
        sd35_dpo_step(args.transformer, args.device, args.rounds)
        return
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ.setdefault("HARNESS_CACHE", str(work / "cache"))
    model = save_tiny_pipeline(work / "mid-sd", MID)
    data = write_data(work / "data", 2 * args.pairs)
    cache = work / "features"
    from diffusers import UNet2DConditionModel

    n_params = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(model / "unet").parameters())
    print(
        f"mid UNet: {n_params / 1e6:.1f} M parameters, 16x16 latents, {args.pairs} pairs / images per micro-batch, "
        f"torch threads {torch.get_num_threads()}"
    )

    pair = {"batch_size": args.pairs}
    dro = {"batch_size": args.pairs, "grad_accum": args.accum, "ema_decay": 0.9999, "buffer_size": args.pairs}
    trainers = {
        "dpo": make_trainer("dpo", model, data, work / "dpo", cache, pair),
        "smpo/reference": make_trainer("smpo", model, data, work / "smpo-r", cache, {**pair, "inverter": "reference"}),
        "smpo/policy": make_trainer("smpo", model, data, work / "smpo-p", cache, {**pair, "inverter": "policy"}),
        "dro/published": make_trainer("dro", model, data, work / "dro-p", cache, dro),
        "dro/every-step": make_trainer("dro", model, data, work / "dro-s", cache, {**dro, "refill_every": args.accum}),
    }
    variants = {"bare": bare_loop(model, args.pairs), **{name: t.one_step for name, t in trainers.items()}}
    # Warm-up: two steps cover the data once, filling the feature and inversion caches and DRO's buffers.
    for variant in variants.values():
        variant(), variant()
    for trainer in trainers.values():
        trainer.refill_s = 0.0
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            times[name].append(variant())
    median = {name: statistics.median(ts) for name, ts in times.items()}

    print(f"\nmedian of {args.rounds} rounds (seconds per optimizer step); ratios side by side in this process")
    print(f"{'variant':22s} {'step s':>8s} {'per micro-batch s':>18s}")
    for name, seconds in median.items():
        micro = args.accum if name.startswith("dro") else 1
        print(f"{name:22s} {seconds:8.3f} {seconds / micro:18.3f}")
    print(f"\ndpo / bare                              = {median['dpo'] / median['bare']:.3f}  (target <= 1.15)")
    print(f"smpo/reference (cached) / dpo           = {median['smpo/reference'] / median['dpo']:.3f}  (target <= 1.3)")
    print(f"smpo/policy / dpo                       = {median['smpo/policy'] / median['dpo']:.3f}")
    for name in ("dro/published", "dro/every-step"):
        refill = trainers[name].refill_s / args.rounds
        print(
            f"{name:22s} per micro-batch / dpo = {median[name] / args.accum / median['dpo']:.3f}; "
            f"refills {refill:.3f} s of a {median[name]:.3f} s step ({100 * refill / median[name]:.0f}%)"
        )
    print(f"dro published / every-step              = {median['dro/published'] / median['dro/every-step']:.3f}")


if __name__ == "__main__":
    main()
