"""Deterministic, batched, sharded, resumable generation of images for a prompt suite.

The evaluation protocol needs images that are a function of (model, prompt, seed,
settings) only.  Image ``j`` of prompt ``k`` (``N`` prompts) uses seed ``S + k + j*N``,
and everything random about it — its initial latents and the per-step noise of
stochastic schedulers such as DDPM — is drawn from its own CPU ``torch.Generator``.
So its bytes do not depend on the batch it lands in, nor on how many processes
share the suite (exactly on CPU at a fixed thread count, see ``_batch_invariant_numerics``;
on a GPU up to float rounding).

Layout of ``out_dir``::

    manifest.jsonl            one row per image (written atomically at the end)
    00012_03.png              image 3 of prompt 12 of the suite
    .manifest-parts/rank-R.jsonl
                              journal of rank (or shard) R: one row per finished image, appended
                              as images are written; merged into manifest.jsonl by rank 0
                              at the end, or by ``merge_shards`` once every shard has returned
                              (so ``out_dir`` must be shared by all ranks)

A run killed at any point restarts where it stopped: an image counts as done when a
journal or manifest row recorded with the same settings points at a file whose
sha256 still matches.  Image files are written under a temporary name and renamed,
so a file at its final name is always complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.api.suite import Suite
from harness.atomic import remove_leftovers, replacing, write_jsonl, writing
from harness.distributed import barrier, rank_and_size
from harness.errors import HarnessError
from harness.models.families import family_of
from harness.progress import progress_bar

MANIFEST_NAME = "manifest.jsonl"
_PARTS_DIR = ".manifest-parts"

# Short names accepted by ``scheduler=`` (and ``harness generate --scheduler``) -> diffusers classes.
SCHEDULERS: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",  # flow-matching models only (harness.models.families.FLOW_SAMPLERS)
}


def image_seed(base_seed: int, prompt_index: int, image_index: int, n_prompts: int) -> int:
    """Seed of image ``image_index`` of prompt ``prompt_index``: ``S + k + j*N`` (the papers' protocol)."""
    return base_seed + prompt_index + image_index * n_prompts


@dataclass(frozen=True)
class _Job:
    prompt_index: int
    image_index: int
    seed: int

    @property
    def path(self) -> str:
        return f"{self.prompt_index:05d}_{self.image_index:02d}.png"


def generate(
    pipe: Any,
    suite: Suite,
    out_dir: Path,
    *,
    images_per_prompt: int,
    batch_size: int,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    model: str | None = None,
) -> list[dict]:
    """Generate ``images_per_prompt`` images for every prompt of ``suite`` into ``out_dir``.

    ``pipe`` is a diffusers text-to-image pipeline of a family of ``harness.models.families``
    already on its device.  ``scheduler`` swaps the
    pipeline's scheduler for the duration of the call (a key of ``SCHEDULERS``).
    Under an initialised ``torch.distributed`` process group, rank ``r`` of ``W``
    generates the prompts ``k`` with ``k % W == r`` and rank 0 merges the manifest;
    every rank returns the merged rows.  ``shard=(r, W)`` makes part ``r`` of ``W`` as an
    independent job (a Ray task): the batches ``b`` with ``b % W == r`` of a one-process
    run, so each image is made in the very batch it would be made in there (the same
    bytes, even from a model whose numbers depend on the batch: see
    ``_batch_invariant_numerics``); it returns that part's rows and leaves the manifest to
    ``merge_shards``.  ``shard_count`` says how many parts have work.  Already generated
    images are skipped.  ``model`` names the model in the progress lines (``dpo / toy-seen: img
    8/16``): jobs side by side print to one log.
    """
    out_dir = Path(out_dir)
    _check_arguments(suite, images_per_prompt, batch_size, num_inference_steps)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise HarnessError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    rank, world_size = shard or rank_and_size()
    synchronised = shard is None  # the ranks of a process group meet at barriers; shards never meet
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.set_progress_bar_config(disable=True)  # ours counts images across calls instead of steps
    with _scheduler_swapped(pipe, scheduler), _batch_invariant_numerics(pipe):
        height, width = _resolve_size(pipe, height, width)
        settings = _settings(pipe, suite, seed, num_inference_steps, guidance_scale, height, width)
        n = len(suite)
        if synchronised:
            jobs = [
                _Job(k, j, image_seed(seed, k, j, n))
                for k in range(rank, n, world_size)
                for j in range(images_per_prompt)
            ]
        else:
            everything = [_Job(k, j, image_seed(seed, k, j, n)) for k in range(n) for j in range(images_per_prompt)]
            batches = [everything[start : start + batch_size] for start in range(0, len(everything), batch_size)]
            jobs = [job for batch in batches[rank::world_size] for job in batch]
        done = _verified_done(out_dir, suite, settings, jobs)
        todo = [job for job in jobs if (job.prompt_index, job.image_index) not in done]
        # Every rank reads the journals before any rank appends to its own.
        if synchronised:
            barrier()
        journal_path = out_dir / _PARTS_DIR / f"rank-{rank}.jsonl"
        with (
            _Journal(journal_path) as journal,
            progress_bar(
                # Rank 0's shard stands for all: the ranks share the work evenly.
                total=len(jobs),
                initial=len(jobs) - len(todo),
                enabled=progress and rank == 0,
                unit="img",
                desc=suite.name if model is None else f"{model} / {suite.name}",
            ) as bar,
        ):
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                images = _sample(pipe, suite, batch, settings)
                journal.append(
                    [_write_image(out_dir, suite, job, image, settings) for job, image in zip(batch, images)]
                )
                bar.update(len(batch))
    if not synchronised:
        current = _current_rows(out_dir, suite, settings)
        return [current[job.prompt_index, job.image_index] for job in jobs]
    barrier()
    if rank == 0:
        rows = _merge_manifest(out_dir, suite, settings, images_per_prompt)
    barrier()
    if rank != 0:
        rows = read_manifest(out_dir / MANIFEST_NAME)
    return rows


def shard_count(n_prompts: int, images_per_prompt: int, batch_size: int) -> int:
    """How many shards of a suite have work: its batches in a one-process run."""
    return math.ceil(n_prompts * images_per_prompt / batch_size)


def optimize_pipeline(pipe: Any, *, channels_last: bool = False, compile_unet: bool = False) -> Any:
    """Optional speed-ups of the UNet (the hot path); both are recorded in the manifest's settings.

    SDPA attention and the batched classifier-free-guidance UNet call are diffusers'
    defaults already; run the pipeline in bf16 on a GPU through ``load_pipeline(dtype=...)``.
    """
    family = family_of(pipe)
    if channels_last:
        family.denoiser(pipe).to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        setattr(pipe, family.denoiser_component, torch.compile(family.denoiser(pipe)))
    return pipe


def read_manifest(path: Path) -> list[dict]:
    """Rows of a manifest written by ``generate``; a malformed line fails naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HarnessError(f"{path}:{line_number}: malformed manifest line ({exc.msg})") from None
            rows.append(row)
    return rows


def _check_arguments(suite: Suite, images_per_prompt: int, batch_size: int, num_inference_steps: int) -> None:
    for name, value in (
        ("images_per_prompt", images_per_prompt),
        ("batch_size", batch_size),
        ("num_inference_steps", num_inference_steps),
    ):
        if value < 1:
            raise HarnessError(f"{name} must be at least 1, got {value}")
    if len(suite) == 0:
        raise HarnessError(f"suite {suite.name!r} has no prompts")
    ids = [p.prompt_id for p in suite.prompts]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise HarnessError(f"suite {suite.name!r} has duplicate prompt_id {duplicate!r}")


@contextmanager
def _scheduler_swapped(pipe: Any, name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    if name not in SCHEDULERS:
        raise HarnessError(f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}")
    import diffusers

    original = pipe.scheduler
    family = family_of(pipe)
    mismatch = family.sampler_mismatch(name, type(original).__name__)
    if mismatch:
        fitting = [s for s in SCHEDULERS if family.fits_sampler(s)]
        raise HarnessError(
            f"{mismatch}; " + (f"use {fitting[0]}" if len(fitting) == 1 else f"choose one of {', '.join(fitting)}")
        )
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(original.config)
    try:
        yield
    finally:
        pipe.scheduler = original


@contextmanager
def _batch_invariant_numerics(pipe: Any) -> Iterator[None]:
    """Make each image's floating-point result independent of the rest of its batch (on CPU).

    Measured on CPU (MKL/oneDNN, torch 2.14): a linear layer over a few rows (the time
    embedding, the ResNets' time projections and SDXL's pooled-text projection see one
    row per image) takes a different kernel for different row counts, and the VAE's
    convolutions differ between batch sizes (1, 3, 5 and 47 images each differed from 48):
    ~1e-6 apart, enough to flip the rounding of some pixels.  So such linears always see
    exactly ``_CHUNK`` rows, and the VAE's decoder a number of latents fixed by their size
    (16 toy latents at a time, one 64x64 latent), the last chunk padded with zeros: with the
    shape fixed, a row's result did not depend on its position in the chunk or on the other
    rows (measured, and tested across batch sizes and process counts).  The toy decoder 16 at
    a time is 3.7x faster than one at a time.  The UNet's other layers
    measured batch-invariant as long as they see at least 2 rows, which classifier-free
    guidance ensures (with guidance_scale <= 1 a batch of one image can still differ).
    Results can also change with the number of CPU threads.  On a GPU, cuBLAS/cuDNN
    choose kernels by shape too; the chunking cost is not paid there, and images agree
    across batch sizes up to float rounding.
    """
    if pipe._execution_device.type != "cpu":
        yield
        return
    linears = {
        id(module): module
        for component in pipe.components.values()
        if isinstance(component, torch.nn.Module)
        for module in component.modules()
        if isinstance(module, torch.nn.Linear)
    }.values()
    # Hooks (e.g. accelerate's offloading) may already have replaced a module's forward: keep them.
    previous = [(linear, linear.__dict__.get("forward")) for linear in linears]
    for linear in linears:
        linear.forward = _fixed_rows(linear.forward)  # an instance attribute shadows Linear.forward
    previous_decode = pipe.vae.__dict__.get("decode")
    pipe.vae.decode = _fixed_chunks(pipe.vae.decode)
    try:
        yield
    finally:
        if previous_decode is None:
            del pipe.vae.decode
        else:
            pipe.vae.decode = previous_decode
        for linear, forward in previous:
            if forward is None:
                del linear.forward
            else:
                linear.forward = forward


_CHUNK = 16
# The decoder sees at most this many latent pixels at once (16 toy latents of 8x8): a 64x64 SD1.5
# latent is decoded alone, so a one-image suite does not pay for 15 padding images.
_DECODE_PIXELS = 16 * 8 * 8


def _in_fixed_chunks(function: Any, x: torch.Tensor, rows: int = _CHUNK) -> torch.Tensor:
    """``function`` over ``x`` split into chunks of exactly ``rows`` rows (the last padded with zeros)."""
    pieces = []
    for chunk in x.split(rows):
        padding = chunk.new_zeros((rows - len(chunk), *chunk.shape[1:]))
        pieces.append(function(torch.cat([chunk, padding]))[: len(chunk)])
    return torch.cat(pieces)


def _fixed_rows(forward: Any) -> Any:
    def fixed_rows_forward(x: torch.Tensor) -> torch.Tensor:
        # Only (rows, features) inputs: token inputs (batch, tokens, features) are large GEMMs.
        return _in_fixed_chunks(forward, x) if x.dim() == 2 else forward(x)

    return fixed_rows_forward


def _fixed_chunks(decode: Any) -> Any:
    def chunked_decode(latents: torch.Tensor, return_dict: bool = True, **kwargs: Any) -> Any:
        # A function of the latent's shape only, so an image's bytes still do not depend on its batch.
        rows = max(1, _DECODE_PIXELS // (latents.shape[-2] * latents.shape[-1]))
        images = _in_fixed_chunks(lambda chunk: decode(chunk, return_dict=False, **kwargs)[0], latents, rows)
        if not return_dict:
            return (images,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=images)

    return chunked_decode


def _resolve_size(pipe: Any, height: int | None, width: int | None) -> tuple[int, int]:
    factor = pipe.vae_scale_factor
    default = family_of(pipe).denoiser(pipe).config.sample_size * factor
    height, width = height or default, width or default
    if height % factor or width % factor:
        raise HarnessError(f"height and width must be multiples of {factor} for this model, got {height}x{width}")
    return height, width


def _settings(
    pipe: Any, suite: Suite, seed: int, steps: int, guidance_scale: float, height: int, width: int
) -> dict[str, Any]:
    """What an image depends on besides its prompt and seed; rows recorded with other settings are stale.

    Batch size and process count are deliberately absent: they do not change the bytes.
    """
    family = family_of(pipe)
    unet = family.denoiser(pipe)
    first_conv = next(p for p in unet.parameters() if p.ndim == 4)  # conv_in, or the transformer's patch embedding
    return {
        "suite": suite.name,
        "suite_version": suite.version,
        "base_seed": seed,
        "num_inference_steps": steps,
        "guidance_scale": float(guidance_scale),
        "height": height,
        "width": width,
        "scheduler": type(pipe.scheduler).__name__,
        "dtype": str(unet.dtype).removeprefix("torch."),
        "channels_last": first_conv.is_contiguous(memory_format=torch.channels_last),
        "compiled": hasattr(unet, "_orig_mod"),  # what torch.compile wraps the module in
        **family.sampling_settings(pipe),
    }


def _sample(pipe: Any, suite: Suite, batch: list[_Job], settings: dict[str, Any]) -> list:
    """One pipeline call for the batch; each image's randomness comes from its own generator."""
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch]
    factor = pipe.vae_scale_factor
    network = family_of(pipe).denoiser(pipe)
    shape = (1, network.config.in_channels, settings["height"] // factor, settings["width"] // factor)
    # Drawn in float32 on the CPU whatever the model's dtype/device, so bf16-on-GPU and
    # fp32-on-CPU runs start from the same noise.  The generators then go on to supply
    # the scheduler's per-step noise, image by image.
    latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    output = pipe(
        prompt=[suite.prompts[job.prompt_index].prompt for job in batch],
        latents=latents.to(device=pipe._execution_device, dtype=network.dtype),
        generator=generators,
        num_inference_steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"],
        height=settings["height"],
        width=settings["width"],
        output_type="pil",
    )
    return output.images


def _write_image(out_dir: Path, suite: Suite, job: _Job, image: Any, settings: dict[str, Any]) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    with replacing(out_dir / job.path) as temporary:
        temporary.write_bytes(data)
    prompt = suite.prompts[job.prompt_index]
    return {
        "prompt_id": prompt.prompt_id,
        "prompt": prompt.prompt,
        "category": prompt.category,
        "image_index": job.image_index,
        "seed": job.seed,
        "path": job.path,
        "sha256": hashlib.sha256(data).hexdigest(),
        **settings,
    }


class _Journal:
    """Append-only JSONL file of finished images; survives being killed mid-line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                # A kill mid-write left half a row: drop it so the next row starts on its own line.
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, rows: list[dict]) -> None:
        with writing(self.path):
            self._file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            self._file.flush()

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()


def _recorded_rows(out_dir: Path) -> Iterator[dict]:
    """Rows of the manifest, then of every rank's journal (later rows supersede earlier ones)."""
    manifest = out_dir / MANIFEST_NAME
    if manifest.exists():
        yield from read_manifest(manifest)
    for journal in sorted((out_dir / _PARTS_DIR).glob("rank-*.jsonl")):
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # the half-written last row of a killed run


def _current_rows(out_dir: Path, suite: Suite, settings: dict[str, Any]) -> dict[tuple[int, int], dict]:
    """Latest recorded row per (prompt index, image index) made with these settings."""
    index_of = {p.prompt_id: k for k, p in enumerate(suite.prompts)}
    rows: dict[tuple[int, int], dict] = {}
    for row in _recorded_rows(out_dir):
        k = index_of.get(row.get("prompt_id"))
        if k is None or any(row.get(key) != value for key, value in settings.items()):
            continue
        rows[(k, row["image_index"])] = row
    return rows


def _verified_done(out_dir: Path, suite: Suite, settings: dict[str, Any], jobs: list[_Job]) -> set[tuple[int, int]]:
    recorded = _current_rows(out_dir, suite, settings)
    done = set()
    for job in jobs:
        row = recorded.get((job.prompt_index, job.image_index))
        if row is None or row.get("path") != job.path or row.get("seed") != job.seed:
            continue
        file = out_dir / job.path
        if file.is_file() and hashlib.sha256(file.read_bytes()).hexdigest() == row.get("sha256"):
            done.add((job.prompt_index, job.image_index))
    return done


def _merge_manifest(out_dir: Path, suite: Suite, settings: dict[str, Any], images_per_prompt: int) -> list[dict]:
    recorded = _current_rows(out_dir, suite, settings)
    keys = [(k, j) for k in range(len(suite)) for j in range(images_per_prompt)]
    missing = [key for key in keys if key not in recorded]
    if missing:
        raise RuntimeError(f"{len(missing)} images of {out_dir} were not generated, e.g. prompt {missing[0][0]}")
    return _publish_manifest(out_dir, [recorded[key] for key in keys])


def merge_shards(out_dir: Path, rows: list[dict]) -> list[dict]:
    """The manifest of a suite generated by ``generate(..., shard=(r, W))`` for every ``r``, from the rows the
    shards returned: written in prompt order, the shards' journals removed; returns the rows in that order."""
    return _publish_manifest(Path(out_dir), sorted(rows, key=lambda row: _job_key(row["path"])))


def _job_key(path: str) -> tuple[int, int]:
    """(prompt index, image index) of an image file named by ``_Job.path``."""
    prompt_index, image_index = Path(path).stem.split("_")
    return int(prompt_index), int(image_index)


def _publish_manifest(out_dir: Path, rows: list[dict]) -> list[dict]:
    write_jsonl(out_dir / MANIFEST_NAME, rows)
    for journal in (out_dir / _PARTS_DIR).glob("rank-*.jsonl"):
        journal.unlink()
    (out_dir / _PARTS_DIR).rmdir()
    remove_leftovers(out_dir)  # every rank has finished writing: temporary files left are a killed run's
    return rows
