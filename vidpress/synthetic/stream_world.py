"""A streaming family of the synthetic world: long streams with events at known times, asked about at time t.

A stream is `segments` segments of `segment_frames` frames (default 8 x 16 frames at 8 fps: 16 s, 64 temporal
tokens, 1024 merged tokens) on the world's static textured background with its four static distractors (one in
each answer colour). Two kinds of events:

- the large shape: always in the same place, its colour changes at every segment boundary (never the colour it had
  in the segment before);
- flashes: `flashes` one-frame flashes (distinct shapes, random colours) at distinct temporal tokens, each inside one
  28x28 cell.

Each stream carries one question of every kind, asked at the end of a segment (time t):

=========  ====================================================================================================
present    "What colour is the large shape?" - its colour in the latest segment; the previous segment showed
           another colour, so only the latest segment answers it (a memory that lost the present is wrong)
past       "What colour was the flashing {shape}?" at the end of the stream, about a flash at least one segment
           old (a sliding window that forgot it is wrong; retrieval by the question can bring it back)
count      "How many flashes were there?" - the flashes before t (1..4), asked where that count holds; every
           flash before t is needed, flashes after t exist and must not count
=========  ====================================================================================================

The question texts are the ones of the clip world (`vidpress.synthetic.world.QUESTIONS`: static, query, counting),
so a model trained on the clips reads them. Every question knows its answer-bearing tokens (`evidence`: one bool
mask [G * M] over the stream's merged tokens per needed event, G = frames // temporal_patch temporal tokens of
M = (size // cell)^2 cells each), so a stream's memory can be scored model-free: does it still hold at least one
token of every needed event when the question is asked?

    streams = make_stream_split("test", 30)      # stream i of a split is always the same (seed base + i)
    for q in streams[0].questions: q.time, q.frame, q.kind, q.question, q.answer_letter, q.evidence
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vidpress.synthetic.world import (
    COLOUR_NAMES,
    COUNT_OPTIONS,
    FLASH_SHAPES,
    LETTERS,
    QUESTIONS,
    SPLIT_BASE,
    Scene,
    WorldConfig,
)

__all__ = ["STREAM_KINDS", "StreamConfig", "StreamExample", "StreamQuestion", "make_stream", "make_stream_split",
           "stream_evidence_hits"]

STREAM_KINDS = ("present", "past", "count")
# Stream seeds are the clip world's split seeds offset by this, so a stream never shares a seed with a clip.
_STREAM_SEED_OFFSET = 5_000_000
_SPLIT_SIZE = 5_000_000


@dataclass(frozen=True)
class StreamConfig:
    """How streams are drawn.

    segments, segment_frames: the stream is segments x segment_frames frames; the large shape changes colour at
        every segment boundary and questions are asked at segment ends (segment_frames must be a multiple of the
        world's temporal_patch).
    fps: frames per second of the stream's clock (question times are in seconds of it).
    flashes: one-frame flashes per stream (2..4: distinct shapes; the count question asks 1..4 of them).
    world: the clip world's drawing settings (size, cell, temporal_patch, shape sizes, noise); its `frames` is
        ignored (a stream's length is segments x segment_frames).
    """

    segments: int = 8
    segment_frames: int = 16
    fps: float = 8.0
    flashes: int = 4
    world: WorldConfig = WorldConfig()

    def __post_init__(self):
        if self.segments < 2:
            raise ValueError(f"a stream needs at least 2 segments (a present and a past); got {self.segments}")
        if self.segment_frames < 1 or self.segment_frames % self.world.temporal_patch:
            raise ValueError(f"segment_frames must be a positive multiple of temporal_patch "
                             f"{self.world.temporal_patch}; got {self.segment_frames}")
        if not 2 <= self.flashes <= len(FLASH_SHAPES):
            raise ValueError(f"flashes must be in 2..{len(FLASH_SHAPES)} (distinct shapes); got {self.flashes}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive; got {self.fps}")
        if self.flashes > self.groups:
            raise ValueError(f"{self.groups} temporal tokens are too few for {self.flashes} flashes")

    @property
    def frames(self) -> int:
        return self.segments * self.segment_frames

    @property
    def groups(self) -> int:
        """Temporal tokens of the whole stream."""
        return self.frames // self.world.temporal_patch

    @property
    def cells(self) -> int:
        """Merged tokens per temporal token (M)."""
        return (self.world.size // self.world.cell) ** 2

    def render_config(self) -> WorldConfig:
        from dataclasses import replace

        return replace(self.world, frames=self.frames)


@dataclass
class StreamQuestion:
    """A question asked at stream time `time` seconds, after frames [0, frame) arrived.

    kind: one of STREAM_KINDS. question: text with lettered options; options: the 4 option texts; answer: index of
    the right one. evidence: per needed event a bool [G * M] mask over the stream's merged tokens (token (g, i, j)
    at g * M + i * side + j), every one of them before `frame`.
    """

    kind: str
    frame: int
    time: float
    question: str
    prompt: str
    options: list[str]
    answer: int
    evidence: list[torch.Tensor]

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass
class StreamExample:
    """One stream: video uint8 [F, H, W, 3] at `fps`, its questions in time order, the seed it was drawn from and
    the events (`info`: "shape_colours" [segments] colour index of the large shape per segment, "flashes": one dict
    per flash with frame, group, colour, shape, cell)."""

    video: np.ndarray
    fps: float
    questions: list[StreamQuestion]
    seed: int
    config: StreamConfig
    info: dict = field(default_factory=dict)

    def timestamps(self) -> np.ndarray:
        """[F] seconds of every frame: frame / fps."""
        return np.arange(len(self.video)) / self.fps


def stream_evidence_hits(tokens_in_memory: torch.Tensor, question: StreamQuestion) -> bool:
    """True when the stream tokens in memory (indices into G * M, see `StreamQuestion.evidence`; negative entries,
    tokens outside the grid, are ignored) touch every event the question needs."""
    tokens = torch.as_tensor(tokens_in_memory).long().flatten().cpu()
    tokens = tokens[tokens >= 0]
    for event in question.evidence:
        if tokens.numel() and int(tokens.max()) >= event.numel():
            raise ValueError(f"stream token {int(tokens.max())} out of range for {event.numel()} tokens")
        if not bool(event[tokens].any()):
            return False
    return True


def make_stream_split(split: str, n: int, *, config: StreamConfig = StreamConfig(), start: int = 0
                      ) -> list[StreamExample]:
    """Streams start .. start+n-1 of `split` ("train", "val" or "test"); stream i is drawn from seed
    base(split) + 5,000,000 + i, so the same (split, i, config) always gives the same stream and no stream shares
    a seed with a clip of the world."""
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {tuple(SPLIT_BASE)}; got {split!r}")
    if start < 0 or n < 0 or start + n > _SPLIT_SIZE:
        raise ValueError(f"streams [{start}, {start + n}) are outside a split's {_SPLIT_SIZE} seeds")
    return [make_stream(SPLIT_BASE[split] + _STREAM_SEED_OFFSET + i, config) for i in range(start, start + n)]


def make_stream(seed: int, config: StreamConfig = StreamConfig()) -> StreamExample:
    """Draw one stream and its questions from `seed` (deterministic)."""
    rng = np.random.default_rng([seed, len(STREAM_KINDS)])
    world = config.render_config()
    tp, seg = world.temporal_patch, config.segment_frames
    seg_groups = seg // tp
    scene = Scene(world, rng)

    # The large shape: one box for the whole stream, one object per segment (its colour never repeats across a
    # boundary).
    big = scene.place_static("big", 0, world.big_size)
    if big is None:
        raise RuntimeError("could not place the large shape; the world config is too crowded")
    scene.objects.pop()
    colours = [int(rng.integers(4))]
    for _ in range(config.segments - 1):
        colours.append(int(rng.choice([k for k in range(4) if k != colours[-1]])))
    for s, colour in enumerate(colours):
        scene.objects.append(dict(big, colour=colour, frames=list(range(s * seg, (s + 1) * seg))))
    big_index = list(range(config.segments))

    # Flashes: distinct shapes and temporal tokens; the count question's value (1..flashes) is drawn first and a
    # segment end with exactly that many flashes before it is found; the past question's flash is >= 1 segment old.
    count = int(rng.integers(1, config.flashes + 1))
    last_segment = (config.segments - 1) * seg_groups
    for _ in range(1000):
        groups = sorted(int(g) for g in rng.choice(config.groups, size=config.flashes, replace=False))
        ends = [s for s in range(1, config.segments + 1) if sum(g < s * seg_groups for g in groups) == count]
        if ends and groups[0] < last_segment:
            break
    else:
        raise RuntimeError("could not place the flashes for the count question")
    shapes = [FLASH_SHAPES[int(k)] for k in rng.permutation(len(FLASH_SHAPES))[: config.flashes]]
    flash_index = []
    for group, shape in zip(groups, shapes):
        scene.place_flash(int(rng.integers(4)), scene.flash_frames(group, 1), shape=shape)
        flash_index.append(len(scene.objects) - 1)
    scene.add_distractors()
    needed = big_index + flash_index
    video, _ = scene.render(needed=())
    token_masks = {k: torch.from_numpy(scene.objects[k]["token_pixels"].reshape(-1) >= 1) for k in needed}
    flashes = [dict(frame=scene.objects[k]["frames"][0], group=g, colour=scene.objects[k]["colour"],
                    shape=scene.objects[k]["shape"], cell=scene.objects[k]["cell"])
               for k, g in zip(flash_index, groups)]

    colour_text = " ".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(COLOUR_NAMES))
    count_text = " ".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(COUNT_OPTIONS))

    def question(kind, segment_end, prompt, answer, options_text, options, evidence):
        frame = segment_end * seg
        text = f"{prompt} {options_text}. Answer with the letter."
        return StreamQuestion(kind, frame, frame / config.fps, text, prompt, list(options), answer, evidence)

    present_end = int(rng.integers(2, config.segments + 1))  # a segment end with a segment before it
    present = question("present", present_end, QUESTIONS["static"], colours[present_end - 1], colour_text,
                       COLOUR_NAMES, [token_masks[big_index[present_end - 1]]])
    old = [i for i, g in enumerate(groups) if g < last_segment]
    asked = old[int(rng.integers(len(old)))]
    past = question("past", config.segments, QUESTIONS["query"].format(shape=shapes[asked]), flashes[asked]["colour"],
                    colour_text, COLOUR_NAMES, [token_masks[flash_index[asked]]])
    count_end = ends[int(rng.integers(len(ends)))]
    before = [k for k, g in zip(flash_index, groups) if g < count_end * seg_groups]
    counted = question("count", count_end, QUESTIONS["counting"], len(before) - 1, count_text, COUNT_OPTIONS,
                       [token_masks[k] for k in before])
    questions = sorted([present, past, counted], key=lambda q: (q.frame, STREAM_KINDS.index(q.kind)))
    info = dict(shape_colours=colours, flashes=flashes, big_box=big["box"])
    return StreamExample(video, config.fps, questions, seed, config, info)
