"""`harness generate`: images for a prompt suite with a preset's evaluation protocol."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.api.environment import require_existing_path
from harness.cli import options
from harness.cli.parser import Commands
from harness.distributed import torchrun_process_group
from harness.evaluation.evaluate import Protocol, unet_subfolder
from harness.evaluation.sampling import generate, optimize_pipeline
from harness.libraries import quiet_libraries
from harness.models.families import check_network_fits
from harness.models.loading import inference_device, load_pipeline
from harness.plan.locations import require_directory_or_nothing, resolve_base_model
from harness.plan.presets import get_preset


def cmd_generate(args: argparse.Namespace) -> int:
    """The preset's evaluation protocol (the one `harness run` evaluates with), with the options given replacing
    parts of it.  Under torchrun, every process runs this; prompts are split by rank and rank 0 merges the manifest."""
    preset = get_preset(args.preset)
    model = args.model or preset.base_model
    require_existing_path(model, "--model")  # before the libraries load
    subfolder = None
    if args.unet:
        require_existing_path(args.unet, "--unet")
        subfolder = unet_subfolder(args.unet)
    require_directory_or_nothing(Path(args.out), "--out")
    if args.unet:
        check_network_fits(model, args.unet, what="--unet")
    quiet_libraries()
    protocol = Protocol.of(
        preset, max_prompts=args.max_prompts, images_per_prompt=args.images_per_prompt, steps=args.steps, seed=args.seed
    )
    suite = protocol.load_suite(args.suite)
    settings = protocol.sampling(suite.name)
    given = dict(
        batch_size=args.batch_size,
        guidance_scale=args.cfg,
        height=args.height,
        width=args.width,
        scheduler=args.scheduler,
    )
    settings.update({name: value for name, value in given.items() if value is not None})
    with torchrun_process_group() as device:
        _, dtype = inference_device()
        pipe = load_pipeline(
            resolve_base_model(model),
            unet=args.unet,
            unet_subfolder=subfolder,
            dtype=dtype,
            device=device,
            vae=preset.vae,
        )
        pipe = optimize_pipeline(pipe, channels_last=args.channels_last, compile_unet=args.compile)
        rows = generate(pipe, suite, Path(args.out), **settings, progress=not args.no_progress)
    print(f"{len(rows)} images in {args.out} (manifest: {Path(args.out) / 'manifest.jsonl'})")
    return 0


def register(commands: Commands) -> None:
    p = commands.add("generate", cmd_generate)
    p.epilog = (
        "The sampler, steps, CFG, images per prompt, size, seeds and prompt cap are the preset's evaluation protocol "
        "(`harness presets` shows it), as `harness run` evaluates with: with the defaults, the images are comparable "
        "with a run's of that preset. Each option given replaces its part."
    )
    protocol = " (default: the preset's protocol)"
    options.add_model(p)
    options.add_unet(p)
    options.add_preset(p, "whose evaluation protocol to follow (default: toy, the toy world)")
    p.add_argument(
        "--suite",
        required=True,
        help="a registered suite, NAME:PATH for a local copy, or NAME=FILE[:seen|unseen] for a prompt file of yours",
    )
    options.add_output_directory(p, "the images and manifest.jsonl")
    p.add_argument("--images-per-prompt", type=options.count, help="images per prompt" + protocol)
    p.add_argument("--batch-size", type=options.count, help="images per pipeline call" + protocol)
    p.add_argument("--seed", type=int, default=0, help="added to the preset's seed, as `harness run --seed`")
    p.add_argument("--steps", type=options.count, help="sampler steps" + protocol)
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale" + protocol)
    p.add_argument("--height", type=options.count, help="image height in pixels" + protocol)
    p.add_argument("--width", type=options.count, help="image width in pixels" + protocol)
    p.add_argument(
        "--scheduler",
        help="ddpm, ddim, pndm, euler, euler-a, dpm++ or unipc; flow-euler for a flow-matching model (SD3)" + protocol,
    )
    p.add_argument(
        "--max-prompts",
        type=options.count,
        help="only the first N prompts of the suite (default: the preset's cap, if any)",
    )
    p.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
