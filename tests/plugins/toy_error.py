"""Plugin (``harness --plugin tests/plugins/toy_error.py ...``) registering ``toy-error``, a real
lower-is-better scorer: 1 - toy-fidelity, how far an image is from showing its caption.

The statistics, the leaderboard and the dashboard must rank by it the other way round from the
metrics they usually see (tests/test_evaluate.py)."""

from PIL import Image

from harness.api import SCORERS, Scorer, register_scorer


@register_scorer("toy-error")
class ToyError(Scorer):
    name = "toy-error"
    version = "1"
    scale = "[0,1]"
    family = "toy-fidelity"  # the same signal, read the other way
    higher_is_better = False
    description = "1 - toy-fidelity: how far the image is from showing its caption (lower is better)"

    def __init__(self) -> None:
        self.fidelity = SCORERS.get("toy-fidelity")()

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return [1.0 - value for value in self.fidelity.score(images, prompts)]
