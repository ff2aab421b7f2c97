"""Two CPU processes (torchrun, gloo): every method trains with identical parameters on both ranks, on the tiny and
tiny-flow presets, and two processes generate byte for byte what one does; `harness run --train-processes 2` trains
what 1 process does with doubled accumulation; a failed process group is one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from generate_worker import SETTINGS, case_suite
from harness.api.data import Online
from harness.api.registry import METHODS
from harness.backends import jobs
from harness.backends.jobs import failure_line
from harness.evaluation.sampling import MANIFEST_NAME, generate
from harness.models.families import family_of_model
from harness.models.loading import load_pipeline
from harness.results.store import Store
from harness.run import RunOptions, run
from harness.train.trainer import resolve_config
from support.train_fixtures import write_expert_dir, write_pair_dir

SCRIPT = Path(__file__).with_name("dist_train_check.py")


def trainable_methods(preset: str, base_model: Path) -> list[str]:
    """Every registered method that trains on ``preset``'s base model: the online ones (an ``Online`` data spec:
    rollouts sampled with the flow-matching SDE) need a flow-matching base, every other method trains on both."""
    flow = family_of_model(str(base_model)).flow_matching
    return [
        name
        for name in METHODS.names()
        if flow
        or not isinstance(METHODS.get(name)(resolve_config(name, preset, warn_untuned=False)).data_spec(), Online)
    ]


@pytest.fixture(scope="module")
def two_processes(tiny_model_dir, tiny_sd3_dir, tmp_path_factory) -> SimpleNamespace:
    """One torchrun of 2 gloo processes (dist_train_check.py): every registered method trained on tiny and
    tiny-flow in turn (grpo and online-dpo on tiny-flow only), then the case suite of the sampling tests generated
    with the tiny model.  One launch for both checks: each process spends seconds importing torch."""
    bases = {"tiny": tiny_model_dir, "tiny-flow": tiny_sd3_dir}
    methods = {preset: trainable_methods(preset, base) for preset, base in bases.items()}
    tmp_path = tmp_path_factory.mktemp("two-processes")
    data = write_expert_dir(write_pair_dir(tmp_path / "data"))
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            str(data),
            str(tmp_path / "out"),
            str(tiny_model_dir),
            *(f"{preset}={bases[preset]}:{','.join(names)}" for preset, names in methods.items()),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        # PYTHONSAFEPATH: the script's folder, tests/, not on sys.path, where tests/methods would shadow the methods.
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return SimpleNamespace(methods=methods, stdout=result.stdout, out=tmp_path / "out")


@pytest.mark.distributed
@pytest.mark.slow
def test_every_method_trains_on_two_processes_on_the_tiny_presets(two_processes):
    """After each optimizer step both ranks hold the same weights, and they moved."""
    methods = two_processes.methods
    assert set(methods["tiny-flow"]) == set(METHODS.names())
    assert {"grpo", "online-dpo"} <= set(methods["tiny-flow"]) - set(methods["tiny"])
    for preset, names in methods.items():
        for method in names:
            label = f"{preset} {method}"
            moved = re.findall(
                rf"^{label} step (\d): parameters identical on both ranks; moved (\S+);", two_processes.stdout, re.M
            )
            assert [step for step, _ in moved] == ["1", "2"], (label, two_processes.stdout[-2000:])
            assert float(moved[-1][1]) > 0, label
            assert f"done {label}: 2 steps" in two_processes.stdout
            assert (two_processes.out / preset / method / "final" / "unet" / "config.json").exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_write_the_single_process_manifest(two_processes, tiny_model_dir, tmp_path):
    """Two processes produce byte for byte the manifest and images of one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: oneDNN's last bits can depend on the thread count
    try:
        generate(
            load_pipeline(tiny_model_dir), case_suite(), tmp_path / "one", batch_size=3, progress=False, **SETTINGS
        )
    finally:
        torch.set_num_threads(threads)

    n_images = len(case_suite()) * SETTINGS["images_per_prompt"]
    # Every rank returns the merged manifest, not only its own shard.
    assert f"rank 0: {n_images} rows" in two_processes.stdout and f"rank 1: {n_images} rows" in two_processes.stdout

    one, two = tmp_path / "one", two_processes.out / "generated"
    assert (two / MANIFEST_NAME).read_bytes() == (one / MANIFEST_NAME).read_bytes()
    rows = [json.loads(line) for line in (two / MANIFEST_NAME).read_text().splitlines()]
    assert len(rows) == n_images
    assert all((two / r["path"]).read_bytes() == (one / r["path"]).read_bytes() for r in rows)
    assert sorted(p.name for p in two.iterdir()) == sorted([MANIFEST_NAME] + [r["path"] for r in rows]), (
        "journals merged and removed"
    )


def _run_dpo(out: Path, data: Path, processes: int, grad_accum: int) -> list[dict]:
    options = RunOptions(
        methods=["dpo"],
        out=out,
        preset="tiny",
        data=str(data),
        suites=["toy-seen"],
        max_prompts=2,
        images_per_prompt=1,
        steps=1,
        jobs=1,
        train_processes=processes,
        overrides={"dpo": {"grad_accum": grad_accum}},
    )
    return run(options)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_train_what_one_does_with_twice_the_accumulation(tmp_path, harness_cache, monkeypatch):
    """`harness run --train-processes 2` against 1 process with doubled accumulation: the same samples, the same
    random draws and (DDP's mean of two gradients being a sum of two halves, exact) the same weights, bit for bit;
    so the same leaderboard.  The first process writes the log to the store, and the run records its 2 processes.
    Its rerun starts no process: the training ended already."""
    data = write_pair_dir(tmp_path / "data")
    one = _run_dpo(tmp_path / "one", data, processes=1, grad_accum=2)
    two = _run_dpo(tmp_path / "two", data, processes=2, grad_accum=1)
    weights = [
        load_file(str(tmp_path / o / "models/dpo/final/unet/diffusion_pytorch_model.safetensors"))
        for o in ("one", "two")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert one == two
    frames = []
    for out in ("one", "two"):
        with Store(tmp_path / out, readonly=True) as store:
            runs = store.runs_frame().set_index("method")
            frames.append(store.training_frame().set_index(["step", "term"])["value"])
            processes = runs.loc["dpo", "train_processes"]
            assert processes == int(out == "two") + 1 and runs.loc["dpo", "status"] == "done"
    # The logged means: one all-reduce of float32 values against a float64 sum, so equal to rounding.
    assert frames[0].index.equals(frames[1].index) and np.allclose(frames[0], frames[1], rtol=1e-6)

    def launched(job):  # --jobs 1: the jobs run in this process, where this replaces the launcher
        raise AssertionError(f"{job.model.method}'s finished training started its processes again")

    monkeypatch.setattr(jobs, "train_in_processes", launched)
    assert _run_dpo(tmp_path / "two", data, processes=2, grad_accum=1) == two


def _failure(rank: int, exitcode: int) -> ProcessFailure:
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")


def test_a_failed_process_group_is_one_line_naming_the_cause(tmp_path, capsys):
    """The launcher reports every process: the one killed from outside, not those it stopped with SIGTERM; a
    process's HarnessError as it is; another error by its last line, its traceback printed above."""
    job = SimpleNamespace(model=SimpleNamespace(method="dpo", processes=2))
    stopped, killed = _failure(0, -signal.SIGTERM), _failure(1, -signal.SIGKILL)
    assert failure_line(job, {0: stopped, 1: killed}, tmp_path) == (
        "dpo: training process 1 of 2 ended with signal SIGKILL; the others were stopped; a rerun resumes from the "
        "last checkpoint"
    )
    (tmp_path / "traceback-0.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    assert failure_line(job, {0: _failure(0, 1), 1: _failure(1, -signal.SIGTERM)}, tmp_path) == (
        "dpo: training process 0 of 2 failed: RuntimeError: boom"
    )
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    (tmp_path / "error-1.txt").write_text("dpo: loss became nan at step 3; training stopped")
    assert failure_line(job, {0: stopped, 1: _failure(1, 2)}, tmp_path) == (
        "dpo: loss became nan at step 3; training stopped"
    )
