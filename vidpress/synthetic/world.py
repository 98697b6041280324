"""A procedural, seeded video-QA world where the choice of visual tokens decides the answer.

Every example is a short clip (16 frames of 112x112 by default) of coloured shapes on a dark, slightly noisy
background, one multiple-choice question about it and, for each event the question needs, a pixel mask of
that event (its "evidence"). Six question families stress token choice in different ways:

=============  ========================================================================================
brief_event    one flash visible in 1-2 frames of an otherwise static clip; "what colour was it?"
               (frame uniqueness: a press that keeps few tokens of that frame loses it)
static         a large shape visible in every frame; "what colour is the large shape?"
               (redundancy: spending the budget on distinctive tokens must not lose it)
small_detail   a tiny square in one place, in every frame; "what colour is the tiny square?"
               (within-frame choice: 1-4 of a frame's 16 tokens hold it, among distractors)
order          two flashes at different times; "which colour flashed first?" (both are needed)
counting       1-4 flashes at different times; "how many flashes?" (every flash is needed)
query          four flashes (one per quadrant) in the four answer colours and four shapes, at different
               times; "what colour was the flashing ring?" (retrieval of one event among similar ones)
=============  ========================================================================================

Shortcuts are removed on purpose: every clip holds one static distractor shape in each answer colour, so
"which colours appear anywhere" says nothing; static and small_detail clips also show a flash of a random
colour, and query clips show four flashes in the four colours, so "the colour of any flash" says nothing either.
A flash is visible in exactly one frame of each temporal pair it touches (a 2-frame flash spans frames 2t+1 and
2t+2), so it is distinguishable from a static shape inside one temporal patch, the unit a Qwen-VL style vision
tower sees. Every flash lies inside one 28x28 cell.

    examples = make_split("test", 600)            # example i of a split is always the same
    keeps = [press.select(tokens).keep_indices for tokens in ...]
    evidence_recall(keeps, examples)              # share of examples whose kept tokens touch every needed event
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "FLASH_SHAPES",
    "QUADRANTS",
    "QUESTION_FAMILIES",
    "Example",
    "WorldConfig",
    "evidence_hits",
    "evidence_recall",
    "known_families",
    "make_example",
    "make_split",
    "register_family",
]

QUESTION_FAMILIES = ("brief_event", "static", "small_detail", "order", "counting", "query")

#: The four answer colours (RGB) and their names, in option order.
COLOUR_NAMES = ("red", "green", "blue", "yellow")
COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40]], dtype=np.uint8)
COUNT_OPTIONS = ("1", "2", "3", "4")
#: Flash shapes; the query family names the asked flash by its shape.
FLASH_SHAPES = ("square", "ring", "plus", "bar")
#: Quadrant names (row-major over the 2x2 quadrant grid) for query_by="position".
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
LETTERS = "ABCD"

QUESTIONS = {
    "brief_event": "What colour was the brief flash?",
    "static": "What colour is the large shape?",
    "small_detail": "What colour is the tiny square?",
    "order": "Which colour flashed first?",
    "counting": "How many flashes were there?",
    "query": "What colour was the flashing {shape}?",
    "query_position": "What colour was the flash in the {quadrant}?",
    "long": "What shape was the {colour} flash?",
}

#: Families drawn by their own modules (`vidpress.synthetic.long`): name -> (make(seed, config) -> Example, config
#: type). They are asked for by name (`make_split(..., families=("long",))`); the default split stays the six above.
EXTRA_FAMILIES: dict = {}


def register_family(name: str, make, config_type: type) -> None:
    """Register a family drawn by `make(seed, config) -> Example`, with a default-constructible `config_type`."""
    if name in QUESTION_FAMILIES or name in EXTRA_FAMILIES:
        raise ValueError(f"family {name!r} is already defined")
    EXTRA_FAMILIES[name] = (make, config_type)


def known_families() -> tuple[str, ...]:
    """Every family make_example draws: the six short ones, then the registered ones."""
    return QUESTION_FAMILIES + tuple(EXTRA_FAMILIES)


# Seeds of split s, example i: SPLIT_BASE[s] + i. Splits stay disjoint for up to 10M examples each.
SPLIT_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000}
_SPLIT_SIZE = 10_000_000
_SHAPES = ("square", "disk", "diamond")


@dataclass(frozen=True)
class WorldConfig:
    """How clips are drawn. Sizes are sides in pixels, drawn uniformly from the inclusive (low, high) range.

    frames, size: clip length and frame side (size must be a multiple of cell).
    cell: pixel side of one merged visual token (patch 14 x spatial merge 2 for Qwen-VL); flashes lie inside one.
    temporal_patch: frames per temporal token; a flash is visible in exactly one frame of each pair it touches.
    big_size / medium_size / small_size / flash_size: sides of the large shape (static), the static
        distractors, the tiny square (small_detail) and the flashes.
    brief_flash_frames: possible lengths (frames) of the brief_event flash; other families use 1-frame flashes.
    distractors: static distractor shapes per clip; the first four take the four answer colours, in a random
        order, so that colour presence never answers a question.
    distractor_flashes: extra flashes of a random colour in static and small_detail clips, to lure presses
        that chase distinctive frames away from the asked object.
    max_count: the counting family asks about 1..max_count flashes (at most 4: the options are 1-4).
    min_order_gap: the order family's two flashes are at least this many temporal tokens apart.
    query_events: flashes in a query clip, one per quadrant (2-4), each with its own colour, shape and
        temporal token.
    query_by: how the query question names the asked flash: "shape" (its shape, FLASH_SHAPES) or "position"
        (its quadrant, QUADRANTS; much harder for a small model: it needs absolute positions).
    noise: amplitude of the per-frame pixel noise (the background texture itself is static).
    shuffle_options: False: options always in the fixed order (red, green, blue, yellow / 1-4), the answer
        letter varies with the answer; True: colour options in random order.
    """

    frames: int = 16
    size: int = 112
    cell: int = 28
    temporal_patch: int = 2
    big_size: tuple[int, int] = (38, 46)
    medium_size: tuple[int, int] = (12, 16)
    small_size: tuple[int, int] = (6, 8)
    flash_size: tuple[int, int] = (14, 20)
    brief_flash_frames: tuple[int, ...] = (1, 2)
    distractors: int = 4
    distractor_flashes: int = 1
    max_count: int = 4
    min_order_gap: int = 1
    query_events: int = 4
    query_by: str = "shape"
    noise: int = 3
    shuffle_options: bool = False

    def __post_init__(self):
        if self.size % self.cell or self.frames % self.temporal_patch:
            raise ValueError("size must be a multiple of cell and frames a multiple of temporal_patch")
        if self.flash_size[1] > self.cell - 2:
            raise ValueError(f"flash_size must fit inside one cell with a margin (<= {self.cell - 2})")
        if not 1 <= self.max_count <= 4 or not 2 <= self.query_events <= 4:
            raise ValueError("max_count must be in 1..4 and query_events in 2..4")
        if self.query_by not in ("shape", "position"):
            raise ValueError(f"query_by must be 'shape' or 'position'; got {self.query_by!r}")
        groups = self.frames // self.temporal_patch
        if groups < max(self.max_count, self.query_events, self.min_order_gap + 1):
            raise ValueError(f"{groups} temporal tokens are too few for the counting/query/order settings")

    @property
    def num_groups(self) -> int:
        return self.frames // self.temporal_patch


@dataclass
class Example:
    """One clip, its question and the pixels that answer it.

    video: uint8 [F, H, W, 3]. question: text with lettered options ("... A. red B. green C. blue D. yellow.
    Answer with the letter."). options: the 4 option texts; answer: index of the right one. family: one of
    QUESTION_FAMILIES. evidence: one bool [F, H, W] mask per event the answer needs (every counted flash for
    counting, both flashes for order, the single asked object otherwise). seed: what the clip was drawn from.
    """

    video: np.ndarray
    question: str
    options: list[str]
    answer: int
    family: str
    evidence: list[np.ndarray]
    seed: int
    prompt: str = ""  # the question without options
    info: dict = field(default_factory=dict)  # renderer facts (per-token labels for training, event times)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    def evidence_tokens(self, temporal_patch: int = 2, cell: int = 28, min_pixels: int = 1) -> list[torch.Tensor]:
        """Per needed event, a bool mask [T * M] over merged tokens (T = F // temporal_patch, M = (H//cell)*(W//cell)).

        Token (t, i, j), at flat index t * M + i * (W // cell) + j, is evidence when the event covers at least
        `min_pixels` pixels of frames [t * tp, (t + 1) * tp) inside cell (i, j).
        """
        return [_token_mask(mask, temporal_patch, cell, min_pixels) for mask in self.evidence]

    def write_mp4(self, path, fps: float = 8.0) -> Path:
        """Write the clip as an H.264 mp4 (PyAV, yuv420p, near-lossless) and return its path."""
        import av

        path = Path(path)
        frames = np.ascontiguousarray(self.video)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=_fraction(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "12"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path


def _fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1000)


def _token_counts(mask: np.ndarray, temporal_patch: int, cell: int) -> np.ndarray:
    """Pixels of a bool mask [F, H, W] per merged token: int [F // temporal_patch, H // cell, W // cell]."""
    F, H, W = mask.shape
    if F % temporal_patch or H % cell or W % cell:
        raise ValueError(f"mask {mask.shape} does not tile into temporal_patch={temporal_patch}, cell={cell}")
    return mask.reshape(F // temporal_patch, temporal_patch, H // cell, cell, W // cell, cell).sum(axis=(1, 3, 5))


def _token_mask(mask: np.ndarray, temporal_patch: int, cell: int, min_pixels: int) -> torch.Tensor:
    return torch.from_numpy(_token_counts(mask, temporal_patch, cell).reshape(-1) >= min_pixels)


def evidence_hits(selection_keep_indices: torch.Tensor, example: Example, **evidence_kwargs) -> bool:
    """True when the kept tokens (indices into T * M) include at least one token of every needed event."""
    keep = torch.as_tensor(selection_keep_indices).long().flatten().cpu()
    for event in example.evidence_tokens(**evidence_kwargs):
        if keep.numel() and int(keep.max()) >= event.numel():
            raise ValueError(f"keep index {int(keep.max())} out of range for {event.numel()} tokens")
        if not bool(event[keep].any()):
            return False
    return True


def evidence_recall(keeps: list[torch.Tensor], examples: list[Example], **kw) -> float:
    """Share of examples whose kept tokens touch every event their answer needs (model-free; 1.0 = nothing lost)."""
    if len(keeps) != len(examples):
        raise ValueError(f"got {len(keeps)} selections for {len(examples)} examples")
    if not examples:
        raise ValueError("evidence_recall needs at least one example")
    return sum(evidence_hits(k, e, **kw) for k, e in zip(keeps, examples)) / len(examples)


# ---------------------------------------------------------------------------------------------- splits


def make_split(
    split: str, n: int, *, families=QUESTION_FAMILIES, config: WorldConfig = WorldConfig(), start: int = 0
) -> list[Example]:
    """Examples start .. start+n-1 of `split` ("train", "val" or "test").

    Example i is drawn from seed base(split) + i and asks family families[i % len(families)], so the same
    (split, i, families, config) always gives the same example, and the splits never share a seed.
    """
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {tuple(SPLIT_BASE)}; got {split!r}")
    families = tuple(families)
    unknown = [f for f in families if f not in known_families()]
    if not families or unknown:
        raise ValueError(f"families must be a non-empty subset of {known_families()}; got {families}")
    if start < 0 or n < 0 or start + n > _SPLIT_SIZE:
        raise ValueError(f"examples [{start}, {start + n}) are outside a split's {_SPLIT_SIZE} seeds")
    return [
        make_example(families[i % len(families)], SPLIT_BASE[split] + i, config) for i in range(start, start + n)
    ]


def make_example(family: str, seed: int, config: WorldConfig = WorldConfig()) -> Example:
    """Draw one example of `family` from `seed` (deterministic). A registered family (`register_family`) is drawn
    with `config` when it is of the family's config type, with that type's default when `config` is the default
    WorldConfig."""
    if family in EXTRA_FAMILIES:
        make, config_type = EXTRA_FAMILIES[family]
        if config == WorldConfig():
            config = config_type()
        elif not isinstance(config, config_type):
            raise ValueError(f"family {family!r} is drawn with a {config_type.__name__}; got {type(config).__name__}")
        return make(seed, config)
    if family not in QUESTION_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {known_families()}")
    rng = np.random.default_rng([seed, QUESTION_FAMILIES.index(family)])
    scene = Scene(config, rng)
    answer_value, prompt, needed, option_kind = _FAMILY_BUILDERS[family](scene, rng, config)
    scene.add_distractors()
    if option_kind == "count":
        options, answer = list(COUNT_OPTIONS), answer_value
    else:
        order = rng.permutation(4) if config.shuffle_options else np.arange(4)
        options = [COLOUR_NAMES[k] for k in order]
        answer = int(np.flatnonzero(order == answer_value)[0])
    text = " ".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))
    question = f"{prompt} {text}. Answer with the letter."
    video, evidence = scene.render(needed)
    info = dict(objects=scene.objects, needed=needed)
    return Example(video, question, options, answer, family, evidence, seed, prompt=prompt, info=info)


# ---------------------------------------------------------------------------------------------- renderer


class Scene:
    """Objects on a static textured background. Each object: kind, colour index, box, shape, frames."""

    def __init__(self, config: WorldConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        self.objects: list[dict] = []

    # -- placement ---------------------------------------------------------------------------------------
    def _free(self, box, frames=None) -> bool:
        """Whether `box` keeps a 2 px gap to every object (only to flashes sharing a frame, for a flash)."""
        y0, x0, y1, x1 = box
        for obj in self.objects:
            if frames is not None and obj["kind"] == "flash" and not set(frames) & set(obj["frames"]):
                continue  # a flash may share pixels with a flash at other times; static objects avoid all
            oy0, ox0, oy1, ox1 = obj["box"]
            if y0 < oy1 + 2 and oy0 < y1 + 2 and x0 < ox1 + 2 and ox0 < x1 + 2:
                return False
        return True

    def place_static(self, kind: str, colour: int, side_range, shape: str | None = None):
        c = self.config
        for _ in range(200):
            side = int(self.rng.integers(side_range[0], side_range[1] + 1))
            y, x = (int(v) for v in self.rng.integers(1, c.size - side, size=2))
            box = (y, x, y + side, x + side)
            if self._free(box):
                shape = shape or str(self.rng.choice(_SHAPES))
                obj = dict(kind=kind, colour=colour, box=box, shape=shape, frames=list(range(c.frames)))
                self.objects.append(obj)
                return obj
        return None  # crowded: leave it out (only distractors can end up here)

    def place_flash(self, colour: int, frames: list[int], cells=None, shape: str | None = None):
        """A flash of `shape` (default: a random one of FLASH_SHAPES) inside one cell (drawn from `cells`,
        default any), visible in `frames`."""
        c = self.config
        shape = shape or FLASH_SHAPES[int(self.rng.integers(len(FLASH_SHAPES)))]
        per_side = c.size // c.cell
        cells = cells if cells is not None else [(i, j) for i in range(per_side) for j in range(per_side)]
        for _ in range(400):
            i, j = cells[int(self.rng.integers(len(cells)))]
            side = int(self.rng.integers(c.flash_size[0], c.flash_size[1] + 1))
            y = i * c.cell + 1 + int(self.rng.integers(0, c.cell - 1 - side))
            x = j * c.cell + 1 + int(self.rng.integers(0, c.cell - 1 - side))
            box = (y, x, y + side, x + side)
            if self._free(box, frames):
                obj = dict(kind="flash", colour=colour, box=box, shape=shape, frames=sorted(frames), cell=(i, j))
                self.objects.append(obj)
                return obj
        raise RuntimeError("could not place a flash; the world config is too crowded")

    def flash_frames(self, group: int, length: int) -> list[int]:
        """Frames of a flash in temporal token `group`: 1 frame (either of the pair) or 2 frames straddling
        groups `group` and `group + 1`. Either way each temporal pair sees it in exactly one of its frames."""
        tp = self.config.temporal_patch
        if length == 1:
            return [group * tp + int(self.rng.integers(tp))]
        return [group * tp + tp - 1, (group + 1) * tp]

    def add_distractors(self):
        c = self.config
        colours = [int(k) for k in self.rng.permutation(4)]
        colours += [int(k) for k in self.rng.integers(0, 4, size=max(0, c.distractors - 4))]
        for colour in colours[: c.distractors]:
            self.place_static("medium", colour, c.medium_size)

    # -- drawing -----------------------------------------------------------------------------------------
    def render(self, needed=()) -> tuple[np.ndarray, list[np.ndarray]]:
        """The clip uint8 [F, H, W, 3] and the full pixel masks bool [F, H, W] of the objects in `needed`."""
        c, rng = self.config, self.rng
        base = rng.integers(8, 40, size=(1, 1, 3), dtype=np.int16)
        texture = base + rng.integers(0, 14, size=(c.size, c.size, 3), dtype=np.int16)
        if c.noise:
            video = texture[None] + rng.integers(-c.noise, c.noise + 1, size=(c.frames, c.size, c.size, 3),
                                                 dtype=np.int8)
            video = np.clip(video, 0, 255).astype(np.uint8)
        else:
            video = np.repeat(texture[None].astype(np.uint8), c.frames, axis=0)
        tp, per_side = c.temporal_patch, c.size // c.cell
        masks = {}
        for k, obj in enumerate(self.objects):
            y0, x0, y1, x1 = obj["box"]
            shape_mask = _shape(obj["shape"], y1 - y0)
            for f in obj["frames"]:
                video[f, y0:y1, x0:x1][shape_mask] = COLOURS[obj["colour"]]
            plane = np.zeros((c.size, c.size), dtype=bool)
            plane[y0:y1, x0:x1] = shape_mask
            # Pixels of the object per merged token [T, H // cell, W // cell]: compact per-token facts.
            per_cell = plane.reshape(per_side, c.cell, per_side, c.cell).sum(axis=(1, 3))
            frames_per_group = np.bincount(np.asarray(obj["frames"]) // tp, minlength=c.num_groups)
            obj["token_pixels"] = frames_per_group[:, None, None] * per_cell[None]
            if k in needed:
                mask = np.zeros((c.frames, c.size, c.size), dtype=bool)
                mask[obj["frames"]] = plane
                masks[k] = mask
        return video, [masks[k] for k in needed]


def _shape(name: str, side: int) -> np.ndarray:
    r = (np.arange(side) + 0.5 - side / 2) / (side / 2)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    if name == "disk":
        return yy**2 + xx**2 <= 1.0
    if name == "diamond":
        return np.abs(yy) + np.abs(xx) <= 1.0
    if name == "ring":  # a hollow square, border a quarter of the side
        return np.maximum(np.abs(yy), np.abs(xx)) > 0.5
    if name == "plus":  # two crossing bars a third of the side thick
        return (np.abs(yy) <= 1 / 3) | (np.abs(xx) <= 1 / 3)
    if name == "bar":  # one horizontal bar a third of the side thick
        return np.abs(yy) <= 1 / 3
    return np.ones((side, side), dtype=bool)


# ---------------------------------------------------------------------------------------------- families
# Each builder places the objects the question is about and returns
# (answer value: colour index or count - 1, question text, indices of needed objects, option kind).


def _distinct_groups(rng, count: int, num_groups: int, min_gap: int = 1) -> list[int]:
    for _ in range(1000):
        groups = sorted(int(g) for g in rng.choice(num_groups, size=count, replace=False))
        if all(b - a >= min_gap for a, b in zip(groups, groups[1:])):
            return groups
    raise RuntimeError("cannot space the flashes out in time; lower min_order_gap")


def _distractor_flashes(scene: Scene, rng, avoid_groups=()):
    for _ in range(scene.config.distractor_flashes):
        groups = [g for g in range(scene.config.num_groups) if g not in avoid_groups]
        group = int(rng.choice(groups))
        scene.place_flash(int(rng.integers(4)), scene.flash_frames(group, 1))


def _brief_event(scene: Scene, rng, c: WorldConfig):
    colour = int(rng.integers(4))
    length = int(rng.choice(c.brief_flash_frames))
    group = int(rng.integers(c.num_groups - (1 if length == 2 else 0)))
    scene.place_flash(colour, scene.flash_frames(group, length))
    return colour, QUESTIONS["brief_event"], [0], "colour"


def _static(scene: Scene, rng, c: WorldConfig):
    colour = int(rng.integers(4))
    scene.place_static("big", colour, c.big_size)
    _distractor_flashes(scene, rng)
    return colour, QUESTIONS["static"], [0], "colour"


def _small_detail(scene: Scene, rng, c: WorldConfig):
    colour = int(rng.integers(4))
    scene.place_static("small", colour, c.small_size, shape="square")
    _distractor_flashes(scene, rng)
    return colour, QUESTIONS["small_detail"], [0], "colour"


def _order(scene: Scene, rng, c: WorldConfig):
    first, second = (int(k) for k in rng.choice(4, size=2, replace=False))
    g1, g2 = _distinct_groups(rng, 2, c.num_groups, c.min_order_gap)
    scene.place_flash(first, scene.flash_frames(g1, 1))
    scene.place_flash(second, scene.flash_frames(g2, 1))
    return first, QUESTIONS["order"], [0, 1], "colour"


def _counting(scene: Scene, rng, c: WorldConfig):
    count = int(rng.integers(1, c.max_count + 1))
    for group in _distinct_groups(rng, count, c.num_groups):
        scene.place_flash(int(rng.integers(4)), scene.flash_frames(group, 1))
    return count - 1, QUESTIONS["counting"], list(range(count)), "count"


def _query(scene: Scene, rng, c: WorldConfig):
    half = c.size // c.cell // 2
    quadrants = [int(q) for q in rng.permutation(4)[: c.query_events]]
    colours = [int(k) for k in rng.permutation(4)]
    shapes = [FLASH_SHAPES[int(k)] for k in rng.permutation(4)]
    groups = [int(g) for g in rng.permutation(_distinct_groups(rng, c.query_events, c.num_groups))]
    for q, colour, shape, group in zip(quadrants, colours, shapes, groups):
        qi, qj = divmod(q, 2)
        cells = [(qi * half + i, qj * half + j) for i in range(half) for j in range(half)]
        scene.place_flash(colour, scene.flash_frames(group, 1), cells=cells, shape=shape)
    asked = int(rng.integers(c.query_events))
    if c.query_by == "shape":
        prompt = QUESTIONS["query"].format(shape=shapes[asked])
    else:
        prompt = QUESTIONS["query_position"].format(quadrant=QUADRANTS[quadrants[asked]])
    return colours[asked], prompt, [asked], "colour"


_FAMILY_BUILDERS = {
    "brief_event": _brief_event,
    "static": _static,
    "small_detail": _small_detail,
    "order": _order,
    "counting": _counting,
    "query": _query,
}
