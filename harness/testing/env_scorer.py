"""A stand-in scorer that runs in its own environment (tests of ``harness.scoring.environments``).

``PixelMeanScorer`` (registered as ``pixel-mean-env`` by tests/plugins/env_scorer.py) runs ``PixelMean`` in an
environment without requirements that inherits the harness's packages; ``PixelMeanNative`` (``pixel-mean``) is its
native twin, ``BrokenEnvScorer`` (``broken-env``) one whose environment cannot be built.  ``PixelMean(offset="0")`` scores an image by the mean of its RGB values over 255, plus ``offset`` (a location, as
``--scorer-option`` passes them).  A prompt among ``FAULTS`` makes the worker misbehave on purpose, and
``$HARNESS_TEST_KILL_AT_BATCH=N`` kills it (SIGKILL) when it receives its batch number N (from 0).
"""

from __future__ import annotations

import os
import signal
import time

from PIL import Image, ImageStat

from harness.api.scorer import Scorer
from harness.scoring import _env_worker
from harness.scoring.environments import EnvironmentScorer, ScorerEnvironment

FAULTS = ("crash", "hang", "garbage", "wrong count", "fail")


class PixelMean:
    def __init__(self, offset: str = "0") -> None:
        self.offset = float(offset)
        self.batches = 0

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        if os.environ.get("HARNESS_TEST_KILL_AT_BATCH") == str(self.batches):
            os.kill(os.getpid(), signal.SIGKILL)
        self.batches += 1
        if "crash" in prompts:
            os._exit(3)
        if "hang" in prompts:
            time.sleep(3600)
        if "garbage" in prompts:
            _env_worker.CHANNEL.write(b"\xff\xff\xff\xffnot a message")
            _env_worker.CHANNEL.flush()
        if "wrong count" in prompts:
            return []
        if "fail" in prompts:
            raise ValueError("a batch it cannot score")
        return [sum(ImageStat.Stat(image.convert("RGB")).mean) / 3 / 255 + self.offset for image in images]


class PixelMeanScorer(EnvironmentScorer):
    name = "pixel-mean-env"
    version = "1"
    scale = "[0,1]"
    description = "mean RGB value / 255, computed in a worker of its own environment"
    environment = ScorerEnvironment((), f"{__name__}:PixelMean", inherit_packages=True)
    batch_timeout_s = 3.0  # the stand-in answers in milliseconds; a hang must fail fast in tests

    def __init__(self, offset: str | None = None) -> None:
        super().__init__(offset=offset)


class PixelMeanNative(Scorer):
    """The same stand-in computed in the harness's own process: ``pixel-mean-env``'s native twin."""

    name = "pixel-mean"
    family = PixelMeanScorer.name
    version = "1"
    scale = "[0,1]"
    description = "mean RGB value / 255, computed in the harness's process"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return PixelMean().score(images, prompts)


class BrokenEnvScorer(PixelMeanScorer):
    """The stand-in with a requirement that cannot be installed (a wheel that does not exist)."""

    name = "broken-env"
    description = "a scorer whose environment cannot be built"
    environment = ScorerEnvironment(("/nonexistent/harness-test-missing-1.0-py3-none-any.whl",), "missing:Scorer")
