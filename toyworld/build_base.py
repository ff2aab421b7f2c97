"""Train the toy base model: ``python -m toyworld.build_base [--out FILE]``.

Rewrites the committed weights (``toyworld/base.safetensors``) by
default; the result is identical bit for bit on the same machine and torch
version, which the printed sha256 lets anyone check.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from toyworld.base import COMMITTED_WEIGHTS, BuildSettings, build_weights, file_digest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=COMMITTED_WEIGHTS, help="weights file to write (fp16 safetensors)")
    defaults = BuildSettings()
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    settings = dataclasses.replace(defaults, vae_steps=args.vae_steps, unet_steps=args.unet_steps, seed=args.seed)
    started = time.perf_counter()
    path = build_weights(args.out, settings)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {file_digest(path)}) in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
