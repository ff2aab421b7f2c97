"""What a method trains on: a data spec, read into examples the trainer batches.

A method declares its data with one of these objects (``Method.data``, or
``Method.data_spec()`` when it depends on the config):

- ``Pairs(scorer=None)``: preference pairs, preferred image first.  With a ``scorer``, both
  images of every pair need that reward's score (SmPO's smoothed labels): the data's own, or a
  score table made by ``harness data score``.
- ``Experts(scorer=None, top_k=None)``: single demonstration images.  With a ``scorer``, the
  ``top_k`` training images ranked by it (DRO), made by ``harness data experts``; without one,
  the data's ``experts.jsonl`` or the preferred image of each pair (SFT).
- ``LabelledImages(per_image=False, desirable_share=None)``: single images labelled desirable (1) or
  undesirable (0), no pairs (Diffusion-KTO): a ``labelled.jsonl``, or a pairs source read per distinct
  image (desirable if preferred in any of its pairs) or per pair (its winner 1, its loser 0); drawn with
  replacement so that ``desirable_share`` of the draws are desirable, or uniformly without.
- ``PromptsOnly()``: captions alone, for methods that make their own images.

Each spec reads a source into ``Example``s (caption, images, per-image scores and labels), and
says what ``harness run`` must make from a source first (``training_source`` / ``prepare``):
that is where a method's data steps live, so neither the trainer nor the run knows any spec.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

import numpy as np

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.data import Pair

ImageSource = Union[Path, bytes]
Say = Callable[[str], None]
NAN = math.nan


@dataclass(frozen=True)
class Example:
    """One training example: a caption and its images (none, one, or a pair), each with a score and a label."""

    caption: str
    images: tuple[ImageSource, ...]
    scores: tuple[float, ...] = ()
    labels: tuple[float, ...] = ()
    # Per image, the index of the image whose size it is resized to before the shared transform, when the pair is
    # transformed as one (``TrainConfig.joint_pair_transform``): the source's image_1 takes image_0's size.
    size_from: tuple[int | None, ...] = ()


class Examples(Sequence):
    """A data set's examples, made from its records on access (a Pick-a-Pic image is read only when used).

    ``scores``: every score the data carries, NaN where missing, known without reading an image.
    """

    def __init__(self, records: Sequence, per_record: int, make: Callable[[Any, int], Example], scores: np.ndarray,
                 weights: np.ndarray | None = None) -> None:
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
        kept = [record for record in self.records
                if not any(images.intersection(self.make(record, part).images) for part in range(self.per_record))]
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


class DataSpec(ABC):
    """The data a method trains on (see the module's doc)."""

    name: ClassVar[str]
    images_per_example: ClassVar[int]
    scorer: str | None = None

    @abstractmethod
    def examples(self, source: str | Path) -> Examples:
        """The training examples of ``source`` (a directory or a hub dataset), or a one-line error."""

    def training_source(self, source: str, made_data: Path, synthesized: bool) -> str:
        """Where training reads: ``source`` itself, or a directory ``prepare`` makes from it in ``made_data``
        (the results directory's ``data/``)."""
        return source

    def prepare(self, source: str, training_source: str, scorer_options: dict[str, Any], say: Say) -> tuple[list[str], str]:
        """Make what training needs from ``source`` (idempotent); return the rewards that shaped the data, and how."""
        return [], ""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({fields})"


class Pairs(DataSpec):
    name = "pairs"
    images_per_example = 2

    def __init__(self, scorer: str | None = None) -> None:
        self.scorer = scorer

    def examples(self, source: str | Path) -> Examples:
        from harness.data import pair_scores, scored_pairs

        pairs = scored_pairs(source, self.scorer)
        if len(pairs) == 0:
            raise HarnessError(f"no usable training pairs in {source} (ties are dropped)")
        return Examples(pairs, 1, lambda pair, _: Example(pair.caption, (pair.image_w, pair.image_l),
                                                          (_score(pair.score_w), _score(pair.score_l)), (NAN, NAN),
                                                          (None, 0) if pair.preferred_is_image_0 else (1, None)),
                        pair_scores(pairs))

    def prepare(self, source: str, training_source: str, scorer_options: dict[str, Any], say: Say) -> tuple[list[str], str]:
        from harness.data import load_pairs, pair_scores
        from harness.data_steps import score_training_images
        from harness.scoring import same_signal

        if self.scorer and np.isnan(pair_scores(load_pairs(source))).any():
            say(f"scoring the training pairs with {self.scorer}")
            score_training_images(source, self.scorer, scorer_options=scorer_options)
            return same_signal(self.scorer), f"pair scores by {self.scorer}"
        return [], ""


class Experts(DataSpec):
    name = "experts"
    images_per_example = 1

    def __init__(self, scorer: str | None = None, top_k: int | None = None) -> None:
        self.scorer, self.top_k = scorer, top_k

    def examples(self, source: str | Path) -> Examples:
        from harness.data import load_experts

        experts = load_experts(source, self.top_k, self.scorer)
        if len(experts) == 0:
            raise HarnessError(f"no usable training experts in {source}")
        return Examples(experts, 1, lambda expert, _: Example(expert.caption, (expert.image,), (_score(expert.score),), (NAN,)),
                        np.array([_score(e.score) for e in experts], dtype=float))

    def training_source(self, source: str, made_data: Path, synthesized: bool) -> str:
        # A source with its own experts.jsonl, or synthesized data (which has one), is used as it is.
        if self.scorer and source and not synthesized and not (Path(source) / "experts.jsonl").exists():
            return str(made_data / f"experts-{self.scorer}-top{self.top_k}")
        return source

    def prepare(self, source: str, training_source: str, scorer_options: dict[str, Any], say: Say) -> tuple[list[str], str]:
        from harness.data_steps import experts_recipe, select_experts
        from harness.scoring import same_signal

        if self.scorer and training_source != source:
            say(f"top {self.top_k} experts of {source} by {self.scorer}")
            select_experts(source, self.scorer, self.top_k, Path(training_source), scorer_options=scorer_options)
        recipe = experts_recipe(training_source)
        if recipe is None:
            return [], ""
        return same_signal(recipe["scorer"]), f"experts ranked by {recipe['scorer']} (top {recipe['n']})"


class LabelledImages(DataSpec):
    """``per_image``: a pairs source gives each distinct image once, desirable if it is preferred in at least
    one of its pairs (Diffusion-KTO's ``gt_label_wi_l``); otherwise each pair its winner (1) and its loser (0),
    an image in several pairs once per pair.  ``desirable_share``: draws with replacement in which that share is
    desirable (the public ``WeightedRandomSampler``); None: each example once per epoch."""

    name = "labelled images"
    images_per_example = 1

    def __init__(self, per_image: bool = False, desirable_share: float | None = None) -> None:
        self.per_image, self.desirable_share = per_image, desirable_share

    def examples(self, source: str | Path) -> Examples:
        from harness.data import load_labelled, load_pairs, pair_scores

        if (Path(source) / "labelled.jsonl").exists():
            rows = load_labelled(source)
            labels = np.array([row.label for row in rows])
            return Examples(rows, 1, lambda row, _: Example(row.caption, (row.image,), (_score(row.score),), (row.label,)),
                            np.array([_score(r.score) for r in rows], dtype=float), self._weights(labels))
        pairs = load_pairs(source)
        if len(pairs) == 0:
            raise HarnessError(f"no usable training pairs in {source} to label (ties are dropped)")

        def from_pair(record: _PairImage, _: int) -> Example:
            pair = pairs[record.index]
            image, score = (pair.image_w, pair.score_w) if record.side == 0 else (pair.image_l, pair.score_l)
            return Example(pair.caption, (image,), (_score(score),), (record.label,))

        if self.per_image:
            records = [_PairImage(pairs, *found) for found in _labelled_per_image(pairs)]
        else:  # each pair gives its preferred image as desirable, then the other as undesirable
            records = [_PairImage(pairs, index, side, 1.0 - side) for index in range(len(pairs)) for side in (0, 1)]
        labels = np.array([record.label for record in records])
        return Examples(records, 1, from_pair, pair_scores(pairs), self._weights(labels))

    def _weights(self, labels: np.ndarray) -> np.ndarray | None:
        """The public sampler's weights (train_kto_sd_v1.5.py:733-738): each class's share over its count."""
        if self.desirable_share is None:
            return None
        desirable = labels == 1
        if desirable.all() or not desirable.any():
            raise HarnessError(f"desirable_share {self.desirable_share} needs desirable and undesirable images; "
                               f"the data has {int(desirable.sum())} desirable of {len(labels)}")
        return np.where(desirable, self.desirable_share / desirable.sum(), (1 - self.desirable_share) / (~desirable).sum())


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
    from harness.data import PickapicPairs

    if isinstance(pairs, PickapicPairs):
        if not {"image_0_uid", "image_1_uid"} <= set(pairs.dataset.column_names):
            raise HarnessError("per-image labels need the images' uids (columns image_0_uid, image_1_uid); "
                               "set per_image_labels false to label per pair")
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


class PromptsOnly(DataSpec):
    name = "prompts"
    images_per_example = 0

    def examples(self, source: str | Path) -> Examples:
        from harness.data import training_captions

        captions = [_Caption(c) for c in training_captions(source)]
        if not captions:
            raise HarnessError(f"no training captions in {source}")
        return Examples(captions, 1, lambda row, _: Example(row.caption, ()), np.array([], dtype=float))


@dataclass(frozen=True)
class _Caption:
    caption: str


