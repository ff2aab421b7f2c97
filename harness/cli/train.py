"""`harness train`: one method trained alone, as `harness run` trains it, its UNet written in diffusers format."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import options
from harness.cli.parser import Commands
from harness.libraries import quiet_libraries
from harness.plan.planner import EVERY_METHOD, RunOptions, validate_training
from harness.plan.presets import get_preset
from harness.run import train_alone


def cmd_train(args: argparse.Namespace) -> int:
    run_options = RunOptions(
        methods=[args.method],
        out=Path(args.out),
        preset=args.preset,
        model=args.model,
        data=args.data,
        overrides=options.parse_overrides(args.set, [EVERY_METHOD]),
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
    )
    plan = validate_training(run_options, get_preset(run_options.preset))  # `harness run`'s checks, before anything
    quiet_libraries()
    result = train_alone(plan, resume=not args.no_resume)
    print(f"trained {args.method} for {result.steps} steps in {result.wall_s:.1f}s; UNet: {result.unet_dir}")
    return 0


def register(commands: Commands) -> None:
    p = commands.add("train", cmd_train)
    p.add_argument("--method", required=True, help="a registered method (`harness methods`)")
    options.add_training_data(p)
    options.add_output_directory(p, "checkpoints (resumed from), the UNet in OUT/final/unet, data it makes in OUT/data")
    options.add_model(p)
    options.add_preset(
        p, "whose settings the method trains with (`harness presets --show PRESET`; default: toy, the toy world)"
    )
    options.add_overrides(p)
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and timesteps")
