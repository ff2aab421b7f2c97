"""Scorers in their own environments (harness/scoring/environments.py): the protocol, the worker, its faults, the
atomic build, no orphans, the CLI.  The stand-in (harness/testing/env_scorer.py) needs no install: its environment
inherits the harness's packages; the slow test installs a hand-made wheel into a clean cache."""

from __future__ import annotations

import gc
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.scoring import environments as envs
from harness.scoring._env_worker import ProtocolError, read_message, write_message
from harness.scoring.cache import ScoreCache, score_images
from harness.testing.env_scorer import PixelMeanScorer
from tests.support.cli import harness_main

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = str(ROOT / "tests" / "plugins" / "env_scorer.py")


def _ended(pid: int) -> bool:
    """Gone from the process table, or a zombie (its parent died and nothing reaps it in this container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def clean_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_protocol_round_trip_and_garbage():
    stream = io.BytesIO()
    write_message(stream, {"prompts": ["a", "b"]}, [b"\x89PNG one", b""])
    write_message(stream, {"scores": [0.5]})
    stream.seek(0)
    assert read_message(stream) == ({"prompts": ["a", "b"], "blobs": [8, 0]}, [b"\x89PNG one", b""])
    assert read_message(stream) == ({"scores": [0.5], "blobs": []}, [])
    assert read_message(stream) is None  # end of input
    for garbage in (b"\xff\xff\xff\xffxx", b"\x00\x00\x00\x03{x}", b"\x00\x00\x00\x02[]", b'\x00\x00\x00\x09{"blobs"'):
        with pytest.raises(ProtocolError):
            read_message(io.BytesIO(garbage))


def test_worker_scores_like_an_independent_computation_and_the_cache_spares_it(harness_cache, tmp_path):
    images, prompts = _images(5), ["p0", "p1", "p2", "p3", "p0"]
    expected = [np.asarray(image, dtype=np.float64).mean() / 255 + 0.25 for image in images]
    scorer = PixelMeanScorer(offset="0.25")
    assert scorer.version.startswith("1+custom-") and scorer.version.endswith(f"+env-{scorer.environment.digest}")
    assert PixelMeanScorer().version == f"1+env-{scorer.environment.digest}"
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        assert score_images(scorer, images, prompts, cache=cache, batch_size=2) == pytest.approx(expected, abs=1e-12)
        pid = scorer.worker.pid
        del scorer  # a scorer its caller drops ends its worker
        gc.collect()
        assert _ended(pid) and not envs._LIVE
        again = PixelMeanScorer(offset="0.25")
        assert score_images(again, images, prompts, cache=cache) == pytest.approx(expected, abs=1e-12)
        assert again.worker is None  # every score came from the cache: no worker started


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("crash", "the worker exited with status 3"),
        ("hang", "no answer to a batch of 2 within 0.5 s (hung?)"),
        ("garbage", "the worker sent garbage (a header of 4294967295 bytes announced"),
        ("wrong count", "the worker sent garbage for 2 images"),
        ("fail", "failed on a batch: ValueError: a batch it cannot score"),
    ],
)
def test_a_misbehaving_worker_is_one_line_naming_scorer_and_log_and_is_ended(
    harness_cache, monkeypatch, prompt, message
):
    monkeypatch.setattr(PixelMeanScorer, "batch_timeout_s", 0.5)
    scorer = PixelMeanScorer()
    assert scorer.score(_images(1), ["fine"])  # a healthy worker first
    pid = scorer.worker.pid
    with pytest.raises(HarnessError) as error:
        scorer.score(_images(2), ["fine", prompt])
    text = str(error.value)
    log = Path(text.rsplit("; log: ", 1)[1])
    assert text.startswith("scorer pixel-mean-env") and message in text and "\n" not in text
    assert log.is_file() and log.parent == harness_cache / "envs" / "logs"
    assert _ended(pid) and scorer.worker is None and not envs._LIVE
    if prompt == "crash":  # (once: each start costs a process)
        assert scorer.score(_images(1), ["fine"])  # the next batch starts a new worker
        scorer.close()


def test_an_isolated_environment_sees_none_of_the_harness_packages(clean_cache):
    class Isolated(PixelMeanScorer):
        environment = envs.ScorerEnvironment((), "harness.testing.env_scorer:PixelMean")

    with pytest.raises(HarnessError, match=r"scorer pixel-mean-env: the worker exited with status 1 \(.*'PIL'"):
        Isolated().score(_images(1), ["a"])


_PARENT = """
import sys, time
from harness.testing.env_scorer import PixelMeanScorer
from PIL import Image
scorer = PixelMeanScorer()
scorer.score([Image.new("RGB", (4, 4))], ["a"])
print(scorer.worker.pid, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)  # without close(): the worker must end with the process anyway
time.sleep(60)
"""


def test_workers_end_with_the_run_whether_it_exits_or_is_killed(harness_cache):
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    parents = {
        how: subprocess.Popen([sys.executable, "-c", _PARENT, how], stdout=subprocess.PIPE, text=True, env=environment)
        for how in ("exit", "kill")
    }
    workers = {how: int(parent.stdout.readline()) for how, parent in parents.items()}
    parents["kill"].send_signal(signal.SIGKILL)
    for parent in parents.values():
        parent.wait(timeout=30)
    deadline = time.monotonic() + 5
    while not all(_ended(pid) for pid in workers.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {how: _ended(pid) for how, pid in workers.items()} == {"exit": True, "kill": True}


def test_an_interrupted_build_is_never_taken_for_a_finished_one(clean_cache):
    env = PixelMeanScorer.environment
    # A builder killed mid-build: its partial directory holds a venv but no marker.
    script = (
        "import sys; from harness.scoring import environments as e; make = e._build_commands;"
        "e._build_commands = lambda target, requirements: [*make(target, requirements), ('waiting', ['sleep', '60'])];"
        "from harness.testing.env_scorer import PixelMeanScorer; e.build(PixelMeanScorer.environment, 'x')"
    )
    builder = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL
    )
    partial = clean_cache / "envs" / f".building-{env.key}-{builder.pid}"
    deadline = time.monotonic() + 30
    while not (partial / "pyvenv.cfg").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    builder.kill()
    builder.wait()
    assert (partial / "pyvenv.cfg").exists() and not envs.is_built(env)
    assert "not built" in envs.describe_environment(PixelMeanScorer)
    assert envs.build(env, "pixel-mean-env", progress=False) == clean_cache / "envs" / env.key
    assert envs.is_built(env) and not partial.exists()


def test_cli_lists_environments_and_builds_one(clean_cache):
    plugin = PLUGIN
    before = harness_main("--plugin", plugin, "scorers").stdout.splitlines()
    row = next(line for line in before if line.startswith("pixel-mean-env "))
    assert "not built" in row and next(line for line in before if line.startswith("hpsv2 ")).count("native") == 1
    built = harness_main("--plugin", plugin, "scorers", "--build", "pixel-mean-env")
    assert built.returncode == 0 and "environment built in" in built.stdout
    after = harness_main("--plugin", plugin, "scorers").stdout
    assert f"own env {PixelMeanScorer.environment.key} (0 requirements, built)" in after
    native = harness_main("scorers", "--build", "hpsv2")
    assert native.returncode == 2 and "is native" in native.stderr


def _wheel(directory: Path) -> Path:
    """A pure-Python wheel (made here, installed offline) with a scorer entry: 2 * the stand-in's score."""
    path = directory / "envprobe-1.0-py3-none-any.whl"
    files = {
        "envprobe.py": "from harness.testing.env_scorer import PixelMean\n"
        "class Doubled(PixelMean):\n"
        "    def score(self, images, prompts):\n"
        "        return [2 * v for v in super().score(images, prompts)]\n",
        "envprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: envprobe\nVersion: 1.0\n",
        "envprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "envprobe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, "envprobe-1.0.dist-info/RECORD": record}.items():
            wheel.writestr(name, text)
    return path


@pytest.mark.slow
def test_an_environment_with_a_requirement_builds_from_a_clean_cache_and_scores(clean_cache, tmp_path):
    class Probe(PixelMeanScorer):
        environment = envs.ScorerEnvironment((str(_wheel(tmp_path)),), "envprobe:Doubled", inherit_packages=True)

    images = _images(3, seed=1)
    with pytest.raises(ModuleNotFoundError):
        __import__("envprobe")  # installed in the environment only
    scorer = Probe()
    assert scorer.score(images, ["a"] * 3) == pytest.approx(
        [2 * np.asarray(image, dtype=np.float64).mean() / 255 for image in images], abs=1e-12
    )
    scorer.close()
    assert envs.is_built(Probe.environment)


@pytest.mark.slow  # a `harness run`: its imports cost seconds
def test_a_run_builds_first_and_a_failed_install_stops_it_in_one_line_with_nothing_made(clean_cache, tmp_path):
    out = tmp_path / "results"
    result = harness_main(
        "--plugin", PLUGIN, "run", "--preset", "toy", "--methods", "sft", "--scorers", "broken-env", "--out", str(out)
    )
    assert result.returncode == 2 and not out.exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("harness: error: scorer broken-env: building its environment failed: installing 1 ")
    log = Path(line.rsplit("; log: ", 1)[1])
    assert "harness-test-missing-1.0-py3-none-any.whl" in log.read_text()
    assert sorted(p.name for p in (clean_cache / "envs").iterdir()) == [log.name]  # no environment, no partial


def test_a_worker_killed_mid_run_fails_it_in_one_line_and_the_rerun_resumes_from_the_cache(harness_cache, tmp_path):
    from harness.evaluation.suites import get_suite
    from harness.results.store import Store

    prompts = get_suite("toy-seen").prompts[:10]
    images = _images(2 * len(prompts), seed=2)  # 20 images: two batches of the score cache's 16
    folder = tmp_path / "made"
    folder.mkdir()
    rows = []
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")
        rows.append(f'{{"path": "{i}.png", "prompt_id": "{prompts[i % 10].prompt_id}", "image_index": {i // 10}}}')
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "results"
    score = ("--plugin", PLUGIN, "score", "--images", str(folder), "--prompts", "toy-seen", "--out", str(out))
    score += ("--scorers", "pixel-mean-env", "--name", "theirs")
    killed = harness_main(*score, env={"HARNESS_TEST_KILL_AT_BATCH": "1"})
    assert killed.returncode == 2
    (line,) = killed.stderr.strip().splitlines()
    assert "scorer pixel-mean-env: the worker exited with status -9" in line and "; log: " in line
    with ScoreCache(out / "cache" / "scores.sqlite") as cache:
        assert len(cache) == 16  # the first batch was kept
    assert harness_main(*score).returncode == 0
    stored = Store(out / "results.db", readonly=True).scores_frame()
    by_image = {(r.prompt_id, r.image_index): r.value for r in stored.itertuples()}
    expected = {
        (prompts[i % 10].prompt_id, i // 10): np.asarray(image, dtype=np.float64).mean() / 255
        for i, image in enumerate(images)
    }
    assert by_image == pytest.approx(expected, abs=1e-12)


def test_compare_prints_the_largest_difference_between_twins(harness_cache, tmp_path):
    images = _images(3, seed=3)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    rows = [f'{{"path": "{i}.png", "prompt": "p{i}"}}' for i in range(3)]
    (tmp_path / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    compare = ("--plugin", PLUGIN, "scorers", "--compare", "pixel-mean,pixel-mean-env", "--images", str(tmp_path))
    same = harness_main(*compare)
    assert same.returncode == 0, same.stderr
    assert "pixel-mean vs pixel-mean-env on 3 images: largest difference 0 " in same.stdout
    shifted = harness_main(*compare, "--scorer-option", "pixel-mean-env.offset=0.5")
    assert "largest difference 0.5 " in shifted.stdout
    bad = harness_main(*compare[:-2], "--images", str(tmp_path / "none"))
    assert bad.returncode == 2 and "no manifest at" in bad.stderr


def test_the_official_packages_are_declared_in_their_native_twins_family_and_scale():
    from harness.api.registry import SCORERS

    for official, native in [
        ("hpsv2-official", "hpsv2"),
        ("hpsv2.1-official", "hpsv2.1"),
        ("imagereward-official", "imagereward"),
        ("hpsv3-official", "hpsv3"),
    ]:
        official_class, native_class = SCORERS.get(official), SCORERS.get(native)
        assert (official_class.family, official_class.scale) == (native_class.family, native_class.scale)
        env = envs.environment_of(official_class)
        assert env.inherit_packages and all("==" in requirement for requirement in env.requirements)
        assert envs.environment_of(native_class) is None
        # Scores of the two never share a cache key: the official version carries its environment's digest.
        assert official_class().version == f"{native_class.version}+env-{env.digest}"


@pytest.mark.slow  # builds the hpsv2 package's environment (PyPI or the pip cache) and resumes a `harness run`
def test_hpsv2_official_gives_the_native_numbers_in_a_harness_run(tiny_run_dir, scorer_locations, tmp_path):
    """The tiny run's images scored by the hpsv2 package in its environment and by the native hpsv2, on one random
    checkpoint in the official layout.  They are 32 px, the tiny OpenCLIP's input: the resize the two must also
    share is checked on other sizes in test_scorers.py (against an independent float resize)."""
    import shutil

    from harness.api.environment import cache_dir
    from harness.results.store import Store
    from harness.testing.scorer_weights import TINY_OPEN_CLIP_ARCH

    out = shutil.copytree(tiny_run_dir, tmp_path / "run")
    checkpoint = scorer_locations["hpsv2"]["checkpoint"]
    arch_file = cache_dir() / "open-clip-configs" / f"{TINY_OPEN_CLIP_ARCH}.json"  # save_scorer_set writes it
    result = harness_main(
        *("--plugin", str(ROOT / "tests" / "plugins" / "tiny_scorer_archs.py"), "run", "--preset", "tiny"),
        *("--methods", "dpo", "--scorers", "hpsv2,hpsv2-official", "--out", str(out)),
        *("--scorer-option", f"hpsv2.checkpoint={checkpoint}", "--scorer-option", f"hpsv2.arch={TINY_OPEN_CLIP_ARCH}"),
        *("--scorer-option", f"hpsv2-official.checkpoint={checkpoint}"),
        *("--scorer-option", f"hpsv2-official.arch={arch_file}"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scores = Store(out / "results.db", readonly=True).scores_frame()
    key = ["run_id", "suite", "prompt_id", "image_index"]
    native = scores[scores.metric == "hpsv2"].set_index(key).value
    package = scores[scores.metric == "hpsv2-official"].set_index(key).value
    assert len(native) == len(package) == len(scores[scores.metric == scores.metric.iloc[0]]) > 0  # every image
    np.testing.assert_allclose(native.sort_index(), package.sort_index(), rtol=1e-4, atol=0)
    assert native.nunique() > 1
