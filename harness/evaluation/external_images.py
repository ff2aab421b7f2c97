"""`harness score`: images made elsewhere, scored into a results directory as a run of their own.

The images are described by a manifest, ``manifest.jsonl``, one JSON object per line:

    path         the image file, relative to the manifest's folder (required)
    prompt_id    the prompt's id in the suite, or
    prompt       its text (one of the two is required; given both, they must agree)
    image_index  which image of that prompt (0, 1, ...; default: the order of the prompt's lines)
    seed         the seed it was sampled with (optional)
    sha256       the file's content hash (optional; checked when given)

Other keys are ignored, so ``harness generate``'s own ``manifest.jsonl`` is one as it is: ``--images
DIR`` reads ``DIR/manifest.jsonl``.  The images are copied into ``images/<NAME>/<suite>/`` of the
results directory (the dashboard shows only files under it), named as ``harness generate`` names
them, then scored like any run's.  The statistics pair images with the base's on prompt, image
index and seed: images without a seed, or made with other seeds, are compared with no other run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api.registry import SCORERS
from harness.atomic import replacing, write_jsonl
from harness.errors import HarnessError
from harness.evaluation.evaluate import (
    BASE,
    NAME_PATTERN,
    check_prompts_scorable,
    check_scorer_options,
    check_suites,
    load_suite,
    score_suites,
)
from harness.evaluation.sampling import MANIFEST_NAME, read_manifest
from harness.evaluation.suites import check_suite_name
from harness.plan.locations import require_directory_or_nothing
from harness.progress import Stages
from harness.results.compute import JobClock
from harness.results.identity import difference
from harness.results.layout import ResultsDir
from harness.results.store import Store

UNKNOWN_SEED = -1  # what the store records for an image whose seed the manifest does not give
UNKNOWN_MODEL = "unknown (images made elsewhere)"


@dataclass
class ScoreOptions:
    images: Path  # a manifest, or a folder holding one
    prompts: str  # a suite (NAME or NAME:PATH) or a prompt file
    name: str
    out: Path
    scorers: list[str]
    scorer_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalImage:
    """One line of the manifest, checked: its file, and its place in the suite."""

    file: Path
    prompt_index: int
    image_index: int
    seed: int
    sha256: str


@dataclass(frozen=True)
class Scoring:
    """A checked `harness score`: the images, their suite, the run they become."""

    options: ScoreOptions
    manifest: Path
    suite: Any  # harness.evaluation.suites.Suite
    images: list[ExternalImage]
    config: dict  # what the run records about the images

    @property
    def n_without_seed(self) -> int:
        return sum(image.seed == UNKNOWN_SEED for image in self.images)


def plan_scoring(options: ScoreOptions) -> Scoring:
    """Check everything `harness score` was given, every line of the manifest included; creates nothing."""
    results = ResultsDir(options.out)
    manifest, suite = _check_options(options, results)
    check_prompts_scorable([suite], options.scorers)
    images = read_image_manifest(manifest, suite)
    # The images by content (the same ones moved elsewhere resume the run), with the manifest's path to show.
    content = "".join(f"{image.prompt_index} {image.image_index} {image.seed} {image.sha256}\n" for image in images)
    config = {
        "images": {"path": str(manifest.resolve()), "sha256": hashlib.sha256(content.encode()).hexdigest()},
        "suite": suite.name,
        "suite_version": suite.version,
    }
    _check_run_name(options.name, config, results, suite)
    return Scoring(options, manifest, suite, images, config)


def score_external(plan: Scoring) -> None:
    """Copy the manifest's images into the results directory as run ``options.name`` and score them."""
    clock = JobClock()
    options, suite, images = plan.options, plan.suite, plan.images
    results = ResultsDir(options.out)
    stage = Stages()
    stage(f"{options.name}: {len(images)} images of {suite.name} from {plan.manifest}")
    rows = _copy_images(images, suite, results.images(options.name, suite.name))
    folder = results.relative_images(options.name, suite.name)
    with Store(results.db) as store:
        run_id = store.get_or_create_run(
            options.name, method=options.name, preset=None, base_model=UNKNOWN_MODEL, config=plan.config
        )
        store.set_run_status(run_id, "running")
        store.add_images(
            run_id,
            suite=suite.name,
            suite_version=suite.version,
            split=suite.split,
            rows=[{**row, "path": str(folder / row["path"])} for row in rows],
        )
        stage(f"{options.name}: scoring")
        score_suites(options.name, run_id, {suite.name: rows}, options.scorers, options.scorer_options, results, store)
        store.add_compute(run_id, clock.figures("score"))
        store.set_run_status(run_id, "done")


def _check_options(options: ScoreOptions, results: ResultsDir):
    """The manifest and the suite, every option checked; creates nothing."""
    require_directory_or_nothing(results.root, "--out")
    if results.db.exists():  # a corrupt or foreign file is refused before anything is added beside it
        Store(results.db, readonly=True).close()
    if not NAME_PATTERN.fullmatch(options.name) or options.name == BASE:
        raise HarnessError(
            f"--name {options.name!r}: a run's name is letters, digits and . _ + - (not {BASE!r}, the base model's run)"
        )
    for scorer in options.scorers:
        SCORERS.get(scorer)
    for scorer, keywords in options.scorer_options.items():
        check_scorer_options(scorer, keywords)
    manifest = Path(options.images)
    if manifest.is_dir():
        manifest = manifest / MANIFEST_NAME
    if not manifest.is_file():
        raise HarnessError(
            f"--images {str(options.images)!r}: no such manifest (a {MANIFEST_NAME} file, or a folder "
            "holding one, as `harness generate` writes)"
        )
    spec = options.prompts
    if Path(spec).is_file():  # a prompt file of one's own
        spec = f"file:{spec}"
    else:
        check_suite_name(spec)
    return manifest, load_suite(spec)


def _check_run_name(name: str, config: dict, results: ResultsDir, suite) -> None:
    """A rerun with the same images resumes; the name of another run is refused, and so are prompts other than
    those the directory's images of the suite were made from, before anything is written."""
    if not results.db.exists():
        return
    with Store(results.db, readonly=True) as store:
        runs = store.runs_frame()
        check_suites(store, [suite], results)
    same = runs[runs["key"] == name]
    if not same.empty:
        differs = difference(json.loads(same.iloc[0]["config"]), config)
        if differs is not None:
            raise HarnessError(
                f"{results.root} has a run named {name!r} already, of other images or prompts "
                f"({differs}): give these another --name"
            )


def read_image_manifest(manifest: Path, suite) -> list[ExternalImage]:
    """The manifest's images, each checked (file, prompt, index); the first mistake is an error naming
    the manifest's line."""
    by_id = {prompt.prompt_id: k for k, prompt in enumerate(suite.prompts)}
    texts = Counter(prompt.prompt for prompt in suite.prompts)
    by_text = {prompt.prompt: k for k, prompt in enumerate(suite.prompts)}
    seen: set[tuple[int, int]] = set()
    next_index: Counter = Counter()
    images = []
    for line, row in enumerate(read_manifest(manifest), start=1):
        where = f"{manifest} line {line}"
        if not isinstance(row, dict):
            raise HarnessError(f"{where}: expected a JSON object with path and prompt_id or prompt")
        k = _prompt_index(row, suite, by_id, by_text, texts, where)
        j = row.get("image_index", next_index[k])
        if not isinstance(j, int) or isinstance(j, bool) or j < 0:
            raise HarnessError(f"{where}: image_index must be a whole number, 0 or more, not {j!r}")
        if (k, j) in seen:
            raise HarnessError(f"{where}: image {j} of prompt {suite.prompts[k].prompt_id!r} appears twice")
        seen.add((k, j))
        next_index[k] = max(next_index[k], j + 1)
        seed = row.get("seed", UNKNOWN_SEED)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise HarnessError(f"{where}: seed must be a whole number, not {seed!r}")
        file = _image_file(row, manifest, where)
        sha256 = _sha256(file)
        if row.get("sha256", sha256) != sha256:
            raise HarnessError(
                f"{where}: {row['path']} has changed since the manifest was written (its sha256 differs)"
            )
        images.append(ExternalImage(file, k, j, seed, sha256))
    if not images:
        raise HarnessError(f"{manifest}: no images listed")
    return images


def _prompt_index(row: dict, suite, by_id: dict, by_text: dict, texts: Counter, where: str) -> int:
    prompt_id, text = row.get("prompt_id"), row.get("prompt")
    if prompt_id is None and text is None:
        raise HarnessError(f"{where}: gives neither prompt_id nor prompt")
    if prompt_id is not None:
        if str(prompt_id) not in by_id:
            raise HarnessError(f"{where}: prompt_id {prompt_id!r} is not in suite {suite.name!r}")
        k = by_id[str(prompt_id)]
        if text is not None and text != suite.prompts[k].prompt:
            raise HarnessError(
                f"{where}: prompt {text!r} is not the text of prompt_id {prompt_id!r} in suite "
                f"{suite.name!r} ({suite.prompts[k].prompt!r})"
            )
        return k
    if text not in by_text:
        raise HarnessError(f"{where}: prompt {text!r} is not in suite {suite.name!r}")
    if texts[text] > 1:
        raise HarnessError(
            f"{where}: prompt {text!r} appears {texts[text]} times in suite {suite.name!r}: give its prompt_id"
        )
    return by_text[text]


def _image_file(row: dict, manifest: Path, where: str) -> Path:
    from PIL import Image

    if not isinstance(row.get("path"), str) or not row["path"]:
        raise HarnessError(f"{where}: gives no path of an image")
    file = manifest.parent / row["path"]
    if not file.is_file():
        raise HarnessError(f"{where}: image {row['path']} does not exist ({file})")
    try:
        with Image.open(file) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports a damaged file with any of these
        raise HarnessError(f"{where}: {row['path']} is not a readable image ({exc})") from None
    return file


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copy_images(images: list[ExternalImage], suite, folder: Path) -> list[dict]:
    """Copy the images into ``folder`` (named as `harness generate` names its images; one already there
    with the same content is kept) and write its manifest; return the manifest's rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for image in sorted(images, key=lambda image: (image.prompt_index, image.image_index)):
        target = folder / f"{image.prompt_index:05d}_{image.image_index:02d}{image.file.suffix.lower()}"
        if not target.is_file() or _sha256(target) != image.sha256:
            with replacing(target) as temporary:
                shutil.copyfile(image.file, temporary)
        prompt = suite.prompts[image.prompt_index]
        rows.append(
            {
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.prompt,
                "category": prompt.category,
                "image_index": image.image_index,
                "seed": image.seed,
                "path": target.name,
                "sha256": image.sha256,
                "source": str(image.file.resolve()),
            }
        )
    write_jsonl(folder / MANIFEST_NAME, rows)
    return rows
