"""The `harness` command line.

Heavy libraries (torch, diffusers, transformers) are imported inside the
commands so that `harness --help` and `harness methods` start quickly.  A
mistake the user can fix is a ``HarnessError``: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import ast
import csv
import difflib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from harness.atomic import disk_full_error
from harness.errors import HarnessError
from harness.results import ResultsDir
from harness.text_table import text_table
from harness.workers import quiet_libraries

if TYPE_CHECKING:
    from harness.experiments import Experiment

LEADERBOARD_COLUMNS = [
    "method", "suite", "split", "metric", "higher_is_better", "n", "mean", "ci_low", "ci_high",
    "delta_vs_base", "delta_ci_low", "delta_ci_high", "win_rate_vs_base", "trained_on_signal",
]


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def _count(text: str) -> int:
    """A number of things (prompts, images, jobs, steps, pixels): 0 or fewer is a mistake, never "all"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, as every other mistake (argparse would print the whole usage first), saying
    what was meant where it can tell: an option before the command's name, a misspelt option."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self.given = list(sys.argv[1:] if args is None else args)  # what error() reads the user's words from
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        meant, prog = self._meant() or (message, self.prog)
        self.exit(2, f"harness: error: {meant} (see `{prog} --help`)\n")

    def _meant(self) -> tuple[str, str] | None:
        """The message for a mistake whose cause is plain from the words given, and the command it is about."""
        given = getattr(self, "given", [])
        commands = next((action.choices for action in self._actions
                         if isinstance(action, argparse._SubParsersAction)), {})
        # The command's name: the first one that is no option's value (`harness --out runs leaderboard`).
        at = next((i for i, word in enumerate(given) if word in commands
                   and not (i and given[i - 1].startswith("-") and "=" not in given[i - 1])), None)
        if at is not None:
            misplaced = [word for word in given[:at]
                         if word.startswith("-") and word.split("=")[0] not in GLOBAL_OPTIONS]
            if misplaced:
                fixed = " ".join([given[at], *given[:at], *given[at + 1:]])
                return (f"{misplaced[0].split('=')[0]} is an option of the command: write it after the command's name, "
                        f"`harness {fixed}` (only {', '.join(GLOBAL_OPTIONS)} may come before it)", self.prog)
        parser = commands.get(given[at], self) if at is not None else self  # the top parser reports unknown words
        known = [option for action in parser._actions for option in action.option_strings]
        for word in given:
            option = word.split("=")[0]
            if option.startswith("--") and option not in known:
                close = difflib.get_close_matches(option, known, n=1)
                if close:
                    return f"{option} is not an option of `{parser.prog}`: did you mean {close[0]}?", parser.prog
        return None


def _parse_overrides(assignments: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--set dpo.beta=2000`` (one method) or ``--set max_steps=10`` (every method)."""
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


def _parse_scorer_options(assignments: list[str], scorer: str | None = None) -> dict[str, dict[str, str]]:
    """``--scorer-option hpsv2.checkpoint=DIR`` (or, where the scorer is known, ``checkpoint=DIR``)."""
    options: dict[str, dict[str, str]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        name, dot, option = key.rpartition(".") if scorer is None else (scorer, ".", key)
        if not sep or not dot or not name or not option:
            form = "SCORER.OPTION=VALUE" if scorer is None else "OPTION=VALUE"
            raise HarnessError(f"--scorer-option expects {form}, got {assignment!r}")
        options.setdefault(name, {})[option] = value
    return options


def _parse_unets(assignments: list[str]) -> dict[str, str]:
    """``--unet dro=DIR``: where --pretrained finds a method's UNet instead of the preset's published id."""
    unets = {}
    for assignment in assignments:
        method, sep, location = assignment.partition("=")
        if not sep or not method or not location:
            raise HarnessError(f"--unet expects METHOD=DIR, got {assignment!r}")
        unets[method] = location
    return unets


def _run_options(args: argparse.Namespace, **specific: Any):
    """The ``RunOptions`` of the options `run` and `reproduce` share, with each command's ``specific`` ones."""
    from harness.run import RunOptions

    return RunOptions(preset=args.preset, model=args.model, suites=args.suites, scorers=args.scorers,
                      max_prompts=args.max_prompts, images_per_prompt=args.images_per_prompt,
                      scorer_options=_parse_scorer_options(args.scorer_option), unets=_parse_unets(args.unet),
                      **specific)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.plan import describe
    from harness.presets import get_preset
    from harness.run import EVERY_METHOD, run_validated, validate

    options = _run_options(args, methods=args.methods, out=Path(args.out), data=args.data, steps=args.steps,
                           vae=args.vae, overrides=_parse_overrides(args.set, [EVERY_METHOD]),
                           pretrained=args.pretrained, seed=args.seed, jobs=args.jobs, eval_every=args.eval_every,
                           eval_suites=args.eval_suites, backend=args.backend, address=args.address,
                           skip_bad_images=args.skip_bad_images)
    plan = validate(options, get_preset(options.preset))  # every mistake is reported before the libraries load
    if args.dry_run:
        print(describe(plan))
        return 0
    quiet_libraries()
    rows = run_validated(plan)
    print()
    _print_leaderboard(rows, "table")
    print(f"\nresults: {ResultsDir(args.out).db}  (harness leaderboard --out {args.out}; harness dashboard --out {args.out})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.evaluate import EvaluateOptions, evaluate_checkpoint, plan_evaluation
    from harness.run import leaderboard

    plan = plan_evaluation(EvaluateOptions(
        model=args.model, out=Path(args.out), unet=args.unet, lora=args.lora, method=args.method, name=args.name,
        preset=args.preset, suites=args.suites, scorers=args.scorers, max_prompts=args.max_prompts,
        scorer_options=_parse_scorer_options(args.scorer_option)))  # every mistake before the libraries load
    quiet_libraries()
    evaluate_checkpoint(plan)
    print()
    _print_leaderboard(leaderboard(Path(args.out)), "table")
    print(f"\nresults: {ResultsDir(args.out).db}  (run {plan.name!r}; harness dashboard --out {args.out})")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from harness.external_images import ScoreOptions, plan_scoring, score_external
    from harness.run import leaderboard

    plan = plan_scoring(ScoreOptions(images=Path(args.images), prompts=args.prompts, name=args.name,
                                     out=Path(args.out), scorers=args.scorers,
                                     scorer_options=_parse_scorer_options(args.scorer_option)))
    score_external(plan)
    print()
    _print_leaderboard(leaderboard(Path(args.out)), "table")
    print(f"\n{len(plan.images)} images of {plan.suite.name} scored as run {args.name!r}: {ResultsDir(args.out).db}")
    if plan.n_without_seed:
        print(f"note: {plan.n_without_seed} images have no seed in {plan.manifest}: they are compared with no "
              "other run (Δ and win rates pair images of the same prompt, index and seed)")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.reproduce import format_report, reproduce

    quiet_libraries()
    options = _run_options(args, methods=args.methods or [], pretrained=True,
                           out=Path(args.out or Path("runs") / f"reproduce-{args.preset}"))
    report = reproduce(options)
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else format_report(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from harness.presets import get_preset
    from harness.run import EVERY_METHOD, RunOptions, train_alone, validate_training

    options = RunOptions(methods=[args.method], out=Path(args.out), preset=args.preset, model=args.model,
                         data=args.data, overrides=_parse_overrides(args.set, [EVERY_METHOD]), seed=args.seed,
                         skip_bad_images=args.skip_bad_images)
    plan = validate_training(options, get_preset(options.preset))  # `harness run`'s checks, before anything is made
    quiet_libraries()
    result = train_alone(plan, resume=not args.no_resume)
    print(f"trained {args.method} for {result.steps} steps in {result.wall_s:.1f}s; UNet: {result.unet_dir}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """The preset's evaluation protocol (the one `harness run` evaluates with), with the options given replacing
    parts of it.  Under torchrun, every process runs this; prompts are split by rank and rank 0 merges the manifest."""
    from harness.config import require_directory_or_nothing, require_existing_path, resolve_base_model
    from harness.evaluate import unet_subfolder
    from harness.presets import get_preset

    preset = get_preset(args.preset)
    model = args.model or preset.base_model
    require_existing_path(model, "--model")  # before the libraries load
    subfolder = None
    if args.unet:
        require_existing_path(args.unet, "--unet")
        subfolder = unet_subfolder(args.unet)
    require_directory_or_nothing(Path(args.out), "--out")
    from harness.models import check_network_fits, inference_device, load_pipeline

    if args.unet:
        check_network_fits(model, args.unet, what="--unet")
    from harness.evaluate import Protocol
    from harness.distributed import torchrun_process_group
    from harness.sampling import generate, optimize_pipeline

    quiet_libraries()
    protocol = Protocol.of(preset, max_prompts=args.max_prompts, images_per_prompt=args.images_per_prompt,
                           steps=args.steps, seed=args.seed)
    suite = protocol.load_suite(args.suite)
    settings = protocol.sampling(suite.name)
    given = dict(batch_size=args.batch_size, guidance_scale=args.cfg, height=args.height, width=args.width,
                 scheduler=args.scheduler)
    settings.update({name: value for name, value in given.items() if value is not None})
    with torchrun_process_group() as device:
        _, dtype = inference_device()
        pipe = load_pipeline(resolve_base_model(model), unet=args.unet, unet_subfolder=subfolder, dtype=dtype,
                             device=device, vae=preset.vae)
        pipe = optimize_pipeline(pipe, channels_last=args.channels_last, compile_unet=args.compile)
        rows = generate(pipe, suite, Path(args.out), **settings, progress=not args.no_progress)
    print(f"{len(rows)} images in {args.out} (manifest: {Path(args.out) / 'manifest.jsonl'})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.experiments import load_leaderboard, parse_experiments

    by = [args.by] if args.by else []
    if args.columns is not None:
        from harness.tables import FORMATS, check_statistics

        if args.format not in FORMATS:
            raise HarnessError(f"--columns chooses the columns of --format {' or '.join(FORMATS)}, not {args.format}")
        check_statistics(args.columns)
    rows = load_leaderboard(parse_experiments(args.out or ["runs"]), base=args.base, by=by)
    _print_leaderboard(rows, args.format, base=args.base, ci=args.ci, by=args.by, statistics=args.columns)
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from dashboard.figures import FigureOptions, write_figures
    from harness.experiments import parse_experiments

    experiments = parse_experiments(args.out or ["runs"])
    options = FigureOptions(figures=Path(args.figures) if args.figures else _one_directory(experiments, "--figures"),
                            formats=args.formats, base=args.base, grid_prompts=args.grid_prompts,
                            grid_image=args.grid_image)
    for path in write_figures(experiments, options):
        print(path)
    return 0


def _one_directory(experiments: list[Experiment], option: str) -> Path:
    """Where `figure` and `export` write by default: under the one results directory they read (of several,
    none is the obvious place: the user names it)."""
    if len(experiments) > 1:
        raise HarnessError(f"several --out side by side: say where to write with {option} DIR")
    results = experiments[0].results
    return results.figures if option == "--figures" else results.export


def _print_leaderboard(rows: list[dict], fmt: str, *, base: str = "base", ci: bool = False,
                       by: str | None = None, statistics: list[str] | None = None) -> None:
    if fmt in ("latex", "markdown"):
        from harness.tables import DEFAULT_STATISTICS, paper_tables, to_latex, to_markdown

        print((to_latex if fmt == "latex" else to_markdown)(paper_tables(rows, base=base, by=by), ci=ci,
                                                           statistics=statistics or DEFAULT_STATISTICS))
    elif fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        columns = list(rows[0]) if rows else LEADERBOARD_COLUMNS
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(format_table(rows, ci=ci))


def format_table(rows: list[dict], ci: bool = False) -> str:
    """A compact human table: mean [95% CI], delta vs base [CI], win rate (with ``ci``, its Wilson 95% interval).

    A mean is marked when its method was trained on that metric, and a lower-is-better metric's name,
    each with a footnote saying what it means.
    """
    from harness.run_details import MISSING
    from harness.stats import LOWER_MARK, LOWER_NOTE, SIGNAL_MARK, SIGNAL_NOTE

    def num(value: Any, digits: int = 4) -> str:
        return MISSING if value is None else f"{value:.{digits}g}"

    def interval(low: Any, high: Any, digits: int) -> str:
        return "[no CI: 1 prompt]" if low is None or high is None else f"[{num(low, digits)}, {num(high, digits)}]"

    # Rows split by category say so, with each part's prompt count: few prompts, wide CIs.
    by_category = any("category" in r for r in rows)
    parts = ["category", "prompts"] if by_category else []
    header = ["method", "suite", *parts, "metric", "n", "mean [95% CI]", "Δ vs base [95% CI]", "win rate"]
    lines = [header]
    for r in rows:
        delta = MISSING if r.get("delta_vs_base") is None else f"{num(r['delta_vs_base'], 3)} {interval(r['delta_ci_low'], r['delta_ci_high'], 3)}"
        win = MISSING if r.get("win_rate_vs_base") is None else f"{r['win_rate_vs_base']:.1%}"
        if ci and r.get("win_ci_low") is not None:
            win += f" [{r['win_ci_low']:.1%}, {r['win_ci_high']:.1%}]"
        mark = SIGNAL_MARK if r.get("trained_on_signal") else ""
        metric = r["metric"] if r.get("higher_is_better", True) else f"{r['metric']} {LOWER_MARK}"
        lines.append([
            r["method"], r["suite"], *([str(r["category"]), str(r["n_prompts"])] if by_category else []),
            metric, str(r["n"]), f"{num(r['mean'])}{mark} {interval(r['ci_low'], r['ci_high'], 4)}", delta, win,
        ])
    table = text_table(lines)
    notes = [note for note, shown in ((SIGNAL_NOTE, any(r.get("trained_on_signal") for r in rows)),
                                      (LOWER_NOTE, not all(r.get("higher_is_better", True) for r in rows))) if shown]
    return "\n".join([table, *notes])


def cmd_runs(args: argparse.Namespace) -> int:
    from harness.run_details import format_run_details, run_details
    from harness.store import Store

    db = ResultsDir(args.out).db
    if not db.exists():
        raise HarnessError(f"no results in {args.out}: {db} does not exist (run `harness run --out {args.out}` first)")
    with Store(db, readonly=True) as store:
        print(format_run_details(run_details(store.runs_frame())))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.models import default_cache_dir
    from harness.verify import run_verify

    return run_verify(Path(args.out), args.repair, default_cache_dir())


def cmd_export(args: argparse.Namespace) -> int:
    from harness.experiments import parse_experiments
    from harness.store import export_experiments

    experiments = parse_experiments(args.out or ["runs"])
    dest = Path(args.dest) if args.dest else _one_directory(experiments, "--dest")
    paths = export_experiments(experiments, dest, args.format)
    for path in paths:
        print(path)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard import serve
    from harness.experiments import parse_experiments

    return serve(parse_experiments(args.out or ["runs"]), port=args.port)


def cmd_methods(args: argparse.Namespace) -> int:
    from harness.api.registry import METHODS

    print(text_table([["method", "description"],
                      *([name, getattr(cls, "description", "")] for name, cls in METHODS.items())]))
    return 0


def cmd_scorers(args: argparse.Namespace) -> int:
    from harness.api.registry import SCORERS

    print(text_table([["scorer", "version", "scale", "description"],
                      *([name, cls.version, cls.scale, getattr(cls, "description", "")] for name, cls in SCORERS.items())]))
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from harness.suites import check_suite_name, get_suite, list_suites, show_suite

    if args.show:
        check_suite_name(args.show)
        print(show_suite(get_suite(args.show)))
        return 0
    print(text_table([["suite", "split", "prompts", "version", "description", "categories"],
                      *(info.cells() for info in list_suites())]))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from harness.api.registry import PRESETS
    from harness.presets import get_preset, preset_summary, show_preset

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


def cmd_data_score(args: argparse.Namespace) -> int:
    from harness.data_steps import score_training_images
    from harness.score_table import ScoreTable

    quiet_libraries()
    options = _parse_scorer_options(args.scorer_option, scorer=args.scorer)
    path = score_training_images(args.data, args.scorer, split=args.split, scorer_options=options.get(args.scorer),
                                 batch_size=args.batch_size)
    with ScoreTable(path) as table:
        print(f"{len(table)} image-caption scores by {table.meta['scorer']} {table.meta['version']} "
              f"({table.meta['scale']}): {path}")
    return 0


def cmd_data_experts(args: argparse.Namespace) -> int:
    from harness.data_steps import experts_recipe, select_experts

    quiet_libraries()
    options = _parse_scorer_options(args.scorer_option, scorer=args.scorer)
    out = select_experts(args.data, args.scorer, args.top_k, Path(args.out), split=args.split,
                         scorer_options=options.get(args.scorer), batch_size=args.batch_size)
    recipe = experts_recipe(out)
    print(f"top {recipe['n']} experts by {recipe['scorer']} {recipe['version']} ({recipe['scale']}): "
          f"{out / 'experts.jsonl'}  (train on it with --data {out})")
    return 0


class HelpFormatter(argparse.HelpFormatter):
    """`--help` and docs/cli.md: each option's default at the end of its help, where it has one worth saying (argparse's
    ArgumentDefaultsHelpFormatter also prints "default: None" and "default: False")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return action.help or ""
        shown = ",".join(default) if isinstance(default, list) else str(default)
        return f"{action.help} (default: {shown.replace('%', '%%')})"


GLOBAL_OPTIONS = ("--plugin", "-h", "--help")  # what may come before a command's name


def _global_options(after_command: bool) -> argparse.ArgumentParser:
    """The options every command takes, before its name (`harness --plugin my.py run ...`) or after it
    (`harness run --plugin my.py ...`).  After it they land in ``*_after`` (``main`` joins the two): argparse
    gives a command a fresh namespace whose default would replace what came before."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("options of every command (before or after its name)")
    where = dict(dest="plugin_after", default=argparse.SUPPRESS) if after_command else dict(default=[])
    group.add_argument("--plugin", action="append", metavar="FILE|MODULE", **where,
                       help="load a plugin: a .py file or a module registering methods, scorers, suites or presets "
                       "(repeatable)")
    return options


SKIP_BAD_IMAGES = ("leave out the data's rows whose image is missing or cannot be decoded, and count them "
                   "(without it, such a row is an error naming its file and line)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__.splitlines()[0] if __doc__ else None,
                     parents=[_global_options(after_command=False)], formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    every_command = [_global_options(after_command=True)]

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                within: Any = sub) -> argparse.ArgumentParser:
        p = within.add_parser(name, help=help, description=help, parents=every_command, formatter_class=HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "train each method from one base, generate the suites, score, store and rank")
    p.add_argument("--methods", type=_comma_list, required=True, help="comma-separated, e.g. dpo,dro,smpo")
    p.add_argument("--out", default="runs", help="results directory to write (rerun the same command to resume)")
    p.add_argument("--preset", help="a registered preset (`harness presets`; default: toy, the toy world)")
    p.add_argument("--model", help="base model: hub id or local diffusers directory (default: the preset's)")
    p.add_argument("--data", help="training data: directory with pairs.jsonl/experts.jsonl, or a hub dataset id")
    p.add_argument("--vae", help="replacement VAE, hub id or local directory (default: the preset's, e.g. SDXL's "
                   "madebyollin/sdxl-vae-fp16-fix)")
    p.add_argument("--suites", type=_comma_list, help="prompt suites (default: the preset's; NAME:PATH for a local "
                   "copy, NAME=FILE[:seen|unseen] for a prompt file of yours)")
    p.add_argument("--scorers", type=_comma_list, help="scorers (default: the preset's)")
    p.add_argument("--max-prompts", type=_count, help="use only the first N prompts of each suite")
    p.add_argument("--images-per-prompt", type=_count, help="images per prompt (default: the preset's protocol)")
    p.add_argument("--steps", type=_count, help="sampler steps of the evaluation (default: the preset's protocol, "
                   "e.g. 50 for sd15; fewer makes a quick check, not the papers' numbers)")
    p.add_argument("--set", action="append", default=[], metavar="[METHOD.]FIELD=VALUE", help="override a method's config field")
    p.add_argument("--pretrained", action="store_true", help="evaluate the published checkpoints instead of training")
    p.add_argument("--seed", type=int, default=0, help="seed of the trainings and, added to the preset's, of the "
                   "evaluation's images")
    p.add_argument("--jobs", type=_count, help="jobs (a training, a model's evaluation) run at once "
                   "(default: one per core on a CPU, one thread each; one per GPU)")
    p.add_argument("--scorer-option", action="append", default=[], metavar="SCORER.OPTION=VALUE",
                   help="where a scorer's weights are, e.g. hpsv2.checkpoint=DIR (see `harness scorers`)")
    p.add_argument("--unet", action="append", default=[], metavar="METHOD=DIR",
                   help="with --pretrained: the method's UNet from a local directory (or hub id) instead of the preset's")
    p.add_argument("--eval-every", type=_count, metavar="N", help="also evaluate each method's UNet every N training "
                   "steps, with the final evaluation's prompts, seeds, sampler and scorers (metric-vs-step curves; "
                   "the cost is printed before the run starts)")
    p.add_argument("--eval-suites", type=_comma_list, help="with --eval-every: only these of the run's suites "
                   "(each whole; default: all)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="where the jobs run: this machine's worker processes (local) or a Ray cluster "
                   "(pip install '.[ray]'; docs/scaling.md)")
    p.add_argument("--address", help="with --backend ray: the cluster, auto or HOST:PORT (default: start one here)")
    p.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES)
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan (each model's settings "
                   "and where they come from, the jobs in order, the UNet evaluations), creating nothing")

    p = command("evaluate", cmd_evaluate, "evaluate any checkpoint into a results directory: generate the suites "
                "with the preset's protocol, score, store, rank against the base")
    p.epilog = ("The generation protocol (sampler and steps, CFG, seeds, images per prompt, resolution) is the "
                "preset's, as `harness run` uses it: the images pair with a run's image for image and the numbers "
                "are comparable with the run's (its --seed too; a run made with --steps, --images-per-prompt or --vae "
                "used another). The leaderboard compares with the results directory's base run: "
                "where the base model has not been evaluated on a suite asked, it is evaluated too. Rerun the "
                "same command to resume.")
    p.add_argument("--model", required=True, metavar="ID|DIR",
                   help="the pipeline: toy, tiny, a hub id or a local diffusers directory")
    p.add_argument("--unet", metavar="DIR", help="replace its UNet: a UNet directory (e.g. OUT/models/dpo/final/unet) "
                   "or a repository with the UNet in unet/")
    p.add_argument("--lora", metavar="DIR", help="load LoRA adapters into its UNet: what `harness train` writes with "
                   "lora_rank > 0 (OUT/final/lora)")
    p.add_argument("--method", help="sample through this method's sampler (default: the plain pipeline)")
    p.add_argument("--name", help="the run's name in the results (default: made from the location evaluated, "
                   "e.g. dpo-final-unet)")
    p.add_argument("--preset", help="the protocol: the preset the results directory was made with (default), "
                   "else toy")
    p.add_argument("--suites", type=_comma_list, help="prompt suites, in-domain or out-of-domain (default: the "
                   "preset's; NAME:PATH for a local copy, NAME=FILE[:seen|unseen] for a prompt file of yours)")
    p.add_argument("--scorers", type=_comma_list, help="scorers (default: the preset's)")
    p.add_argument("--max-prompts", type=_count, help="only the first N prompts of each suite (as the run's, to compare)")
    p.add_argument("--scorer-option", action="append", default=[], metavar="SCORER.OPTION=VALUE",
                   help="where a scorer's weights are, e.g. hpsv2.checkpoint=DIR")
    p.add_argument("--out", default="runs", help="results directory to add to: a `harness run`'s, or a new one")

    p = command("score", cmd_score, "score images made elsewhere into a results directory, as a run of their own")
    p.epilog = ("The manifest is JSONL, one image a line: path (relative to the manifest's folder), prompt_id or "
                "prompt (of the --prompts suite), image_index (default: the order of the prompt's lines), seed "
                "(optional), sha256 (optional, checked); other keys are ignored, so `harness generate`'s "
                "manifest.jsonl is one. The images are copied into OUT/images/NAME/SUITE/. Δ and win rates pair "
                "them with the base's images of the same prompt, index and seed: images without a seed are "
                "compared with no other run.")
    p.add_argument("--images", required=True, metavar="DIR|manifest.jsonl",
                   help="a manifest, or a folder holding manifest.jsonl (what `harness generate --out DIR` writes)")
    p.add_argument("--prompts", required=True, metavar="SUITE|FILE",
                   help="the suite the images were made for, or a prompt file (JSONL or one prompt a line)")
    p.add_argument("--scorers", type=_comma_list, required=True, help="comma-separated, e.g. pickscore,hpsv2")
    p.add_argument("--name", required=True, help="the run's name in the results")
    p.add_argument("--scorer-option", action="append", default=[], metavar="SCORER.OPTION=VALUE",
                   help="where a scorer's weights are, e.g. hpsv2.checkpoint=DIR")
    p.add_argument("--out", default="runs", help="results directory to add to: a `harness run`'s, or a new one")

    p = command("reproduce", cmd_reproduce, "run the published checkpoints (harness run --pretrained) and set "
                "our numbers beside the paper's, each difference in units of our confidence interval")
    p.add_argument("--preset", default="sd15", help="a preset with published tables")
    p.add_argument("--out", help="results directory (default: runs/reproduce-PRESET); rerun to resume")
    p.add_argument("--methods", type=_comma_list, help="default: every method the paper has a published checkpoint of")
    p.add_argument("--model", help="the base model: hub id or local directory (default: the preset's)")
    p.add_argument("--unet", action="append", default=[], metavar="METHOD=DIR",
                   help="a method's UNet from a local directory (or hub id) instead of the preset's published id")
    p.add_argument("--suites", type=_comma_list, help="default: the preset's; NAME:PATH for a local copy, "
                   "NAME=FILE[:seen|unseen] for a prompt file of yours")
    p.add_argument("--scorers", type=_comma_list, help="default: the paper's metrics")
    p.add_argument("--scorer-option", action="append", default=[], metavar="SCORER.OPTION=VALUE",
                   help="where a scorer's weights are, e.g. hpsv2.checkpoint=DIR")
    p.add_argument("--max-prompts", type=_count, help="only the first N prompts of each suite (a quick check)")
    p.add_argument("--images-per-prompt", type=_count, help="default: the paper's 5")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="a table of ours beside the paper's, or the same as JSON")

    p = command("train", cmd_train, "train one method and write its UNet in diffusers format")
    p.add_argument("--method", required=True, help="a registered method (`harness methods`)")
    p.add_argument("--data", help="directory with pairs.jsonl/experts.jsonl, or a hub dataset id (default: the "
                   "preset's, as `harness run`: the toy presets synthesize theirs into OUT/data)")
    p.add_argument("--out", required=True, help="directory to write: checkpoints (resumed from), the UNet in "
                   "OUT/final/unet, data it makes in OUT/data")
    p.add_argument("--model", help="base model (default: the preset's)")
    p.add_argument("--preset", help="whose settings the method trains with (`harness presets --show PRESET`; "
                   "default: toy, the toy world)")
    p.add_argument("--set", action="append", default=[], metavar="[METHOD.]FIELD=VALUE",
                   help="override a field of the method's config, e.g. max_steps=10 (repeatable; checked as "
                   "`harness run` checks it)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --out")
    p.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES)
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and timesteps")

    p = command("generate", cmd_generate, "generate images for a prompt suite with the preset's evaluation protocol "
                "(per-image deterministic seeds)")
    p.epilog = ("The sampler, steps, CFG, images per prompt, size, seeds and prompt cap are the preset's evaluation "
                "protocol (`harness presets` shows it), as `harness run` evaluates with: with the defaults, the "
                "images are comparable with a run's of that preset. Each option given replaces its part.")
    protocol = " (default: the preset's protocol)"
    p.add_argument("--model", metavar="ID|DIR", help="the pipeline: a built model (toy, tiny), a hub id or a local "
                   "directory (default: the preset's base model)")
    p.add_argument("--unet", metavar="DIR", help="replace its UNet: a trained checkpoint, e.g. OUT/final/unet of "
                   "`harness train --out OUT`")
    p.add_argument("--preset", help="whose evaluation protocol to follow (default: toy, the toy world)")
    p.add_argument("--suite", required=True, help="a registered suite, NAME:PATH for a local copy, or "
                   "NAME=FILE[:seen|unseen] for a prompt file of yours")
    p.add_argument("--out", required=True, help="directory to write the images and manifest.jsonl to")
    p.add_argument("--images-per-prompt", type=_count, help="images per prompt" + protocol)
    p.add_argument("--batch-size", type=_count, help="images per pipeline call" + protocol)
    p.add_argument("--seed", type=int, default=0, help="added to the preset's seed, as `harness run --seed`")
    p.add_argument("--steps", type=_count, help="sampler steps" + protocol)
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale" + protocol)
    p.add_argument("--height", type=_count, help="image height in pixels" + protocol)
    p.add_argument("--width", type=_count, help="image width in pixels" + protocol)
    p.add_argument("--scheduler", help="ddpm, ddim, pndm, euler, euler-a, dpm++ or unipc; flow-euler for a "
                   "flow-matching model (SD3)" + protocol)
    p.add_argument("--max-prompts", type=_count, help="only the first N prompts of the suite (default: the preset's "
                   "cap, if any)")
    p.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")

    p = command("leaderboard", cmd_leaderboard, "print the leaderboard of a results directory, or of several "
                "side by side")
    p.add_argument("--out", action="append", metavar="[NAME=]DIR", help="results directory to read, written by "
                   "`harness run --out` (default: runs); repeat it (or a comma list) to compare experiments, methods named NAME/method (NAME: the "
                   "directory's name unless given), each compared with its own base")
    p.add_argument("--format", choices=["table", "csv", "json", "latex", "markdown"], default="table",
                   help="table: for people; csv, json: for programs; latex, markdown: a table for a paper, the "
                   "best value per column in bold")
    p.add_argument("--base", default="base", help="the method the deltas and win rates compare against")
    p.add_argument("--by", choices=["category"], help="a row per category of each suite, each with the whole "
                   "leaderboard's statistics computed on its prompts alone")
    p.add_argument("--columns", type=_comma_list, metavar="STAT,...", help="latex/markdown: the columns per suite "
                   "and metric, some of mean (the mean score), delta (Δ vs base) and win (win rate vs base, %%) "
                   "(default: mean,delta,win)")
    p.add_argument("--ci", action="store_true", help="latex/markdown: each value's 95%% interval beside it (bootstrap "
                   "over prompts for means and Δ, Wilson for win rates); table: the win rate's Wilson interval")

    p = command("figure", cmd_figure, "write the dashboard's charts as files for a paper: Δ vs base with CIs "
                "(overall and per category), win-rate heatmaps, image grids (prompts × methods, same seeds)")
    p.add_argument("--out", action="append", metavar="[NAME=]DIR", help="results directory to read, written by "
                   "`harness run --out` (default: runs); repeat it to draw experiments side by side, as "
                   "`harness leaderboard`")
    p.add_argument("--figures", help="where to write (default: OUT/figures; required with several --out)")
    p.add_argument("--formats", type=_comma_list, default=["png", "svg"], help="comma-separated: png, svg, pdf")
    p.add_argument("--base", default="base", help="the method Δ compares against")
    p.add_argument("--grid-prompts", type=_count, default=4, help="prompts per image grid, taken in turn from each "
                   "category of the suite")
    p.add_argument("--grid-image", type=int, default=0, metavar="INDEX",
                   help="which image of each prompt (the same seed for every method)")

    p = command("runs", cmd_runs, "print each run's own start, end, wall time, CPU- or GPU-hours, UNet evaluations "
                "per training sample and peak memory")
    p.add_argument("--out", default="runs", help="results directory to read (written by `harness run --out`)")

    p = command("verify", cmd_verify, "check a results directory and the caches it reads, as `git fsck`: the "
                "store, every image against its manifest hash, every score against the score cache, every checkpoint "
                "and final/ network, the journals, $HARNESS_CACHE's entries; exit status 1 if anything is wrong")
    p.add_argument("--out", default="runs", help="results directory to check (written by `harness run --out`)")
    p.add_argument("--repair", action="store_true", help="fix what was found as a rerun would: damaged cache entries "
                   "discarded or rebuilt, the score cache refilled from the store; say what only a rerun can redo")

    p = command("export", cmd_export, "export the results for pandas / notebooks")
    p.add_argument("--out", action="append", metavar="[NAME=]DIR", help="results directory to read, written by "
                   "`harness run --out` (default: runs); repeat it to export experiments side by side, each table "
                   "with an experiment column")
    p.add_argument("--format", choices=["csv", "parquet", "json"], default="csv", help="one file per table")
    p.add_argument("--dest", help="where to write (default: OUT/export; required with several --out)")

    p = command("dashboard", cmd_dashboard, "open the Streamlit leaderboard on 127.0.0.1")
    p.add_argument("--out", action="append", metavar="[NAME=]DIR", help="results directory to read, written by "
                   "`harness run --out` (default: runs); repeat it to compare experiments, as `harness leaderboard`")
    p.add_argument("--port", type=int, default=8501, help="the port on 127.0.0.1 to serve on")

    help = "data steps: score the training images with a reward, pick experts"
    steps = sub.add_parser("data", help=help, description=help).add_subparsers(dest="step", required=True,
                                                                                metavar="STEP")
    for name, func, help in (("score", cmd_data_score, "score every image of the training pairs with a scorer "
                              "(cached, resumable; SmPO's pair scores)"),
                             ("experts", cmd_data_experts, "the top-K training images by a scorer, as an "
                              "experts.jsonl directory (DRO's experts)")):
        step = command(name, func, help, within=steps)
        step.add_argument("--data", required=True, help="Pick-a-Pic v2 (hub id or local copy) or a pairs.jsonl directory")
        step.add_argument("--scorer", required=True, help="a registered scorer, e.g. hpsv2, pickscore, pickscore-cosine")
        step.add_argument("--split", default="train", help="the data set's split")
        step.add_argument("--batch-size", type=_count, default=32, help="images per scorer call")
        step.add_argument("--scorer-option", action="append", default=[], metavar="OPTION=VALUE",
                          help="where the scorer's weights are, e.g. checkpoint=DIR")
        if name == "experts":
            step.add_argument("--top-k", type=_count, required=True, help="how many experts (DRO: 500)")
            step.add_argument("--out", required=True, help="the experts directory to write")

    command("methods", cmd_methods, "list registered methods")
    command("scorers", cmd_scorers, "list registered scorers")
    p = command("suites", cmd_suites, "list prompt suites, or show one's prompts")
    p.add_argument("--show", metavar="SUITE", help="print the suite's split, size, version and source, and every "
                   "prompt (a registered suite, NAME:PATH for its local copy, or NAME=FILE for a prompt file)")
    p = command("presets", cmd_presets, "list presets, or show one's resolved recipe per method")
    p.add_argument("--show", metavar="PRESET", help="print every method's resolved settings under this preset")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from harness.api.registry import load_plugin

        for plugin in [*args.plugin, *getattr(args, "plugin_after", [])]:
            load_plugin(plugin)
        status = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except BrokenPipeError:
        # The reader stopped early (`harness leaderboard | head -1`): nothing left to say to anyone.  Output
        # still buffered goes to /dev/null, or the flush at exit would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        full = disk_full_error(exc)  # a write that no code path named (most are named where they happen)
        if full is None:
            raise
        print(f"harness: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
