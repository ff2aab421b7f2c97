"""A small but real results directory, filled through the Store API with real PNG files.

Used by the store, dashboard and concurrency tests (the dashboard's AppTest tests use the
lead's ``tiny_run_dir`` when it is there).  Scores are drawn from a seeded generator with a
per-method offset, so the expected ranking is known: dro > dpo > base on every metric.
dro's training data was shaped by pickscore (``TRAINING_SIGNALS``); no other run's was.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from contextlib import closing
from pathlib import Path

from PIL import Image

from harness.results.store import Store, db_path

METHODS = {"base": 0.0, "dpo": 0.5, "dro": 1.0}
SUITES = {
    # name: (split, [(prompt_id, prompt, category)])
    "toy-seen": (
        "seen",
        [
            ("s0", "a red circle", "shapes"),
            ("s1", "a blue square", "shapes"),
            ("s2", "a cat on a mat", "animals"),
            ("s3", "a dog in the park", "animals"),
        ],
    ),
    "toy-unseen": (
        "unseen",
        [("u0", "a green triangle", "shapes"), ("u1", "an owl at night", "animals"), ("u2", "a yellow star", "shapes")],
    ),
}
IMAGES_PER_PROMPT = 2
SCORERS = {"pickscore": ("v1", "100*cos", 20.0), "aesthetic": ("v1", "[0,10]", 5.0)}
TRAIN_STEPS = 5
TRAINING_SIGNALS = {"dro": (["pickscore"], "experts ranked by pickscore (top 2)")}
# In-prompt diversity per method (harness.results.diversity; each prompt's own a little above): dro's images collapse.
DIVERSITY = {"base": 0.30, "dpo": 0.31, "dro": 0.10}
DIVERSITY_EMBEDDER = ("clip", "v1")


def write_png(path: Path, seed: int, size: int = 32) -> str:
    """A small deterministic PNG; returns its sha256."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_rows(results_dir: Path, method: str, suite: str) -> list[dict]:
    """Sampling-manifest rows (with real PNGs) for one method and suite, seeds as harness.evaluation.sampling."""
    _, prompts = SUITES[suite]
    rows = []
    for k, (prompt_id, prompt, category) in enumerate(prompts):
        for j in range(IMAGES_PER_PROMPT):
            seed = k + j * len(prompts)
            rel = f"images/{method}/{suite}/{prompt_id}_{j}.png"
            # The same seed gives the same base picture; the method shifts it so methods differ.
            sha = write_png(results_dir / rel, seed * 7 + len(method))
            rows.append(
                dict(
                    prompt_id=prompt_id,
                    prompt=prompt,
                    category=category,
                    image_index=j,
                    seed=seed,
                    path=rel,
                    sha256=sha,
                )
            )
    return rows


def score_rows(method: str, suite: str) -> list[dict]:
    rng = random.Random(f"{method}/{suite}")
    _, prompts = SUITES[suite]
    return [
        dict(
            prompt_id=prompt_id,
            image_index=j,
            scorer=scorer,
            version=version,
            scale=scale,
            value=centre + METHODS[method] + rng.uniform(-0.1, 0.1),
        )
        for prompt_id, _, _ in prompts
        for j in range(IMAGES_PER_PROMPT)
        for scorer, (version, scale, centre) in SCORERS.items()
    ]


def diversity_rows(method: str, suite: str) -> list[dict]:
    """The store's diversity rows of one method and suite: ``DIVERSITY`` plus 0.01 per prompt index."""
    _, prompts = SUITES[suite]
    return [
        {"prompt_id": prompt_id, "n_images": IMAGES_PER_PROMPT, "value": DIVERSITY[method] + 0.01 * k}
        for k, (prompt_id, _, _) in enumerate(prompts)
    ]


def build_results_dir(results_dir: Path) -> Path:
    """Fill ``results_dir`` (results.db + images) as a finished run of base, dpo and dro would."""
    with Store(results_dir) as store:
        for method in METHODS:
            run_id = store.get_or_create_run(
                method, method=method, preset="test", base_model="tiny-sd", config={"method": method, "beta": 5000}
            )
            store.set_run_status(run_id, "running")
            if method != "base":
                speed = METHODS[method]  # dro learns fastest, so the curves differ
                store.log_training(
                    run_id,
                    [
                        (
                            step,
                            {"loss": 0.69 - 0.01 * speed * step, "lr": 1e-5, "implicit_acc": 0.5 + 0.05 * speed * step},
                        )
                        for step in range(1, TRAIN_STEPS + 1)
                    ],
                )
                store.add_checkpoint(run_id, TRAIN_STEPS, f"models/{method}/checkpoint-{TRAIN_STEPS}")
                store.set_overlap(run_id, suite="toy-unseen", n_overlap=1 if method == "dro" else 0)
            if method in TRAINING_SIGNALS:
                store.set_training_signals(run_id, *TRAINING_SIGNALS[method])
            for suite, (split, _) in SUITES.items():
                store.add_images(
                    run_id,
                    suite=suite,
                    suite_version="abc123",
                    split=split,
                    rows=manifest_rows(results_dir, method, suite),
                )
                store.add_scores(run_id, suite=suite, rows=score_rows(method, suite))
                store.add_diversity(
                    run_id,
                    suite=suite,
                    embedder=DIVERSITY_EMBEDDER[0],
                    version=DIVERSITY_EMBEDDER[1],
                    rows=diversity_rows(method, suite),
                )
            store.set_run_status(
                run_id, "done", compute={"wall_s": 12.5, "unet_evals_per_sample": 4.0, "reward_calls_per_sample": {}}
            )
    return results_dir


# `harness run --eval-every`'s runs of dpo (harness.evaluation.curves): step -> how far its scores lie above the base's;
# the last step's are dpo's own.
CURVE_STEPS = {1: 0.1, 3: 0.3, TRAIN_STEPS: METHODS["dpo"]}


def add_curve_runs(results_dir: Path) -> Path:
    """Add the dpo@STEP runs of a training evaluated every other step, on toy-seen."""
    with Store(results_dir) as store:
        for step, offset in CURVE_STEPS.items():
            name = f"dpo@{step}"
            run_id = store.get_or_create_run(
                name, method=name, preset="test", base_model="tiny-sd", config={"snapshot_of": "dpo", "step": step}
            )
            store.add_images(
                run_id,
                suite="toy-seen",
                suite_version="abc123",
                split="seen",
                rows=manifest_rows(results_dir, name, "toy-seen"),
            )
            store.add_scores(
                run_id,
                suite="toy-seen",
                rows=[
                    {**row, "value": row["value"] - METHODS["dpo"] + offset} for row in score_rows("dpo", "toy-seen")
                ],
            )
            store.set_run_status(run_id, "done")
    return results_dir


def n_images() -> int:
    return sum(len(prompts) for _, prompts in SUITES.values()) * IMAGES_PER_PROMPT


def as_schema(results_dir: Path, version: str) -> Path:
    """Make ``results_dir`` what a harness of an older store schema wrote: "2" lacks diversity, "1" training_signals
    too."""
    dropped = {"2": ["diversity"], "1": ["diversity", "training_signals"]}[version]
    with closing(sqlite3.connect(db_path(results_dir))) as conn, conn:
        for table in dropped:
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    return results_dir
