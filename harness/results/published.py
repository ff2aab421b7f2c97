"""Published numbers the harness reproduces, as data, each with its source.

The Diffusion-DRO paper (Wu, Ruan, Tseng, Shuai, "Ranking-based Preference Optimization for
Diffusion Models from Implicit User Feedback", NeurIPS 2025, arXiv:2510.18353) scores SD1.5, the
released Diffusion-DPO UNet and its own two DRO models with five rewards on two prompt sets, with
the protocol of the ``sd15`` preset (5 images per prompt, DDPM 50 steps, CFG 7.5, 512x512), and
gives DRO's win rates over SD1.5.  ``harness reproduce`` runs the published checkpoints through
``harness run --pretrained`` and sets its numbers beside these.

Which paper row a method's published checkpoint is:
- ``base``: SD1.5 itself.
- ``dpo``: ``mhdang/dpo-sd1.5-text2image-v1``, the paper's "Diffusion-DPO (released)" row.
- ``dro``: ``ylwu/diffusion-dro-sd1.5``.  The paper has two DRO rows (experts ranked by HPSv2 or by
  PickScore) and the DRO repository's README (github.com/basiclab/DiffusionDRO) does not say which
  one the released UNet is.  Its only training command, and ``train.py``'s default, use the HPSv2
  top-500 experts (``pickapicv2_hpsv2_500``), as does our ``dro`` recipe, so we compare it with the
  HPSv2-experts row: an inference, not a statement of the authors.
- ``smpo``: the DRO paper has no SmPO row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAPER = "Diffusion-DRO (Wu et al., NeurIPS 2025, arXiv:2510.18353)"
MEANS_SOURCE = f"{PAPER}, Tables 3-4 (mean scores)"
WIN_RATES_SOURCE = f"{PAPER}, win rates over SD1.5 (per prompt the median of the 5 images, a win when strictly higher)"


@dataclass(frozen=True)
class Metric:
    """A column of the paper's tables: our scorer, the paper's name, the weights' version, the digits printed."""

    scorer: str
    label: str
    version: str  # our scorer's version string for the weights the paper used
    decimals: int


@dataclass(frozen=True)
class PaperRow:
    """A row of the paper's tables: mean per suite (ours) and metric (our scorer)."""

    label: str
    means: dict[str, dict[str, float]]
    method: str | None = None  # our method whose published checkpoint this row is (None: none is published)
    checkpoint: str | None = None  # the published UNet (hub id)
    mapping: str = ""  # how we know ``method`` is this row


@dataclass(frozen=True)
class PublishedTables:
    """One paper's numbers for one preset."""

    paper: str
    preset: str
    suites: dict[str, str]  # our suite -> the paper's name for it
    metrics: tuple[Metric, ...]
    rows: tuple[PaperRow, ...]
    # (method, suite, scorer) -> the paper's win rate of that method's checkpoint over the base
    win_rates: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def metric(self, scorer: str) -> Metric:
        return next(m for m in self.metrics if m.scorer == scorer)

    def row_of(self, method: str) -> PaperRow | None:
        return next((row for row in self.rows if row.method == method), None)

    def mean_source(self, row: PaperRow, suite: str, metric: Metric) -> str:
        return f"{MEANS_SOURCE}, row {row.label!r}, {self.suites[suite]}, {metric.label}"

    def win_rate_source(self, row: PaperRow, suite: str, metric: Metric) -> str:
        return f"{WIN_RATES_SOURCE}, row {row.label!r}, {self.suites[suite]}, {metric.label}"


def _means(pickapic: tuple[float, ...], hpdv2: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """A row as the paper prints it: five numbers per suite, in the order of ``DRO_SD15.metrics``."""
    scorers = ("pickscore", "hpsv2", "aesthetic", "clip", "imagereward")
    return {"pickapic-test": dict(zip(scorers, pickapic, strict=True)), "hpdv2": dict(zip(scorers, hpdv2, strict=True))}


DRO_SD15 = PublishedTables(
    paper=PAPER,
    preset="sd15",
    suites={"pickapic-test": "Pick-a-Pic v2 test", "hpdv2": "HPDv2 benchmark"},
    metrics=(
        Metric("pickscore", "PickScore", "v1", 2),
        Metric("hpsv2", "HPSv2 (v2.0)", "v2.0", 2),  # the DRO code's score.py: hps_version default "v2.0"
        Metric("aesthetic", "Aesthetic", "v1-vit-l-14-linear", 2),  # score.py --aestheticv1
        Metric("clip", "CLIP", "ViT-H-14-laion2B-s32B-b79K", 4),
        Metric("imagereward", "ImageReward", "v1.0", 4),
    ),
    rows=(
        PaperRow(
            "SD1.5",
            _means((20.68, 26.88, 5.93, 0.3369, 0.1765), (20.92, 27.36, 6.22, 0.3532, 0.2242)),
            method="base",
            checkpoint="stable-diffusion-v1-5/stable-diffusion-v1-5",
            mapping="the base model itself",
        ),
        PaperRow(
            "Diffusion-DPO (released)",
            _means((21.00, 27.22, 5.96, 0.3427, 0.3369), (21.30, 27.75, 6.29, 0.3584, 0.4070)),
            method="dpo",
            checkpoint="mhdang/dpo-sd1.5-text2image-v1",
            mapping="the paper scores the released Diffusion-DPO UNet",
        ),
        PaperRow(
            "DRO (HPSv2 experts)",
            _means((21.52, 28.49, 6.40, 0.3390, 0.8511), (21.82, 29.05, 6.70, 0.3521, 0.8853)),
            method="dro",
            checkpoint="ylwu/diffusion-dro-sd1.5",
            mapping="inferred, not stated: the DRO README does not say which experts the released UNet "
            "was trained on; its only training command (and train.py's default) uses the HPSv2 "
            "top-500 experts",
        ),
        PaperRow(
            "DRO (PickScore experts)",
            _means((21.76, 28.38, 6.40, 0.3446, 0.8636), (22.04, 28.99, 6.66, 0.3560, 0.9069)),
        ),
    ),
    win_rates={
        ("dro", "pickapic-test", "pickscore"): 0.878,
        ("dro", "pickapic-test", "aesthetic"): 0.852,
        ("dro", "pickapic-test", "clip"): 0.484,
        ("dro", "pickapic-test", "imagereward"): 0.886,
    },
)

PUBLISHED = {DRO_SD15.preset: DRO_SD15}
