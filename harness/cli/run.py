"""`harness run`: train each method from one base, evaluate, store and rank."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import options
from harness.cli.output import print_hacking, print_leaderboard
from harness.cli.parser import Commands
from harness.libraries import quiet_libraries
from harness.plan.planner import EVERY_METHOD, describe, validate
from harness.plan.presets import get_preset
from harness.results.experiments import Experiment
from harness.results.hacking import load_hacking
from harness.results.layout import ResultsDir
from harness.run import run_validated


def cmd_run(args: argparse.Namespace) -> int:
    run_options = options.run_options(
        args,
        methods=args.methods,
        out=Path(args.out),
        data=args.data,
        steps=args.steps,
        vae=args.vae,
        overrides=options.parse_overrides(args.set, [EVERY_METHOD]),
        pretrained=args.pretrained,
        seed=args.seed,
        jobs=args.jobs,
        train_processes=args.train_processes,
        eval_every=args.eval_every,
        eval_suites=args.eval_suites,
        backend=args.backend,
        address=args.address,
        skip_bad_images=args.skip_bad_images,
    )
    plan = validate(run_options, get_preset(run_options.preset))  # every mistake is reported before the libraries load
    if args.dry_run:
        print(describe(plan))
        return 0
    quiet_libraries()
    rows = run_validated(plan)
    print()
    print_leaderboard(rows, "table")
    print("\nreward hacking (harness leaderboard --hacking):")
    print_hacking(load_hacking([Experiment(Path(args.out).name, ResultsDir(args.out))], rows=rows), "table")
    print(
        f"\nresults: {ResultsDir(args.out).db}  (harness leaderboard --out {args.out}; harness dashboard --out "
        f"{args.out})"
    )
    return 0


def register(commands: Commands) -> None:
    p = commands.add("run", cmd_run)
    p.add_argument("--methods", type=options.comma_list, required=True, help="comma-separated, e.g. dpo,dro,smpo")
    options.add_results_written(p)
    options.add_preset(p, "the methods' settings, training data and evaluation protocol (default: toy, the toy world)")
    options.add_model(p)
    p.add_argument(
        "--vae",
        help="replacement VAE, hub id or local directory (default: the preset's, e.g. SDXL's "
        "madebyollin/sdxl-vae-fp16-fix)",
    )
    options.add_training_data(p)
    options.add_evaluation(p)
    p.add_argument("--images-per-prompt", type=options.count, help="images per prompt (default: the preset's protocol)")
    p.add_argument(
        "--steps",
        type=options.count,
        help="sampler steps of the evaluation (default: the preset's protocol, e.g. 50 for sd15; fewer makes a quick "
        "check, not the papers' numbers)",
    )
    options.add_overrides(p)
    p.add_argument("--pretrained", action="store_true", help="evaluate the published checkpoints instead of training")
    options.add_method_unets(p)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the trainings and, added to the preset's, of the evaluation's images",
    )
    p.add_argument(
        "--jobs",
        type=options.count,
        help="jobs (a training, a model's evaluation) run at once (default: one per core on a CPU, one thread each; "
        "one per GPU, or per N GPUs with trainings of N processes, each job's GPUs its own)",
    )
    p.add_argument(
        "--train-processes",
        type=options.count,
        default=1,
        metavar="N",
        help="each training as N data-parallel processes (torch's launcher; on --backend ray, Ray Train's workers; gloo "
        "on a CPU), the effective batch kept: "
        "accumulation = effective_batch_size / (N x batch_size); --set METHOD.processes=N for one method "
        "(docs/scaling.md)",
    )
    p.add_argument(
        "--eval-every",
        type=options.count,
        metavar="N",
        help="also evaluate each method's UNet every N training steps, with the final evaluation's prompts, seeds, "
        "sampler and scorers (metric-vs-step curves; the cost is printed before the run starts)",
    )
    p.add_argument(
        "--eval-suites",
        type=options.comma_list,
        help="with --eval-every: only these of the run's suites (each whole; default: all)",
    )
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="where the jobs run: this machine's worker processes (local) or a Ray cluster (pip install '.[ray]'; "
        "docs/scaling.md)",
    )
    p.add_argument("--address", help="with --backend ray: the cluster, auto or HOST:PORT (default: start one here)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything and print the plan (each model's settings and where they come from, the jobs in order, "
        "the UNet evaluations), creating nothing",
    )
