"""generate(): per-image seeds, manifest, batch-size independence, resume after interruption."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from generate_worker import SETTINGS, case_suite
from harness.api import Prompt, Suite
from harness.errors import HarnessError
from harness.evaluation.sampling import MANIFEST_NAME, generate, image_seed, optimize_pipeline
from harness.models.loading import load_pipeline

N_IMAGES = len(case_suite()) * SETTINGS["images_per_prompt"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here, in-process or in a worker, uses one thread: oneDNN's results can change
    in the last bits with the thread count (and two spinning threads crawl on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory) -> Path:
    """An uninterrupted run, one image per pipeline call."""
    out = tmp_path_factory.mktemp("reference")
    generate(pipe, case_suite(), out, batch_size=1, progress=False, **SETTINGS)
    return out


class CountingPipeline:
    """The real pipeline, counting the images it is asked for; raises after ``calls_allowed`` calls."""

    def __init__(self, pipe, calls_allowed: int | None = None) -> None:
        vars(self).update(pipe=pipe, calls_allowed=calls_allowed, images=0)

    def __call__(self, **kwargs):
        if self.calls_allowed is not None:
            if self.calls_allowed == 0:
                raise KeyboardInterrupt("simulated kill")
            self.calls_allowed -= 1
        self.images += len(kwargs["prompt"])
        return self.pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __setattr__(self, name, value):  # generate() swaps the scheduler: on the real pipeline
        if name in vars(self):
            vars(self)[name] = value
        else:
            setattr(self.pipe, name, value)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_has_one_verified_row_per_image_with_the_protocol_seeds(reference):
    rows = [json.loads(line) for line in (reference / MANIFEST_NAME).read_text().splitlines()]
    suite = case_suite()
    n = len(suite)
    assert [(r["prompt_id"], r["image_index"]) for r in rows] == [
        (p.prompt_id, j) for p in suite.prompts for j in range(SETTINGS["images_per_prompt"])
    ]
    for row in rows:
        k = int(row["prompt_id"][1:])
        assert row["seed"] == SETTINGS["seed"] + k + row["image_index"] * n == image_seed(123, k, row["image_index"], n)
        assert row["prompt"] == suite.prompts[k].prompt and row["category"] == suite.prompts[k].category
        assert sha256(reference / row["path"]) == row["sha256"]
        assert Image.open(reference / row["path"]).size == (32, 32)
        assert (row["num_inference_steps"], row["guidance_scale"], row["scheduler"]) == (4, 7.5, "DDPMScheduler")
        assert (row["height"], row["width"], row["suite_version"]) == (32, 32, suite.version)
    assert len({r["sha256"] for r in rows}) == len(rows), "different seeds must give different images"
    assert sorted(p.name for p in reference.iterdir()) == sorted([MANIFEST_NAME] + [r["path"] for r in rows])


def test_batch_size_does_not_change_any_byte(pipe, reference, tmp_path):
    rows = generate(pipe, case_suite(), tmp_path, batch_size=4, progress=False, **SETTINGS)
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (reference / MANIFEST_NAME).read_bytes()
    assert all((tmp_path / r["path"]).read_bytes() == (reference / r["path"]).read_bytes() for r in rows)


def test_interrupted_run_resumes_to_the_same_manifest(pipe, reference, tmp_path):
    interrupted = CountingPipeline(pipe, calls_allowed=2)
    with pytest.raises(KeyboardInterrupt):
        generate(interrupted, case_suite(), tmp_path, batch_size=3, progress=False, **SETTINGS)
    assert interrupted.images == 6 and not (tmp_path / MANIFEST_NAME).exists()
    journal = tmp_path / ".manifest-parts" / "rank-0.jsonl"
    finished = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(finished) == 6
    # The damage a kill can leave: half a journal row; the next image half-written under its
    # temporary name (harness.atomic.replacing: ".NAME.PID.tmp"), by the killed process and by a
    # process that had our pid; and a finished image changed on disk afterwards.
    journal.write_text(journal.read_text()[:-40])
    reference_rows = [json.loads(line) for line in (reference / MANIFEST_NAME).read_text().splitlines()]
    next_image = reference_rows[6]["path"]
    for pid in (os.getpid() + 1, os.getpid()):
        (tmp_path / f".{next_image}.{pid}.tmp").write_bytes(b"\x89PNG partial")
    (tmp_path / finished[1]["path"]).write_bytes(b"not the image")

    resumed = CountingPipeline(pipe)
    rows = generate(resumed, case_suite(), tmp_path, batch_size=3, progress=False, **SETTINGS)
    assert resumed.images == N_IMAGES - 6 + 2  # the lost journal row and the changed image are redone
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (reference / MANIFEST_NAME).read_bytes()
    assert all(sha256(tmp_path / r["path"]) == r["sha256"] for r in rows)
    # Nothing of the interrupted run is left behind: the images and their manifest only.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_NAME] + [r["path"] for r in rows])

    again = CountingPipeline(pipe)
    assert generate(again, case_suite(), tmp_path, batch_size=3, progress=False, **SETTINGS) == rows
    assert again.images == 0


@pytest.mark.slow
def test_killed_process_resumes_and_more_images_per_prompt_extend_the_run(pipe, reference, tmp_path, tiny_model_dir):
    worker = Path(__file__).with_name("generate_worker.py")
    process = subprocess.Popen(
        [sys.executable, str(worker), str(tiny_model_dir), str(tmp_path), "1", "4"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    journal = tmp_path / ".manifest-parts" / "rank-0.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "worker ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / MANIFEST_NAME).exists()

    rows = generate(pipe, case_suite(), tmp_path, batch_size=2, progress=False, **{**SETTINGS, "images_per_prompt": 4})
    assert len(rows) == len({(r["prompt_id"], r["image_index"]) for r in rows}) == len(case_suite()) * 4
    assert all(sha256(tmp_path / r["path"]) == r["sha256"] for r in rows)
    # Seeds do not depend on the number of images per prompt: the first two images of each
    # prompt are the reference run's.
    reference_rows = [json.loads(line) for line in (reference / MANIFEST_NAME).read_text().splitlines()]
    assert [r for r in rows if r["image_index"] < 2] == reference_rows


def test_changed_settings_regenerate_and_the_scheduler_is_restored(pipe, reference, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    counting = CountingPipeline(pipe)
    rows = generate(counting, case_suite(), tmp_path, batch_size=5, progress=False, **{**SETTINGS, "scheduler": "ddim"})
    assert counting.images == N_IMAGES
    assert {r["scheduler"] for r in rows} == {"DDIMScheduler"}
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    reference_rows = [json.loads(line) for line in (reference / MANIFEST_NAME).read_text().splitlines()]
    assert all(a["sha256"] != b["sha256"] for a, b in zip(rows, reference_rows))
    assert len((tmp_path / MANIFEST_NAME).read_text().splitlines()) == N_IMAGES


def test_channels_last_is_recorded_as_a_setting(tiny_model_dir, reference, tmp_path):
    pipe = optimize_pipeline(load_pipeline(tiny_model_dir), channels_last=True)
    rows = generate(pipe, case_suite(), tmp_path, batch_size=5, progress=False, **SETTINGS)
    assert {r["channels_last"] for r in rows} == {True}
    reference_rows = [json.loads(line) for line in (reference / MANIFEST_NAME).read_text().splitlines()]
    assert [r["seed"] for r in rows] == [r["seed"] for r in reference_rows]
    assert {r["channels_last"] for r in reference_rows} == {False}


def test_progress_in_a_log_counts_images(pipe, tmp_path, capsys):
    """stderr is no terminal here: lines, not a bar (tests/test_cli.py checks the bar on a terminal)."""
    generate(pipe, case_suite(2), tmp_path, batch_size=4, progress=True, **{**SETTINGS, "num_inference_steps": 1})
    err = capsys.readouterr().err
    assert "img 4/4 (100%)" in err and "\r" not in err


def test_progress_lines_name_the_model_jobs_side_by_side_print_into_one_log(pipe, tmp_path, capsys):
    suite = case_suite(2)
    generate(pipe, suite, tmp_path, batch_size=4, progress=True, model="dpo", **{**SETTINGS, "num_inference_steps": 1})
    assert f"dpo / {suite.name}: img 4/4 (100%)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"images_per_prompt": 0}, "images_per_prompt must be at least 1"),
        ({"scheduler": "magic"}, "unknown scheduler 'magic'"),
        ({"height": 30}, "height and width must be multiples of 4"),
        ({"suite": Suite("dup", "seen", (Prompt("a", "x"), Prompt("a", "y")))}, "duplicate prompt_id 'a'"),
        ({"suite": Suite("empty", "seen", ())}, "has no prompts"),
    ],
)
def test_bad_arguments_are_one_line_errors(pipe, tmp_path, change, message):
    arguments = {**SETTINGS, "suite": case_suite(1), "batch_size": 1, "progress": False, **change}
    with pytest.raises(HarnessError, match=message):
        generate(pipe, out_dir=tmp_path, **arguments)
    assert not list(tmp_path.glob("*.png"))


def test_sdxl_pipeline_generates_batch_independent_images(small_sdxl_dir, tmp_path):
    pipe = load_pipeline(small_sdxl_dir)
    suite = case_suite(3)
    settings = {**SETTINGS, "images_per_prompt": 1}
    one = generate(pipe, suite, tmp_path / "b1", batch_size=1, progress=False, **settings)
    three = generate(pipe, suite, tmp_path / "b3", batch_size=3, progress=False, **settings)
    assert one == three
    assert Image.open(tmp_path / "b1" / one[0]["path"]).size == (128, 128)


def test_sd3_pipeline_generates_deterministic_batch_independent_images(tiny_sd3_dir, tmp_path):
    """The flow-matching pipeline (its own Euler sampler, deterministic): the same bytes in batches of 1 and 3.
    Without ``_batch_invariant_numerics`` they differ (measured): the transformer's time, pooled-text and
    AdaLayerNorm projections are linears over one row per image, as the UNet's time embedding."""
    pipe = load_pipeline(tiny_sd3_dir)
    suite = case_suite(3)
    settings = {**SETTINGS, "images_per_prompt": 2, "scheduler": None}
    one = generate(pipe, suite, tmp_path / "b1", batch_size=1, progress=False, **settings)
    three = generate(pipe, suite, tmp_path / "b3", batch_size=3, progress=False, **settings)
    assert one == three and len({row["sha256"] for row in one}) == 6
    assert {row["scheduler"] for row in one} == {"FlowMatchEulerDiscreteScheduler"}
    again = generate(pipe, suite, tmp_path / "again", batch_size=2, progress=False, **settings)
    assert all(
        (tmp_path / "again" / r["path"]).read_bytes() == (tmp_path / "b1" / r["path"]).read_bytes() for r in again
    )


def test_shards_generated_apart_merge_to_the_same_bytes(pipe, tmp_path):
    """``shard=(r, W)`` (the Ray backend's split of a suite: independent jobs, no process group): each shard
    makes whole batches of a one-process run and returns its own rows, in any order, and ``merge_shards``
    writes that run's manifest; the bytes are that run's even where the model's numbers depend on the batch."""
    from harness.evaluation.sampling import merge_shards, shard_count

    whole = generate(pipe, case_suite(), tmp_path / "whole", batch_size=3, progress=False, **SETTINGS)
    assert shard_count(len(case_suite()), SETTINGS["images_per_prompt"], 3) == 4  # 10 images in batches of 3
    out = tmp_path / "shards"
    parts = {
        r: generate(pipe, case_suite(), out, batch_size=3, progress=False, shard=(r, 3), **SETTINGS) for r in (2, 0, 1)
    }
    assert {r: [row["path"] for row in part] for r, part in parts.items()} == {
        0: ["00000_00.png", "00000_01.png", "00001_00.png", "00004_01.png"],  # batches 0 and 3
        1: ["00001_01.png", "00002_00.png", "00002_01.png"],
        2: ["00003_00.png", "00003_01.png", "00004_00.png"],
    }
    assert not (out / MANIFEST_NAME).exists()
    rows = merge_shards(out, [row for part in parts.values() for row in part])
    assert rows == whole and (out / MANIFEST_NAME).read_bytes() == (tmp_path / "whole" / MANIFEST_NAME).read_bytes()
    assert all((out / r["path"]).read_bytes() == (tmp_path / "whole" / r["path"]).read_bytes() for r in rows)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME] + [r["path"] for r in rows])
    with pytest.raises(HarnessError, match="shard must be"):
        generate(pipe, case_suite(), out, batch_size=3, progress=False, shard=(3, 3), **SETTINGS)
