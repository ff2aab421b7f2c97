"""Each official scorer against its native twin, through one `harness run` on the tiny preset.

Writes random weights in each official layout (what the native scorers' tests build), runs
``harness run --preset tiny --methods dpo --scorers hpsv2,hpsv2-official,...`` into OUT, reads every image's
scores back from the results store, and prints, per native/official pair, the largest relative difference
per image.  Exits non-zero if a pair differs by more than 1e-4 relative.

    HARNESS_CACHE=DIR python bench/official_scorers.py OUT [--pairs hpsv2,imagereward,hpsv3]

Keep HARNESS_CACHE between runs: the official environments are built there once (20-60 s each, from PyPI).
ImageReward's package builds its BLIP ViT-L whatever the weights, so its pair writes 1.8 GB of random weights
and takes minutes on a CPU.  Measured times and results: docs/scorer-environments.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from harness.api.registry import SCORERS
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.scoring.environments import build, env_dir
from harness.testing.scorer_weights import (
    QWEN_CHAT_TEMPLATE,
    register_tiny_open_clip,
    save_hpsv3,
    save_imagereward,
    save_open_clip,
)

PLUGIN = Path(__file__).resolve().parents[1] / "tests" / "plugins" / "tiny_scorer_archs.py"
TOLERANCE = 1e-4


def hpsv2_options(root: Path) -> dict[str, dict[str, str]]:
    # The package reads the architecture from its JSON file; the native scorer from open_clip's registry, where
    # the run's --plugin puts the same file.
    arch = register_tiny_open_clip(root)
    save_open_clip(root / "HPS_v2_compressed.pt", arch, training_checkpoint=True, seed=3)
    config = root / f"{arch}.json"
    return {
        "hpsv2": {"checkpoint": str(root), "arch": arch},
        "hpsv2-official": {"checkpoint": str(root), "arch": str(config)},
    }


def imagereward_options(root: Path) -> dict[str, dict[str, str]]:
    weights = save_imagereward(root, "large", seed=6)  # the package hard-codes BLIP ViT-L/16
    options = {"checkpoint": str(weights), "tokenizer": str(weights / "tokenizer")}
    return {"imagereward": options, "imagereward-official": options}


def hpsv3_options(root: Path) -> dict[str, dict[str, str]]:
    """The native scorer reads the tiny base's config and processor (transformers 5's layout); the package
    (transformers 4.45.2) loads its base with ``from_pretrained``, so its copy of the base also holds random base
    weights (replaced, strictly, by the checkpoint), and the processor files in 4.45's layout, as the
    Qwen/Qwen2-VL-7B-Instruct repository holds them (preprocessor_config.json, chat_template.json)."""
    native = save_hpsv3(root)
    base = Path(native["base"])
    package_base = root / "base-official"
    package_base.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (package_base / name).write_bytes((base / name).read_bytes())
    image = json.loads((base / "processor_config.json").read_text())["image_processor"]
    image |= {"min_pixels": image["size"]["shortest_edge"], "max_pixels": image["size"]["longest_edge"]}
    (package_base / "preprocessor_config.json").write_text(json.dumps(image, indent=1))
    (package_base / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    environment = SCORERS.get("hpsv3-official").environment
    build(environment, "hpsv3-official")
    save_base = (
        "import sys, torch; from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration; "
        "torch.manual_seed(0); Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_pretrained(sys.argv[1]))"
        ".save_pretrained(sys.argv[1])"
    )
    subprocess.run([str(env_dir(environment) / "bin" / "python"), "-c", save_base, str(package_base)], check=True)
    return {
        "hpsv3": native,
        "hpsv3-official": {"checkpoint": native["checkpoint"], "base": str(package_base), "dtype": "float32"},
    }


PAIRS = {"hpsv2": hpsv2_options, "imagereward": imagereward_options, "hpsv3": hpsv3_options}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a new directory: weights and the run's results")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"native scorers of {sorted(PAIRS)}")
    args = parser.parse_args()
    pairs = args.pairs.split(",")
    if unknown := sorted(set(pairs) - set(PAIRS)):
        parser.error(f"unknown pair {unknown[0]!r}; known: {', '.join(PAIRS)}")

    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        options |= PAIRS[pair](args.out / "weights" / pair)
    harness = str(Path(sys.executable).with_name("harness"))
    command = [harness, "--plugin", str(PLUGIN), "run", "--preset", "tiny", "--methods", "dpo"]
    command += ["--out", str(args.out / "run"), "--scorers", ",".join(options)]
    for scorer, locations in options.items():
        for key, value in locations.items():
            command += ["--scorer-option", f"{scorer}.{key}={value}"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"harness run: {time.perf_counter() - start:.0f} s")

    with Store(ResultsDir(args.out / "run").db, readonly=True) as store:
        scores = store.scores_frame()
    worst = 0.0
    for pair in pairs:
        native = scores[scores.metric == pair].set_index(["run_id", "suite", "prompt_id", "image_index"]).value
        package = scores[scores.metric == f"{pair}-official"].set_index(["run_id", "suite", "prompt_id", "image_index"])
        joined = native.to_frame("native").join(package.value.rename("official"), how="inner")
        relative = ((joined.native - joined.official).abs() / joined.official.abs()).max()
        print(f"{pair} vs {pair}-official: {len(joined)} images, largest relative difference {relative:.2e}")
        worst = max(worst, relative)
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
