"""`harness score`: images made elsewhere scored into a results directory, as a run of their own."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import options
from harness.cli.output import print_leaderboard
from harness.cli.parser import Commands
from harness.evaluation.external_images import ScoreOptions, plan_scoring, score_external
from harness.results.layout import ResultsDir
from harness.run import leaderboard


def cmd_score(args: argparse.Namespace) -> int:
    plan = plan_scoring(
        ScoreOptions(
            images=Path(args.images),
            prompts=args.prompts,
            name=args.name,
            out=Path(args.out),
            scorers=args.scorers,
            scorer_options=options.parse_scorer_options(args.scorer_option),
        )
    )
    score_external(plan)
    print()
    print_leaderboard(leaderboard(Path(args.out)), "table")
    print(f"\n{len(plan.images)} images of {plan.suite.name} scored as run {args.name!r}: {ResultsDir(args.out).db}")
    if plan.n_without_seed:
        print(
            f"note: {plan.n_without_seed} images have no seed in {plan.manifest}: they are compared with no "
            "other run (Δ and win rates pair images of the same prompt, index and seed)"
        )
    return 0


def register(commands: Commands) -> None:
    p = commands.add("score", cmd_score)
    p.epilog = (
        "The manifest is JSONL, one image a line: path (relative to the manifest's folder), prompt_id or prompt (of "
        "the --prompts suite), image_index (default: the order of the prompt's lines), seed (optional), sha256 "
        "(optional, checked); other keys are ignored, so `harness generate`'s manifest.jsonl is one. The images are "
        "copied into OUT/images/NAME/SUITE/. Δ and win rates pair them with the base's images of the same prompt, "
        "index and seed: images without a seed are compared with no other run."
    )
    p.add_argument(
        "--images",
        required=True,
        metavar="DIR|manifest.jsonl",
        help="a manifest, or a folder holding manifest.jsonl (what `harness generate --out DIR` writes)",
    )
    p.add_argument(
        "--prompts",
        required=True,
        metavar="SUITE|FILE",
        help="the suite the images were made for, or a prompt file (JSONL or one prompt a line)",
    )
    p.add_argument("--scorers", type=options.comma_list, required=True, help="comma-separated, e.g. pickscore,hpsv2")
    p.add_argument("--name", required=True, help="the run's name in the results")
    options.add_scorer_options(p)
    options.add_results_written(p)
