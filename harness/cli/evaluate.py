"""`harness evaluate`: any checkpoint evaluated into a results directory, ranked against its base."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import options
from harness.cli.output import print_leaderboard
from harness.cli.parser import Commands
from harness.evaluation.evaluate import EvaluateOptions, evaluate_checkpoint, plan_evaluation
from harness.libraries import quiet_libraries
from harness.results.layout import ResultsDir
from harness.run import leaderboard


def cmd_evaluate(args: argparse.Namespace) -> int:
    plan = plan_evaluation(
        EvaluateOptions(
            model=args.model,
            out=Path(args.out),
            unet=args.unet,
            lora=args.lora,
            method=args.method,
            name=args.name,
            preset=args.preset,
            suites=args.suites,
            scorers=args.scorers,
            max_prompts=args.max_prompts,
            scorer_options=options.parse_scorer_options(args.scorer_option),
        )
    )  # every mistake before the libraries load
    quiet_libraries()
    evaluate_checkpoint(plan)
    print()
    print_leaderboard(leaderboard(Path(args.out)), "table")
    print(f"\nresults: {ResultsDir(args.out).db}  (run {plan.name!r}; harness dashboard --out {args.out})")
    return 0


def register(commands: Commands) -> None:
    p = commands.add("evaluate", cmd_evaluate)
    p.epilog = (
        "The generation protocol (sampler and steps, CFG, seeds, images per prompt, resolution) is the preset's, as "
        "`harness run` uses it: the images pair with a run's image for image and the numbers are comparable with the "
        "run's (its --seed too; a run made with --steps, --images-per-prompt or --vae used another). The leaderboard "
        "compares with the results directory's base run: where the base model has not been evaluated on a suite "
        "asked, it is evaluated too. Rerun the same command to resume."
    )
    options.add_model(p, required=True)
    options.add_unet(p)
    p.add_argument(
        "--lora",
        metavar="DIR",
        help="load LoRA adapters into its UNet: what `harness train` writes with lora_rank > 0 (OUT/final/lora)",
    )
    p.add_argument("--method", help="sample through this method's sampler (default: the plain pipeline)")
    p.add_argument(
        "--name", help="the run's name in the results (default: made from the location evaluated, e.g. dpo-final-unet)"
    )
    options.add_preset(p, "its evaluation protocol (default: the one the results directory was made with, else toy)")
    options.add_evaluation(p)
    options.add_results_written(p)
