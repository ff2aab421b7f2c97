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
- ``Online(reward, group_size, num_steps, guidance_scale, noise_level)``: captions alone; at every micro-step the
  trainer samples ``group_size`` images per caption from the current policy with the SDE sampler of
  ``harness.api.noise.sde_step`` (recording each step's log-probability), scores them with ``reward`` (a
  registered scorer, or a weighted sum of them: ``"a:0.5+b:0.5"``) and hands the method a ``Rollout``
  (``Batch.rollout``); the rewards are recorded as the run's training signals.

Each spec holds only its parameters: ``harness.data.specs`` reads a source into the spec's examples
(caption, images, per-image scores and labels) and makes what ``harness run`` needs from a source first
(its data steps), dispatched on the spec's type, so neither the trainer nor the run knows any spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Union

from harness.errors import HarnessError

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


class Online(PromptsOnly):
    """Prompts only, the images sampled from the policy as it trains (see the module's doc).

    ``reward``: a scorer's name, or a weighted sum ``"name:weight+name:weight"`` (flow_grpo's ``reward_fn``
    dict).  ``group_size``: images per prompt and micro-step.  ``num_steps``: the sampler's steps.
    ``guidance_scale``: classifier-free guidance while sampling (and in the log-probabilities; <= 1: none).
    ``noise_level``: the SDE's noise scale (0 would be the deterministic ODE, which has no log-probability).
    ``window_size`` > 0: flow_grpo's "Fast" sampler, the SDE only on ``window_size`` consecutive steps (the
    deterministic ODE elsewhere), the window's first step drawn uniformly per micro-step so that the window lies
    within the first ``window_end`` steps (0: all of them); 0: the SDE on every step."""

    name = "online"

    def __init__(
        self,
        reward: str,
        group_size: int,
        num_steps: int,
        guidance_scale: float,
        noise_level: float,
        window_size: int = 0,
        window_end: int = 0,
    ) -> None:
        self.reward, self.group_size, self.num_steps = reward, group_size, num_steps
        self.guidance_scale, self.noise_level = guidance_scale, noise_level
        self.window_size, self.window_end = window_size, window_end or num_steps
        self.weights = reward_weights(reward)
        if group_size < 2:
            raise HarnessError(f"group_size must be >= 2 (a group's rewards are compared), not {group_size}")
        if num_steps < 1 or noise_level <= 0:
            raise HarnessError(f"num_steps must be >= 1 and noise_level > 0, not {num_steps} and {noise_level}")
        if not 0 <= window_size <= self.window_end <= num_steps:
            raise HarnessError(
                f"the SDE window ({window_size} steps within the first {self.window_end}) must fit the "
                f"{num_steps} sampler steps: 0 <= sde_window_size <= sde_window_end <= sample_steps"
            )


def reward_weights(reward: str) -> dict[str, float]:
    """``"pickscore"`` -> {"pickscore": 1.0}; ``"a:0.7+b:0.3"`` -> {"a": 0.7, "b": 0.3}; a malformed one: HarnessError."""
    weights: dict[str, float] = {}
    for term in reward.split("+"):
        name, _, weight = term.strip().partition(":")
        try:
            weights[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise HarnessError(
                f"reward {reward!r}: {weight!r} is not a weight (write name:weight+name:weight)"
            ) from None
        if not name.strip():
            raise HarnessError(f"reward {reward!r} names no scorer (write name or name:weight+name:weight)")
    return weights


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
