"""The options several commands share, each declared once with its help, and what reads them.

`--out` has two meanings, one function each: a *results directory* (results.db, images, models: what
`harness run` writes and leaderboard, figure, export, dashboard, runs and verify read), written or read; or, for
a command that writes something else (a training's checkpoints, generated images, an experts directory), that
*output directory*, never a results directory.  The help of each says which.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.plan.planner import RunOptions
from harness.results.experiments import parse_experiments

if TYPE_CHECKING:
    from harness.results.experiments import Experiment


def comma_list(text: str) -> list[str]:
    """An option's value ``a,b,c`` as ``["a", "b", "c"]`` (blank items dropped; none at all is a mistake)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def count(text: str) -> int:
    """A number of things (prompts, images, jobs, steps, pixels): 0 or fewer is a mistake, never "all"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# --- where results are written and read ----------------------------------------------------------------------


def add_results_written(parser: argparse.ArgumentParser, default: str = "runs", shown: str | None = None) -> None:
    """`--out DIR` of the commands that add runs to a results directory (run, evaluate, score, reproduce).
    ``default``: the directory when none is given; ``shown``: how the help states a default that depends on
    other options (then ``default`` is None and the command computes it)."""
    parser.add_argument(
        "--out",
        default=default,
        help="results directory to write, or to add to: a `harness run`'s, "
        "or a new one; rerun the same command to resume" + (f" (default: {shown})" if shown else ""),
    )


def add_results_read(parser: argparse.ArgumentParser) -> None:
    """`--out DIR` of the commands that read one results directory (runs, verify)."""
    parser.add_argument("--out", default="runs", help="results directory to read (written by `harness run --out`)")


def add_results_compared(parser: argparse.ArgumentParser) -> None:
    """`--out [NAME=]DIR`, repeatable, of the commands that set results directories side by side (leaderboard,
    figure, export, dashboard); ``experiments`` reads it."""
    parser.add_argument(
        "--out",
        action="append",
        metavar="[NAME=]DIR",
        help="results directory to read, written by `harness run --out` (default: runs); repeat it (or a comma list) "
        "to compare experiments, methods named NAME/method (NAME: the directory's name unless given), each "
        "compared with its own base",
    )


def experiments(args: argparse.Namespace) -> list[Experiment]:
    """The results directories of ``add_results_compared``'s `--out`, in the order given."""
    return parse_experiments(args.out or ["runs"])


def one_results_directory(experiments: list[Experiment], option: str) -> Path:
    """Where `figure` and `export` write by default: under the one results directory they read (of several,
    none is the obvious place: the user names it with ``option``)."""
    if len(experiments) > 1:
        raise HarnessError(f"several --out side by side: say where to write with {option} DIR")
    results = experiments[0].results
    return results.figures if option == "--figures" else results.export


def add_output_directory(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    """`--out DIR` of a command that writes ``what`` (a phrase) into a directory of its own; ``required``: whether
    the command needs one (else ``what`` says what happens without)."""
    parser.add_argument("--out", required=required, help=f"directory to write, not a results directory: {what}")


# --- what a run trains and evaluates --------------------------------------------------------------------------


def add_preset(parser: argparse.ArgumentParser, role: str, default: str | None = None) -> None:
    """`--preset NAME`: a registered preset, for ``role`` (a phrase: what the command takes from it)."""
    parser.add_argument("--preset", default=default, help=f"a registered preset (`harness presets`): {role}")


def add_model(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """`--model ID|DIR`: the base model (default: the preset's, unless ``required``)."""
    parser.add_argument(
        "--model",
        required=required,
        metavar="ID|DIR",
        help="the base model: a built model (toy, "
        "tiny), a hub id or a local diffusers directory" + ("" if required else " (default: the preset's)"),
    )


def add_training_data(parser: argparse.ArgumentParser) -> None:
    """`--data` and `--skip-bad-images`: what a training reads (run, train)."""
    parser.add_argument(
        "--data",
        help="training data: a directory with pairs.jsonl/experts.jsonl, or a hub dataset id (default: the preset's; "
        "the toy presets synthesize theirs into OUT/data)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out the data's rows whose image is missing or cannot be decoded, and count them (without it, "
        "such a row is an error naming its file and line)",
    )


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """`--set [METHOD.]FIELD=VALUE`, repeatable (run, train); ``parse_overrides`` reads it."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[METHOD.]FIELD=VALUE",
        help="override a method's setting, e.g. max_steps=10 (every method) or dpo.beta=2000 (one method); repeatable, "
        "checked before anything runs; `harness methods --show METHOD`: each setting, its default and meaning",
    )


def parse_overrides(assignments: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--set dpo.beta=2000`` (one method) or ``--set max_steps=10`` (each of ``methods``): method -> field ->
    value, the value a Python literal where it parses as one, else the text."""
    overrides: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise HarnessError(f"--set expects METHOD.FIELD=VALUE or FIELD=VALUE, got {assignment!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        method, dot, field_name = key.rpartition(".")
        for target in [method] if dot else methods:
            overrides.setdefault(target, {})[field_name] = value
    return overrides


def add_method_unets(parser: argparse.ArgumentParser) -> None:
    """`--unet METHOD=DIR`, repeatable (run --pretrained, reproduce); ``parse_unets`` reads it."""
    parser.add_argument(
        "--unet",
        action="append",
        default=[],
        metavar="METHOD=DIR",
        help="with published checkpoints: a method's UNet from a local directory (or hub id) instead of the preset's "
        "published id",
    )


def parse_unets(assignments: list[str]) -> dict[str, str]:
    """``--unet dro=DIR``: method -> where its UNet is found instead of the preset's published id."""
    unets = {}
    for assignment in assignments:
        method, sep, location = assignment.partition("=")
        if not sep or not method or not location:
            raise HarnessError(f"--unet expects METHOD=DIR, got {assignment!r}")
        unets[method] = location
    return unets


def add_unet(parser: argparse.ArgumentParser) -> None:
    """`--unet DIR`: one UNet replacing the base model's (evaluate, generate)."""
    parser.add_argument(
        "--unet",
        metavar="DIR",
        help="replace the base model's UNet: a UNet directory (e.g. OUT/final/unet of `harness train --out OUT`) or "
        "a repository with the UNet in unet/",
    )


def add_evaluation(parser: argparse.ArgumentParser, scorers: str = "the preset's") -> None:
    """`--suites`, `--scorers`, `--max-prompts`, `--scorer-option`: what an evaluation generates and scores (run,
    evaluate, reproduce); ``scorers``: the default scorers, as the help says them."""
    parser.add_argument(
        "--suites",
        type=comma_list,
        help="prompt suites (default: the preset's; NAME:PATH for a local copy, NAME=FILE[:seen|unseen] for a prompt "
        "file of yours)",
    )
    parser.add_argument("--scorers", type=comma_list, help=f"scorers (default: {scorers})")
    parser.add_argument(
        "--max-prompts",
        type=count,
        help="only the first N prompts of each suite (a quick check; the same N as a run's to compare with it)",
    )
    add_scorer_options(parser)


def add_scorer_options(parser: argparse.ArgumentParser, scorer_known: bool = False) -> None:
    """`--scorer-option`, repeatable: SCORER.OPTION=VALUE, or OPTION=VALUE where the command names its one
    scorer (``scorer_known``); ``parse_scorer_options`` reads it."""
    parser.add_argument(
        "--scorer-option",
        action="append",
        default=[],
        metavar="OPTION=VALUE" if scorer_known else "SCORER.OPTION=VALUE",
        help="where a scorer's weights are, e.g. "
        + ("checkpoint=DIR" if scorer_known else "hpsv2.checkpoint=DIR")
        + " (see `harness scorers`)",
    )


def parse_scorer_options(assignments: list[str], scorer: str | None = None) -> dict[str, dict[str, str]]:
    """``--scorer-option hpsv2.checkpoint=DIR`` (or, where the ``scorer`` is known, ``checkpoint=DIR``): scorer ->
    option -> value."""
    options: dict[str, dict[str, str]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        name, dot, option = key.rpartition(".") if scorer is None else (scorer, ".", key)
        if not sep or not dot or not name or not option:
            form = "SCORER.OPTION=VALUE" if scorer is None else "OPTION=VALUE"
            raise HarnessError(f"--scorer-option expects {form}, got {assignment!r}")
        options.setdefault(name, {})[option] = value
    return options


def run_options(args: argparse.Namespace, **specific: Any) -> RunOptions:
    """The ``RunOptions`` of what `run` and `reproduce` share (``add_preset``, ``add_model``, ``add_evaluation``,
    ``add_method_unets``, `--images-per-prompt`), with each command's ``specific`` ones."""
    return RunOptions(
        preset=args.preset,
        model=args.model,
        suites=args.suites,
        scorers=args.scorers,
        max_prompts=args.max_prompts,
        images_per_prompt=args.images_per_prompt,
        scorer_options=parse_scorer_options(args.scorer_option),
        unets=parse_unets(args.unet),
        **specific,
    )


# --- what is printed ------------------------------------------------------------------------------------------


def add_printed_format(parser: argparse.ArgumentParser, choices: list[str], help: str) -> None:
    """`--format`: how the command prints its result on stdout (the first of ``choices`` by default)."""
    parser.add_argument("--format", choices=choices, default=choices[0], help=help)


def add_base(parser: argparse.ArgumentParser) -> None:
    """`--base METHOD`: the run every Δ and win rate compares with (leaderboard, figure)."""
    parser.add_argument("--base", default="base", help="the method the deltas and win rates compare against")
