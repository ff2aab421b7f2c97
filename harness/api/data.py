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

Each spec holds only its parameters: ``harness.data.specs`` reads a source into the spec's examples
(caption, images, per-image scores and labels) and makes what ``harness run`` needs from a source first
(its data steps), dispatched on the spec's type, so neither the trainer nor the run knows any spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Union

ImageSource = Union[Path, bytes]


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


class DataSpec:
    """The data a method trains on (see the module's doc): its kind and parameters."""

    name: ClassVar[str]
    images_per_example: ClassVar[int]
    scorer: str | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({fields})"


class Pairs(DataSpec):
    name = "pairs"
    images_per_example = 2

    def __init__(self, scorer: str | None = None) -> None:
        self.scorer = scorer


class Experts(DataSpec):
    name = "experts"
    images_per_example = 1

    def __init__(self, scorer: str | None = None, top_k: int | None = None) -> None:
        self.scorer, self.top_k = scorer, top_k


class LabelledImages(DataSpec):
    """``per_image``: a pairs source gives each distinct image once, desirable if it is preferred in at least
    one of its pairs (Diffusion-KTO's ``gt_label_wi_l``); otherwise each pair its winner (1) and its loser (0),
    an image in several pairs once per pair.  ``desirable_share``: draws with replacement in which that share is
    desirable (the public ``WeightedRandomSampler``); None: each example once per epoch."""

    name = "labelled images"
    images_per_example = 1

    def __init__(self, per_image: bool = False, desirable_share: float | None = None) -> None:
        self.per_image, self.desirable_share = per_image, desirable_share


class PromptsOnly(DataSpec):
    name = "prompts"
    images_per_example = 0


# --- What a scorer is checked against: `harness agreement` ---------------------------------------------------
@dataclass(frozen=True)
class JudgedPair:
    """Two images of one prompt, the one the judges preferred first.

    ``p_preferred``: where the judges are simulated with a known noise (a world's panel), the probability that
    they prefer ``preferred`` over ``other`` (None for people): it gives each scorer's expected accuracy, the
    ground truth its confidence interval should cover."""

    prompt: str
    preferred: ImageSource
    other: ImageSource
    p_preferred: float | None = None


@dataclass(frozen=True)
class JudgedSet:
    """A set's decisive pairs (ties of the judges left out, and counted), as a function registered with
    ``register_judged_set(name)`` returns it from its location (None: its own default, e.g. a hub copy)."""

    name: str  # the set as ``--data`` names it
    location: str  # where it was read from
    pairs: Sequence[JudgedPair]
    ties_skipped: int
    note: str = ""  # what the output says about the set (who judged, how), if anything
