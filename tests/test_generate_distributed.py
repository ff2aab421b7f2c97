"""Two processes (torchrun, gloo, CPU) produce byte for byte the manifest and images of one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generate_worker import SETTINGS, case_suite
from harness.evaluation.sampling import MANIFEST_NAME, generate
from harness.models.loading import load_pipeline


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_write_the_single_process_manifest(tiny_model_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: oneDNN's last bits can depend on the thread count
    try:
        generate(
            load_pipeline(tiny_model_dir), case_suite(), tmp_path / "one", batch_size=3, progress=False, **SETTINGS
        )
    finally:
        torch.set_num_threads(threads)

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    worker = Path(__file__).with_name("generate_worker.py")
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            str(worker),
            str(tiny_model_dir),
            str(tmp_path / "two"),
            "2",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    n_images = len(case_suite()) * SETTINGS["images_per_prompt"]
    # Every rank returns the merged manifest, not only its own shard.
    assert f"rank 0: {n_images} rows" in result.stdout and f"rank 1: {n_images} rows" in result.stdout

    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / MANIFEST_NAME).read_bytes() == (one / MANIFEST_NAME).read_bytes()
    rows = [json.loads(line) for line in (two / MANIFEST_NAME).read_text().splitlines()]
    assert len(rows) == n_images
    assert all((two / r["path"]).read_bytes() == (one / r["path"]).read_bytes() for r in rows)
    assert sorted(p.name for p in two.iterdir()) == sorted([MANIFEST_NAME] + [r["path"] for r in rows]), (
        "journals merged and removed"
    )
