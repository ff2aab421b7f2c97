"""`harness methods|scorers|suites|presets`: what is registered, and one suite's or preset's details."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.api.registry import METHODS, PRESETS, SCORERS
from harness.cli import options
from harness.cli.parser import Commands
from harness.errors import HarnessError
from harness.evaluation.evaluate import check_scorer_options
from harness.evaluation.suites import check_suite_name, get_suite, list_suites, show_suite
from harness.plan.presets import get_preset, preset_summary, show_method, show_preset
from harness.results.text_table import text_table
from harness.scoring import get_scorer
from harness.scoring.cache import score_images
from harness.scoring.environments import build_environments, describe_environment, environment_of


def cmd_methods(args: argparse.Namespace) -> int:
    if args.show:
        print(show_method(args.show))
        return 0
    print(
        text_table(
            [["method", "description"], *([name, getattr(cls, "description", "")] for name, cls in METHODS.items())]
        )
    )
    return 0


def cmd_scorers(args: argparse.Namespace) -> int:
    if args.compare:
        print(compare_scorers(args.compare, args.images, options.parse_scorer_options(args.scorer_option)))
        return 0
    if args.build:
        for name in args.build.split(","):
            if environment_of(SCORERS.get(name)) is None:
                raise HarnessError(f"scorer {name!r} is native: it runs in the harness's own environment")
        build_environments(args.build.split(","), SCORERS)
        return 0
    print(
        text_table(
            [
                ["scorer", "version", "scale", "environment", "description"],
                *(
                    [name, cls.version, cls.scale, describe_environment(cls), getattr(cls, "description", "")]
                    for name, cls in SCORERS.items()
                ),
            ]
        )
    )
    return 0


def compare_scorers(pair: str, images: Path | None, scorer_options: dict[str, dict[str, str]]) -> str:
    """`--compare A,B --images DIR`: both scorers on every image of DIR/manifest.jsonl (rows with ``path`` and
    ``prompt``, as `harness generate` writes), and their largest difference."""
    names = pair.split(",")
    if len(names) != 2:
        raise HarnessError(f"--compare takes two scorers, NATIVE,OFFICIAL; got {pair!r}")
    if images is None:
        raise HarnessError("--compare needs --images DIR (a folder with manifest.jsonl)")
    for name in names:
        SCORERS.get(name)
        check_scorer_options(name, scorer_options.get(name, {}))
    manifest = images / "manifest.jsonl" if images.is_dir() else images
    rows = read_manifest(manifest)
    paths, prompts = [manifest.parent / row["path"] for row in rows], [row["prompt"] for row in rows]
    values = []
    for name in names:
        scorer = get_scorer(name, **scorer_options.get(name, {}))
        values.append(score_images(scorer, paths, prompts))
        getattr(scorer, "close", lambda: None)()
    differences = [abs(a - b) for a, b in zip(*values)]
    worst = max(range(len(rows)), key=differences.__getitem__)
    relative = max(d / max(abs(a), abs(b), 1e-12) for d, a, b in zip(differences, *values))
    return (
        f"{names[0]} vs {names[1]} on {len(rows)} images: largest difference {differences[worst]:.3g} "
        f"({values[0][worst]:.6g} vs {values[1][worst]:.6g}, {rows[worst]['path']}), largest relative {relative:.3g}"
    )


def read_manifest(path: Path) -> list[dict]:
    """The rows of a manifest with ``path`` and ``prompt``; a missing file or row is one error line."""
    if not path.is_file():
        raise HarnessError(f"no manifest at {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not isinstance(row.get("prompt"), str):
            raise HarnessError(f"{path} line {number}: expected a JSON object with path and prompt")
        rows.append(row)
    if not rows:
        raise HarnessError(f"{path} lists no images")
    return rows


def cmd_suites(args: argparse.Namespace) -> int:
    if args.show:
        check_suite_name(args.show)
        print(show_suite(get_suite(args.show)))
        return 0
    print(
        text_table(
            [
                ["suite", "split", "prompts", "version", "description", "categories"],
                *(info.cells() for info in list_suites()),
            ]
        )
    )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.show:
        print(show_preset(get_preset(args.show)))
        return 0
    rows = [["preset", "description and main settings (`harness presets --show PRESET`: every method's)"]]
    for name in PRESETS.names():
        preset = get_preset(name)
        rows.append([name, preset.description + ("  (the default)" if preset.default else "")])
        rows.extend(["", line] for line in preset_summary(preset))
    print(text_table(rows))
    return 0


def register(commands: Commands) -> None:
    p = commands.add("methods", cmd_methods)
    p.add_argument(
        "--show",
        metavar="METHOD",
        help="print the method's settings (what --set takes): each one's default and meaning, and the presets it has "
        "recipes for",
    )
    p = commands.add("scorers", cmd_scorers)
    p.add_argument(
        "--build",
        metavar="SCORER[,SCORER]",
        help="build the environments of these scorers (those that run in their own: see the environment column) "
        "ahead of a run, showing progress; `harness run` builds what it needs before its first job",
    )
    p.add_argument(
        "--compare",
        metavar="NATIVE,OFFICIAL",
        help="score the images of --images with both scorers (e.g. hpsv2,hpsv2-official) and print their largest "
        "difference",
    )
    p.add_argument(
        "--images", type=Path, metavar="DIR", help="with --compare: a folder holding manifest.jsonl (path, prompt)"
    )
    options.add_scorer_options(p)
    p = commands.add("suites", cmd_suites)
    p.add_argument(
        "--show",
        metavar="SUITE",
        help="print the suite's split, size, version and source, and every prompt (a registered suite, NAME:PATH for "
        "its local copy, or NAME=FILE for a prompt file)",
    )
    p = commands.add("presets", cmd_presets)
    p.add_argument("--show", metavar="PRESET", help="print every method's resolved settings under this preset")
