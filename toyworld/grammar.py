"""Caption grammar of the toy world: colour x shape x position.

A scene is one shape of one colour at one of five places; its caption is the
prompt.  Compositional generalisation is measured by holding out a fixed set of
(colour, shape, position) triples from training: every pair of attributes of a
held-out triple still occurs in training, only the combination is new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.api import HarnessError

# Linear RGB in [0, 1]; far apart in direction from the background so a colour
# can be read back from a blurred or washed-out image.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND: tuple[float, float, float] = (0.12, 0.12, 0.12)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Centre of the shape as a fraction of the image side (x, y), and the caption phrase.
POSITIONS: dict[str, tuple[tuple[float, float], str]] = {
    "left": ((0.28, 0.50), "on the left"),
    "right": ((0.72, 0.50), "on the right"),
    "top": ((0.50, 0.28), "at the top"),
    "bottom": ((0.50, 0.72), "at the bottom"),
    "center": ((0.50, 0.50), "in the center"),
}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.colour, COLOURS, "colour"),
            (self.shape, SHAPES, "shape"),
            (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise HarnessError(f"unknown toy {what} {value!r}; available: {', '.join(allowed)}")

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} {POSITIONS[self.position][1]}"


_CAPTION = re.compile(
    r"^an? (?P<colour>\w+) (?P<shape>\w+) (?P<phrase>" + "|".join(p for _, p in POSITIONS.values()) + r")$"
)


def parse_caption(caption: str) -> Scene:
    """The scene a caption describes; HarnessError if it is not a toy-world caption."""
    match = _CAPTION.match(caption.strip().lower())
    if match is None:
        raise HarnessError(
            f"not a toy-world caption: {caption!r} (expected e.g. {Scene('red', 'circle', 'left').caption!r})"
        )
    position = next(name for name, (_, phrase) in POSITIONS.items() if phrase == match["phrase"])
    return Scene(match["colour"], match["shape"], position)


def all_scenes() -> list[Scene]:
    return [Scene(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


def is_held_out(scene: Scene) -> bool:
    """One position per (colour, shape) pair, rotating, so each attribute pair is still seen in training."""
    c = list(COLOURS).index(scene.colour)
    s = SHAPES.index(scene.shape)
    p = list(POSITIONS).index(scene.position)
    return (c + 2 * s + p) % len(POSITIONS) == 0


def seen_scenes() -> list[Scene]:
    return [scene for scene in all_scenes() if not is_held_out(scene)]


def unseen_scenes() -> list[Scene]:
    return [scene for scene in all_scenes() if is_held_out(scene)]


def training_captions() -> list[str]:
    """Captions the base model and the preference data are built from (never a held-out one)."""
    return [scene.caption for scene in seen_scenes()]
