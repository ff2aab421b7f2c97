"""Published accuracies of scorers against human preference pairs, as data, each with its source: what `harness
agreement` sets beside ours.

Each value is the fraction of a set's pairs on which the scorer prefers the image people preferred, as its
publisher printed it (a percentage divided by 100).  Where the publisher's weights are not those of our scorer
(another version, another backbone) or its protocol differs from ours (ties counted otherwise), the entry says
so in ``note``, and the comparison is shown but flagged: it compares, it does not reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

HPSV3 = (
    "HPSv3 (Ma et al., ICCV 2025, arXiv:2508.03789), 'Preference Accuracy of HPSv3' "
    "(README of github.com/MizzenAI/HPSv3, hpsv3 1.0.0 on PyPI)"
)
MMRB2 = (
    "Multimodal RewardBench 2 (Hu et al., arXiv:2512.16899), 'Model Performance Results', Text-to-Image column "
    "(README of github.com/facebookresearch/MMRB2)"
)
IMSCORE = "imscore (github.com/RE-N-Y/imscore), README 'Benchmark on Preference datasets'"

# Why a column of a table is not our protocol exactly.
PICKAPIC_TIES = (
    "the Pick-a-Pic paper's tie-aware accuracy on its own test split (which HPSv3 cites: PickScore 70.5, its "
    "Table 1b) counts a human tie as an outcome a scorer can predict; ours skips human ties, so expect ours higher"
)
SPLIT_UNSTATED = "the README does not say which Pick-a-Pic v2 split; compared with test_unique, an inference"
VERSION_UNSTATED = "the weights' version is not stated"


@dataclass(frozen=True)
class PublishedAccuracy:
    publisher: str  # the paper or repository, with the table
    label: str  # the row's name there
    data: str  # our set, as ``--data`` names it (``harness.api.JUDGED_SETS``)
    scorer: str  # our scorer of the same weights
    value: float  # a fraction
    version: str | None = None  # our scorer's version for their weights (None: not stated)
    note: str = ""  # how their protocol or weights differ from ours, if they do


def _table(
    publisher: str,
    data: dict[str, str],
    rows: dict[tuple[str, str, str | None], tuple[float | None, ...]],
    notes: dict[str, str],
) -> list[PublishedAccuracy]:
    """A printed table: ``rows`` (their label, our scorer, our version) -> percentages in the order of ``data``
    (our set -> its column; None where the table has no value); ``notes`` per set."""
    return [
        PublishedAccuracy(publisher, label, set_name, scorer, value / 100, version, notes.get(set_name, ""))
        for (label, scorer, version), values in rows.items()
        for set_name, value in zip(data, values, strict=True)
        if value is not None
    ]


PUBLISHED_ACCURACIES: tuple[PublishedAccuracy, ...] = (
    *_table(
        HPSV3,
        {"imagereward-test": "ImageReward", "pickapic-test": "Pickscore", "hpdv2-test": "HPDv2"},
        {
            # HPS (v1) and MPS have no scorer here; HPDv3's column has no reader yet.
            ("CLIP ViT-H/14", "clip", "ViT-H-14-laion2B-s32B-b79K"): (57.1, 60.8, 65.1),
            ("Aesthetic Score Predictor (improved-aesthetic-predictor)", "aesthetic", "v2-mlp"): (57.4, 56.8, 76.8),
            ("ImageReward", "imagereward", "v1.0"): (65.1, 61.1, 74.0),
            ("PickScore", "pickscore", "v1"): (61.6, 70.5, 79.8),
            ("HPSv2", "hpsv2", None): (65.7, 63.8, 83.3),
            ("HPSv3", "hpsv3", "v1.0"): (66.8, 72.8, 85.4),
        },
        {"pickapic-test": PICKAPIC_TIES},
    ),
    *_table(
        MMRB2,
        {"mmrb2-t2i": "Text-to-Image"},
        {
            ("CLIPScore", "clip", None): (51.0,),
            ("ImageReward", "imagereward", "v1.0"): (54.0,),
            ("HPSv2", "hpsv2", None): (54.7,),
            ("PickScore", "pickscore", "v1"): (58.6,),
            ("HPSv3", "hpsv3", "v1.0"): (60.2,),
        },
        {},
    ),
    *_table(
        IMSCORE,
        {
            "hpdv2-test": "HPD v2 Accuracy",
            "imagereward-test": "ImageReward Accuracy",
            "pickapic-test_unique": "Pickapicv2 Accuracy",
        },
        {
            ("pickscore", "pickscore", "v1"): (79.2157, 66.7448, 80.1887),
            ("hpsv21", "hpsv2.1", "v2.1"): (83.3464, 67.4793, 69.3396),
            ("imreward", "imagereward", "v1.0"): (74.0131, 65.7915, 60.8491),
            ("laion-aesthetic", "aesthetic", None): (73.6013, 56.6807, 55.1887),
            ("clipscore (CLIP ViT-L/14)", "clip", "ViT-L-14"): (62.6078, 57.1652, 60.6132),
        },
        {"pickapic-test_unique": SPLIT_UNSTATED},
    ),
)
