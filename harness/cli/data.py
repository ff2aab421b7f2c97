"""`harness data score|experts`: the data steps a method's training data needs, run on their own."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import options
from harness.cli.parser import Commands
from harness.data.score_table import ScoreTable
from harness.data.steps import experts_recipe, score_training_images, select_experts
from harness.libraries import quiet_libraries


def cmd_data_score(args: argparse.Namespace) -> int:
    quiet_libraries()
    scorer_options = options.parse_scorer_options(args.scorer_option, scorer=args.scorer)
    path = score_training_images(
        args.data,
        args.scorer,
        split=args.split,
        scorer_options=scorer_options.get(args.scorer),
        batch_size=args.batch_size,
    )
    with ScoreTable(path) as table:
        print(
            f"{len(table)} image-caption scores by {table.meta['scorer']} {table.meta['version']} "
            f"({table.meta['scale']}): {path}"
        )
    return 0


def cmd_data_experts(args: argparse.Namespace) -> int:
    quiet_libraries()
    scorer_options = options.parse_scorer_options(args.scorer_option, scorer=args.scorer)
    out = select_experts(
        args.data,
        args.scorer,
        args.top_k,
        Path(args.out),
        split=args.split,
        scorer_options=scorer_options.get(args.scorer),
        batch_size=args.batch_size,
    )
    recipe = experts_recipe(out)
    print(
        f"top {recipe['n']} experts by {recipe['scorer']} {recipe['version']} ({recipe['scale']}): "
        f"{out / 'experts.jsonl'}  (train on it with --data {out})"
    )
    return 0


def register(commands: Commands) -> None:
    steps = commands.group("data", metavar="STEP")
    for name, run, help in (
        (
            "score",
            cmd_data_score,
            "score every image of the training pairs with a scorer (cached, resumable; SmPO's pair scores)",
        ),
        (
            "experts",
            cmd_data_experts,
            "the top-K training images by a scorer, as an experts.jsonl directory (DRO's experts)",
        ),
    ):
        step = steps.add(name, run, help)
        step.add_argument(
            "--data", required=True, help="Pick-a-Pic v2 (hub id or local copy) or a pairs.jsonl directory"
        )
        step.add_argument(
            "--scorer", required=True, help="a registered scorer, e.g. hpsv2, pickscore, pickscore-cosine"
        )
        step.add_argument("--split", default="train", help="the data set's split")
        step.add_argument("--batch-size", type=options.count, default=32, help="images per scorer call")
        options.add_scorer_options(step, scorer_known=True)
        if name == "experts":
            step.add_argument("--top-k", type=options.count, required=True, help="how many experts (DRO: 500)")
            options.add_output_directory(
                step, "the experts (experts.jsonl), for --data of `harness run` or `harness train`"
            )
