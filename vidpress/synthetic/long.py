"""The "long" family of the synthetic world: a long clip where one event among many answers the question.

A long clip holds 64-256 frames of 56x56 (2 x 2 merged tokens per temporal token, so 128-512 video tokens: long
in time, small enough for a CPU), a dark noisy background and many flashes ("events"): each flash is one of the
four FLASH_SHAPES in one of the four answer colours, inside one 28x28 cell, lasting 1-3 temporal tokens and
visible in exactly one frame of each temporal pair it touches (as in the six short families). Exactly one event
has the key the question names; every distractor event has another key, and no other flash is visible while the
asked one is, so the asked event is the only thing in the video the question matches. `LongConfig.key` picks
what the question names it by:

    "ring" (default): "What colour was the flashing ring? A. red B. green C. blue D. yellow. Answer with the letter."
        The asked event is always the ring; the distractors are squares, pluses and bars.
    "shape": the same question about any of the four shapes (the distractors have the other three).
    "colour": "What shape was the red flash? A. square B. ring C. plus D. bar. ..." (the distractors have the
        other three colours).

"shape" and "colour" also test binding a word of the question to the video's tokens, which the tiny reference
model does poorly (its short `query` family, shape-keyed: 0.550 with all tokens; the long family with "shape":
0.425, with "colour": 0.39 after 285 fine-tuning steps); "ring" asks for the needle the question names without
that, so it tests what a press keeps, not what the tiny model cannot learn. Whatever the key, the detail asked is
not given away by its presence: the distractors show all four values of it. A press or a retriever has to find
the event the question names; merging or sampling whole frames loses it unless it lands on the event's few
temporal tokens (1-3 of 32-128). The answer-bearing pixels are the asked event's (`Example.evidence`).

    examples = make_split("test", 120, families=("long",))   # same seeds and splits as the other families
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidpress.synthetic.world import (
    COLOUR_NAMES,
    FLASH_SHAPES,
    LETTERS,
    QUESTIONS,
    Example,
    Scene,
    WorldConfig,
    register_family,
)

__all__ = ["LONG_FAMILY", "LongConfig", "make_long_example"]

LONG_FAMILY = "long"
#: Second entry of the seed sequence of the long family's generator (the six short families use their index 0-5).
_STREAM = 100


@dataclass(frozen=True)
class LongConfig:
    """How long clips are drawn (ranges are inclusive).

    groups: temporal tokens per clip (frames = temporal_patch * groups), drawn uniformly.
    size, cell, temporal_patch: frame side, merged-token side and frames per temporal token (size // cell = 2:
        4 tokens per temporal token).
    distractor_rate: distractor events per temporal token, drawn uniformly (0.25-0.5: 8-64 distractors).
    event_groups: temporal tokens one event lasts.
    flash_size: flash sides in pixels (inside one cell with a margin).
    noise: amplitude of the per-frame pixel noise.
    key: what the question names the asked event by: "ring" (always the ring; ask its colour), "shape" (any shape;
        ask its colour) or "colour" (ask its shape).
    """

    groups: tuple[int, int] = (32, 128)
    size: int = 56
    cell: int = 28
    temporal_patch: int = 2
    distractor_rate: tuple[float, float] = (0.25, 0.5)
    event_groups: tuple[int, int] = (1, 3)
    flash_size: tuple[int, int] = (14, 20)
    noise: int = 3
    key: str = "ring"

    def __post_init__(self):
        if self.key not in ("ring", "shape", "colour"):
            raise ValueError(f"key must be 'ring', 'shape' or 'colour'; got {self.key!r}")
        low, high = self.groups
        if not 8 <= low <= high:
            raise ValueError(f"groups must be a range (low, high) with 8 <= low <= high; got {self.groups}")
        if not 1 <= self.event_groups[0] <= self.event_groups[1] <= low // 4:
            raise ValueError(f"event_groups must be a range within 1..groups[0] // 4; got {self.event_groups}")
        if not 0 < self.distractor_rate[0] <= self.distractor_rate[1] <= 1:
            raise ValueError(f"distractor_rate must be a range within (0, 1]; got {self.distractor_rate}")
        # WorldConfig checks size / cell / flash_size.
        self.world(low)

    def world(self, groups: int) -> WorldConfig:
        """The WorldConfig the renderer draws a clip of `groups` temporal tokens with."""
        return WorldConfig(frames=groups * self.temporal_patch, size=self.size, cell=self.cell,
                           temporal_patch=self.temporal_patch, flash_size=self.flash_size, noise=self.noise,
                           distractors=0, max_count=1, query_events=2)


def _event_frames(scene: Scene, rng, first: int, length: int) -> list[int]:
    """One frame of each temporal pair of groups first .. first + length - 1 (which one of the pair: at random)."""
    tp = scene.config.temporal_patch
    return [g * tp + int(rng.integers(tp)) for g in range(first, first + length)]


def _room(scene: Scene, frames: list[int]) -> bool:
    """Whether some cell is free of flashes in every one of `frames` (a flash fills most of its cell)."""
    per_side = scene.config.size // scene.config.cell
    taken = {obj["cell"] for obj in scene.objects if obj["kind"] == "flash" and set(obj["frames"]) & set(frames)}
    return len(taken) < per_side * per_side


def make_long_example(seed: int, config: LongConfig = LongConfig()) -> Example:
    """Draw one long-family example from `seed` (deterministic).

    info holds the renderer facts: objects (the asked event first), needed ([0]), groups, event_groups (the asked
    event's temporal tokens), key (what the question names it by) and the asked event's colour and shape.
    """
    if not isinstance(config, LongConfig):
        raise ValueError(f"the long family is drawn with a LongConfig; got {type(config).__name__}")
    rng = np.random.default_rng([seed, _STREAM])
    groups = int(rng.integers(config.groups[0], config.groups[1] + 1))
    scene = Scene(config.world(groups), rng)

    shape = int(rng.integers(len(FLASH_SHAPES)))
    if config.key == "ring":  # drawn all the same: a seed lays out the same video whatever the key
        shape = FLASH_SHAPES.index("ring")
    colour = int(rng.integers(4))
    length = int(rng.integers(config.event_groups[0], config.event_groups[1] + 1))
    first = int(rng.integers(groups - length + 1))
    asked = range(first, first + length)
    scene.place_flash(colour, _event_frames(scene, rng, first, length), shape=FLASH_SHAPES[shape])

    # Distractor events: another key, never while the asked event is visible; the first four take the four values
    # of the detail asked, so its presence says nothing.
    count = int(round(rng.uniform(*config.distractor_rate) * groups))
    key, detail = (colour, shape) if config.key == "colour" else (shape, colour)
    other_keys = [k for k in range(4) if k != key]
    details = [int(k) for k in rng.permutation(4)] + [int(k) for k in rng.integers(0, 4, size=max(0, count - 4))]
    for k in range(count):
        span = int(rng.integers(config.event_groups[0], config.event_groups[1] + 1))
        # starts whose span [g, g + span) misses the asked event's [first, first + length)
        starts = [g for g in range(groups - span + 1) if g + span <= first or g >= first + length]
        other = other_keys[int(rng.integers(len(other_keys)))]
        c, s = (other, details[k]) if config.key == "colour" else (details[k], other)
        for _ in range(20):  # all four cells can be taken at some frame: draw another time
            frames = _event_frames(scene, rng, int(rng.choice(starts)), span)
            if _room(scene, frames):
                scene.place_flash(c, frames, shape=FLASH_SHAPES[s])
                break

    if config.key == "colour":
        prompt = QUESTIONS["long"].format(colour=COLOUR_NAMES[colour])
        options = list(FLASH_SHAPES)
    else:
        prompt = QUESTIONS["query"].format(shape=FLASH_SHAPES[shape])
        options = list(COLOUR_NAMES)
    lettered = " ".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))
    question = f"{prompt} {lettered}. Answer with the letter."
    video, evidence = scene.render([0])
    info = dict(objects=scene.objects, needed=[0], groups=groups, event_groups=list(asked), key=config.key,
                colour=COLOUR_NAMES[colour], shape=FLASH_SHAPES[shape])
    return Example(video, question, options, detail, LONG_FAMILY, evidence, seed, prompt=prompt, info=info)


register_family(LONG_FAMILY, make_long_example, LongConfig)
