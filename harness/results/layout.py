"""The layout of a results directory (``--out DIR``), in one place.

::

    results.db                      the results store (harness.results.store): runs, images, scores, logs
    images/<run>/<suite>/           one run's images of one suite, with their manifest.jsonl
    models/<method>/                a method's training: checkpoints, final/unet (final/lora), tensorboard
    data/                           training data made for the run (the toy world's, DRO's experts)
    cache/scores.sqlite             scores by image content, scorer and version (harness.scoring.cache)
    .ray-journals/                  `--backend ray`: running trainings' store writes (removed once made)
    export/                         `harness export`'s tables
    figures/                        `harness figure`'s charts (PNG / SVG / PDF and each chart's Vega-Lite spec)

The store records every path of the directory relative to it (``relative_images``, ``relative``) and the
inputs outside it by content (``harness.results.identity``), so a results directory can be moved or copied whole and
resumed by any spelling of its path, from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DB_NAME = "results.db"


@dataclass(frozen=True)
class ResultsDir:
    """Every path of one results directory; nothing is created here."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str from the command line is welcome too

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def score_cache(self) -> Path:
        return self.root / "cache" / "scores.sqlite"

    @property
    def ray_journals(self) -> Path:
        """Where `harness run --backend ray`'s trainings record their store writes for the driver to make."""
        return self.root / ".ray-journals"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def model(self, method: str) -> Path:
        """Where ``method``'s training writes (its UNet ends in ``final/unet``)."""
        return self.root / "models" / method

    def relative_images(self, run: str, suite: str) -> Path:
        """The folder of a run's images of a suite, relative to the directory (as the store records it)."""
        return Path("images") / run / suite

    def images(self, run: str, suite: str) -> Path:
        return self.root / self.relative_images(run, suite)

    def relative(self, path: str | Path) -> str:
        """How the store records ``path``, a file of this directory: relative to it (as typed, ``path`` is under
        ``root`` as typed)."""
        return Path(path).relative_to(self.root).as_posix()

    def file(self, stored_path: str | Path) -> Path:
        """The file a path recorded in the store (relative to the directory) names."""
        return self.root / stored_path
