"""Train the toy base model: ``python -m toyworld.build_base [--flow] [--out FILE]``.

Rewrites the committed weights (``toyworld/base.safetensors``, or with ``--flow`` its
flow-matching twin ``toyworld/base-flow.safetensors``, trained on the committed toy base's VAE)
by default; the result is identical bit for bit on the same machine and torch version, which the
printed sha256 lets anyone check.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from toyworld.base import (
    COMMITTED_WEIGHTS,
    FLOW_BUILD_SETTINGS,
    FLOW_WEIGHTS,
    BuildSettings,
    build_flow_weights,
    build_weights,
    file_digest,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", action="store_true", help="train the flow-matching twin (SD3-shaped) instead")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"weights file to write (fp16 safetensors; default {COMMITTED_WEIGHTS.name}, "
        f"{FLOW_WEIGHTS.name} with --flow)",
    )
    parser.add_argument("--vae-steps", type=int, help="default: the model's build settings (unused with --flow)")
    parser.add_argument("--unet-steps", type=int, help="denoiser steps (the UNet, or the twin's transformer)")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    defaults = FLOW_BUILD_SETTINGS if args.flow else BuildSettings()
    given = {"vae_steps": args.vae_steps, "unet_steps": args.unet_steps, "seed": args.seed}
    settings = dataclasses.replace(defaults, **{k: v for k, v in given.items() if v is not None})
    started = time.perf_counter()
    if args.flow:
        path = build_flow_weights(args.out or FLOW_WEIGHTS, settings)
    else:
        path = build_weights(args.out or COMMITTED_WEIGHTS, settings)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {file_digest(path)}) in {time.perf_counter() - started:.0f}s"
    )


if __name__ == "__main__":
    main()
