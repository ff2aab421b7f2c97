"""The data specs of ``harness.api.data`` at work: a spec's examples, and the data steps ``harness run`` takes first.

A method declares its data with a spec (``Pairs``, ``Experts``, ``LabelledImages``, ``PromptsOnly``), which holds
only its parameters; this module reads a source into the spec's ``Examples`` and makes what training needs from it
(scores, a ranked experts directory), dispatched on the spec's type, so neither the trainer nor the run knows any
spec and the contract depends on nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import singledispatch
from pathlib import Path
from typing import Any

import numpy as np

from harness.api.data import DataSpec, Example, Experts, LabelledImages, Online, Pairs, PromptsOnly
from harness.data.readers import (
    Pair,
    PickapicPairs,
    load_experts,
    load_labelled,
    load_pairs,
    pair_scores,
    scored_pairs,
    training_captions,
)
from harness.data.steps import experts_recipe, score_training_images, select_experts
from harness.errors import HarnessError
from harness.scoring import same_signal

Say = Callable[[str], None]
NAN = math.nan


class Examples(Sequence):
    """A data set's examples, made from its records on access (a Pick-a-Pic image is read only when used).

    ``scores``: every score the data carries, NaN where missing, known without reading an image.
    """

    def __init__(
        self,
        records: Sequence,
        per_record: int,
        make: Callable[[Any, int], Example],
        scores: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> None:
        self.records, self.per_record, self.make, self.scores = records, per_record, make, scores
        # Each example's sampling weight: the trainer draws with replacement in proportion to it; None: every
        # example once per epoch, in a random order.
        self.weights = weights

    def __len__(self) -> int:
        return len(self.records) * self.per_record

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        record, part = divmod(index, self.per_record)
        return self.make(self.records[record], part)

    def without(self, images: set) -> Examples:
        """These examples less every record that holds one of ``images`` (unreadable ones): the same records
        are left out whatever training draws."""
        if not images:
            return self
        kept = [
            record
            for record in self.records
            if not any(images.intersection(self.make(record, part).images) for part in range(self.per_record))
        ]
        return Examples(kept, self.per_record, self.make, self.scores)

    def captions(self) -> Sequence[str]:
        """Each example's caption, read when asked for (a Pick-a-Pic row is read whole)."""
        return _Captions(self)


class _Captions(Sequence):
    def __init__(self, examples: Examples) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self.examples.records[index // self.examples.per_record].caption


def _score(value: float | None) -> float:
    return NAN if value is None else float(value)


# -- examples: a source read as the spec says --------------------------------------------------------------------------
@singledispatch
def examples(spec: DataSpec, source: str | Path) -> Examples:
    """The training examples ``spec`` reads from ``source`` (a directory or a hub dataset), or a one-line error."""
    raise HarnessError(
        f"no reader for the data spec {spec!r}: a method declares Pairs, Experts, LabelledImages or PromptsOnly"
    )


@examples.register
def _(spec: Pairs, source: str | Path) -> Examples:
    pairs = scored_pairs(source, spec.scorer)
    if len(pairs) == 0:
        raise HarnessError(f"no usable training pairs in {source} (ties are dropped)")
    return Examples(
        pairs,
        1,
        lambda pair, _: Example(
            pair.caption,
            (pair.image_w, pair.image_l),
            (_score(pair.score_w), _score(pair.score_l)),
            (NAN, NAN),
            (None, 0) if pair.preferred_is_image_0 else (1, None),
        ),
        pair_scores(pairs),
    )


@examples.register
def _(spec: Experts, source: str | Path) -> Examples:
    experts = load_experts(source, spec.top_k, spec.scorer)
    if len(experts) == 0:
        raise HarnessError(f"no usable training experts in {source}")
    return Examples(
        experts,
        1,
        lambda expert, _: Example(expert.caption, (expert.image,), (_score(expert.score),), (NAN,)),
        np.array([_score(e.score) for e in experts], dtype=float),
    )


@examples.register
def _(spec: LabelledImages, source: str | Path) -> Examples:
    if (Path(source) / "labelled.jsonl").exists():
        rows = load_labelled(source)
        labels = np.array([row.label for row in rows])
        return Examples(
            rows,
            1,
            lambda row, _: Example(row.caption, (row.image,), (_score(row.score),), (row.label,)),
            np.array([_score(r.score) for r in rows], dtype=float),
            _weights(spec, labels),
        )
    pairs = load_pairs(source)
    if len(pairs) == 0:
        raise HarnessError(f"no usable training pairs in {source} to label (ties are dropped)")

    def from_pair(record: _PairImage, _: int) -> Example:
        pair = pairs[record.index]
        image, score = (pair.image_w, pair.score_w) if record.side == 0 else (pair.image_l, pair.score_l)
        return Example(pair.caption, (image,), (_score(score),), (record.label,))

    if spec.per_image:
        records = [_PairImage(pairs, *found) for found in _labelled_per_image(pairs)]
    else:  # each pair gives its preferred image as desirable, then the other as undesirable
        records = [_PairImage(pairs, index, side, 1.0 - side) for index in range(len(pairs)) for side in (0, 1)]
    labels = np.array([record.label for record in records])
    return Examples(records, 1, from_pair, pair_scores(pairs), _weights(spec, labels))


@examples.register
def _(spec: PromptsOnly, source: str | Path) -> Examples:
    captions = [_Caption(c) for c in training_captions(source)]
    if not captions:
        raise HarnessError(f"no training captions in {source}")
    return Examples(captions, 1, lambda row, _: Example(row.caption, ()), np.array([], dtype=float))


def _weights(spec: LabelledImages, labels: np.ndarray) -> np.ndarray | None:
    """The public sampler's weights (train_kto_sd_v1.5.py:733-738): each class's share over its count."""
    if spec.desirable_share is None:
        return None
    desirable = labels == 1
    if desirable.all() or not desirable.any():
        raise HarnessError(
            f"desirable_share {spec.desirable_share} needs desirable and undesirable images; "
            f"the data has {int(desirable.sum())} desirable of {len(labels)}"
        )
    return np.where(desirable, spec.desirable_share / desirable.sum(), (1 - spec.desirable_share) / (~desirable).sum())


@dataclass(frozen=True)
class _PairImage:
    """One image of a pair as a labelled example: the pair's index, its side (0 preferred, 1 the other), the label."""

    pairs: Sequence[Pair]
    index: int
    side: int
    label: float

    @property
    def caption(self) -> str:
        return self.pairs[self.index].caption


def _labelled_per_image(pairs: Sequence[Pair]) -> list[tuple[int, int, float]]:
    """(pair index, side, label) for each distinct image of the pairs, at its first appearance; label 1 if it
    is the preferred image of any pair.  An image is its path (a local directory) or its uid (Pick-a-Pic,
    read from two columns: no image is decoded)."""
    if isinstance(pairs, PickapicPairs):
        if not {"image_0_uid", "image_1_uid"} <= set(pairs.dataset.column_names):
            raise HarnessError(
                "per-image labels need the images' uids (columns image_0_uid, image_1_uid); "
                "set per_image_labels false to label per pair"
            )
        columns = pairs.dataset.select_columns(["image_0_uid", "image_1_uid", "label_0"])
        uid_0, uid_1, label_0 = columns["image_0_uid"], columns["image_1_uid"], columns["label_0"]
        ids = [(uid_0[r], uid_1[r]) if label_0[r] == 1 else (uid_1[r], uid_0[r]) for r in pairs.rows]
    else:
        ids = [(str(pair.image_w), str(pair.image_l)) for pair in pairs]
    first: dict[str, tuple[int, int]] = {}
    preferred: set[str] = set()
    for index, (winner, loser) in enumerate(ids):
        preferred.add(winner)
        for side, image in enumerate((winner, loser)):
            first.setdefault(image, (index, side))
    return [(index, side, float(image in preferred)) for image, (index, side) in first.items()]


@dataclass(frozen=True)
class _Caption:
    caption: str


# -- the data steps: what harness run makes from a source before training ----------------------------------------------
def training_source(spec: DataSpec, source: str, made_data: Path, synthesized: bool) -> str:
    """Where training reads: ``source`` itself, or a directory ``prepare`` makes from it in ``made_data`` (the
    results directory's ``data/``): DRO's experts ranked by a reward, unless the source has its own
    ``experts.jsonl`` or is synthesized data (which has one)."""
    if (
        isinstance(spec, Experts)
        and spec.scorer
        and source
        and not synthesized
        and not (Path(source) / "experts.jsonl").exists()
    ):
        return str(made_data / f"experts-{spec.scorer}-top{spec.top_k}")
    return source


@singledispatch
def prepare(
    spec: DataSpec, source: str, training_source: str, scorer_options: dict[str, Any], say: Say
) -> tuple[list[str], str]:
    """Make what training on ``spec`` needs from ``source`` (idempotent); return the rewards that shaped the data,
    and how (none for a spec that reads its source as it is)."""
    return [], ""


@prepare.register
def _(
    spec: Pairs, source: str, training_source: str, scorer_options: dict[str, Any], say: Say
) -> tuple[list[str], str]:
    if spec.scorer and np.isnan(pair_scores(load_pairs(source))).any():
        say(f"scoring the training pairs with {spec.scorer}")
        score_training_images(source, spec.scorer, scorer_options=scorer_options)
        return same_signal(spec.scorer), f"pair scores by {spec.scorer}"
    return [], ""


@prepare.register
def _(
    spec: Experts, source: str, training_source: str, scorer_options: dict[str, Any], say: Say
) -> tuple[list[str], str]:
    if spec.scorer and training_source != source:
        say(f"top {spec.top_k} experts of {source} by {spec.scorer}")
        select_experts(source, spec.scorer, spec.top_k, Path(training_source), scorer_options=scorer_options)
    recipe = experts_recipe(training_source)
    if recipe is None:
        return [], ""
    return same_signal(recipe["scorer"]), f"experts ranked by {recipe['scorer']} (top {recipe['n']})"


@prepare.register
def _(
    spec: Online, source: str, training_source: str, scorer_options: dict[str, Any], say: Say
) -> tuple[list[str], str]:
    # Nothing to make: the images are sampled and rewarded as training goes; the rewards are its signals.
    signals = sorted({name for scorer in spec.weights for name in same_signal(scorer)})
    return signals, f"online reward {spec.reward}"
