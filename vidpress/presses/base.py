"""The press base classes.

A press is a dataclass of knobs with one job, `select(VideoTokens, Query) -> Selection`. Calling a press on a
model, `press(model)`, returns a context manager that applies it to every video the model sees and restores the
model on exit. Score-based presses only say how good each token is and how many tokens each frame gets;
`ScorePress` turns that into a Selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import torch

from vidpress.presses.fca import FRAME_BUDGETS, frame_budgets, stage_frame_budgets, vidcom2_frame_retention
from vidpress.types import Query, Selection, VideoTokens, check_retention

#: The press registry: the name users type -> the class. Filled by `@register("name")` on each press class.
PRESSES: dict[str, type[Press]] = {}


def register(name: str):
    """Class decorator: make a press available by `name` (`vidpress.presses.get(name)`, the CLI, the bench).

    A new press is one file with `@register("name")` on its class, plus one import line in `presses/__init__.py`.
    """

    def add(cls: type[Press]) -> type[Press]:
        if name in PRESSES and PRESSES[name] is not cls:
            raise ValueError(f"press name {name!r} is already registered for {PRESSES[name].__name__}")
        PRESSES[name] = cls
        cls.name = name
        return cls

    return add


class _ChecksKnobs(type):
    """Marks a press as built once its constructor (and so every check in `__post_init__`) has run."""

    def __call__(cls, *args, **kwargs):
        press = super().__call__(*args, **kwargs)
        press.__dict__["_built"] = True
        return press


@dataclass
class Press(metaclass=_ChecksKnobs):
    """Base of every press. Subclasses override `compress`.

    Args:
        retention: fraction of video tokens to keep, in (0, 1]; 1.0 keeps every token.
        frame_budgets: None (the press's own budgets) or "vidcom2": VidCom²'s per-frame budgets (its Frame
            Compression Adjustment, `vidpress.presses.fca`), the press's own ranking inside each frame ("<name>+fca");
            only for presses with `supports_frame_budgets`. Keyword-only.

    Knobs are checked when set, at construction and after it: `press.retention = 1.5` raises the same error as
    `Press(retention=1.5)`, and a press never holds a value its checks refuse.

    The class attributes below are the press's contract with the model adapters, the CLI, the bench and the
    serving plugin; each has a default here, so a press declares only what differs.
    """

    retention: float = 0.25
    frame_budgets: str | None = field(default=None, kw_only=True)

    #: the registered name (set by `@register`); None for an unregistered press
    name: ClassVar[str | None] = None
    #: True when the press reads the question (Query); the adapter only builds one for such presses.
    query_aware: ClassVar[bool] = False
    #: True when the press acts between LLM decoder layers (a `LayerPress`) instead of before the LLM.
    acts_in_llm: ClassVar[bool] = False
    #: True for a press acting inside the LLM whose `select` also drops or merges tokens before it (FlashVID: a
    #: vision-side stage, then an in-LLM stage; HoliTom); False: a `LayerPress`'s select keeps every token.
    prunes_before_llm: ClassVar[bool] = False
    #: True when the press reads the vision encoder's attention statistics, `VideoTokens.side_features`
    #: "vision_attention" [T, M] (the [CLS] query's attention where the encoder has a [CLS], else "vision_received"),
    #: "vision_received" [T, M] (attention each token receives: mean over heads and all queries) and "vision_keys"
    #: [T, M, d]; the adapter records them while the encoder runs.
    needs_vision_stats: ClassVar[bool] = False
    #: the vision-encoder block those statistics come from (Python indexing; None: the adapter's default block).
    #: Not annotated, so that a press may make it a dataclass knob in its own field order.
    vision_layer = None
    #: True when the press needs trained weights (a policy) to drop anything; it loads them in
    #: `post_init_from_model`, and built by name without them it only works at retention 1.
    needs_policy: ClassVar[bool] = False
    #: True when the content decides how many tokens are kept, whatever the retention (MARC: whole frames of the
    #: clips its retrieval keeps), so the count cannot be fixed before the vision encoder runs (vLLM needs that).
    count_follows_content: ClassVar[bool] = False
    #: True when the press ranks tokens itself and can keep VidCom²'s per-frame budgets (`frame_budgets="vidcom2"`);
    #: a press without it says why in `no_frame_budgets_because`.
    supports_frame_budgets: ClassVar[bool] = False
    no_frame_budgets_because: ClassVar[str] = "it does not rank tokens inside frames"

    def __post_init__(self):
        self.retention = check_retention(self.retention)
        self.check_frame_budgets()

    def check_frame_budgets(self) -> None:
        """A clear error for a `frame_budgets` value this press does not take (`supports_frame_budgets`)."""
        if self.frame_budgets is not None:
            if self.frame_budgets not in FRAME_BUDGETS:
                raise ValueError(f"frame_budgets must be None (the press's own) or one of "
                                 f"{', '.join(map(repr, FRAME_BUDGETS))}; got {self.frame_budgets!r}")
            if not self.supports_frame_budgets:
                raise ValueError(f"{type(self).__name__} ({self.name}) does not take frame_budgets="
                                 f"{self.frame_budgets!r}: {self.no_frame_budgets_because}")

    def frame_retention_fca(self, tokens: VideoTokens) -> torch.Tensor | None:
        """VidCom²'s per-frame retention r[t] [T] (clamped to 1) of `tokens` at this press's retention when
        frame_budgets="vidcom2", else None."""
        if self.frame_budgets is None:
            return None
        return vidcom2_frame_retention(tokens.features, self.retention)

    def frame_budgets_fca(self, tokens: VideoTokens) -> torch.Tensor | None:
        """VidCom²'s per-frame budgets k[t] = max(1, round(r[t] * M)), LongTensor [T], when frame_budgets="vidcom2",
        else None."""
        r = self.frame_retention_fca(tokens)
        return None if r is None else frame_budgets(r, tokens.tokens_per_frame).cpu()

    def __setattr__(self, name, value):
        # A knob set on a built press goes through the class's own checks: a copy is built with the new value
        # (its `__post_init__` runs, cross-knob rules included), and the press takes the value as they normalised it.
        if self.__dict__.get("_built") and any(f.name == name and f.init for f in fields(self)):
            value = getattr(replace(self, **{name: value}), name)
        object.__setattr__(self, name, value)

    def post_init_from_model(self, model) -> None:
        """Called once with the model before the press is applied to it (`press(model)` on entry): a press that
        needs something from the model, or weights from a folder (a learned press's policy), loads it here and
        checks that it fits the model. The default needs nothing."""

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """Lowest effective retention this press reaches on a video of `num_frames` frames in an LLM of
        `num_layers` decoder layers; a lower request is met at this floor, and the PressReport says so.
        The default (0.0): every retention is reached (at least one token is always kept)."""
        return 0.0

    def token_scores(self, tokens: VideoTokens) -> torch.Tensor | None:
        """The press's own per-token scores [T, M] without a question (higher = keep first), or None for a press
        without them (the default). A caller that needs another count than the press's own (vLLM's retained count)
        fits the press's choice with these scores."""
        return None

    def select(self, tokens: VideoTokens, query: Query | None = None) -> Selection:
        """Choose the tokens of one video to keep. features [T, M, D] -> Selection over T * M."""
        if not isinstance(tokens, VideoTokens):
            raise ValueError(f"select expects VideoTokens; got {type(tokens).__name__}")
        tokens.check_finite()
        if self.retention >= 1.0:
            T, M = tokens.num_frames, tokens.tokens_per_frame
            return Selection(
                torch.arange(tokens.num_tokens, device=tokens.features.device),
                tokens.num_tokens,
                frame_budgets=torch.full((T,), M, dtype=torch.long),
            )
        return self.compress(tokens, query)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        raise NotImplementedError

    def stream_memory(self):
        """State a press keeps across the chunks of one stream (`vidpress.streaming.VideoStream` makes one per
        stream and hands it to `select_chunk`); None for presses without a memory (the default)."""
        return None

    def select_chunk(self, tokens: VideoTokens, memory) -> Selection:
        """Choose the tokens of one chunk of a stream [F, M, D], given the stream's `memory` (`stream_memory`).
        The default: the chunk alone, as `select`."""
        return self.select(tokens)

    def __call__(self, model):
        """Apply this press to `model` inside a `with` block; see `vidpress.models.apply_press`."""
        from vidpress.models import apply_press

        return apply_press(self, model)


@dataclass
class LayerPress(Press):
    """Base of presses that act inside the LLM: the video reaches the LLM whole, and from some decoder layers on
    only the frame tokens the last prompt token attends to most are processed.

    Subclasses implement `schedule`, and say where the ranking attention comes from with `scoring`:
    "previous_layer" (the layer before the stage layer, recorded while it runs; FastV) or "stage_layer" (the stage
    layer's own attention on the hidden states entering it; PDrop as released). `retention` is the share of frame
    tokens the LLM processes averaged over its layers, the same compute measure as for presses acting before the
    LLM; the layers before the first stage see every token, so a retention below (first stage layer / layers)
    cannot be reached: such a press keeps one token per sample after the stage and reports the effective retention
    it reached.

    Papers state a kept ratio r "after layer K" instead: with N layers and the first stage at K, a single stage
    processes (K + (N - K) * r) / N of the tokens on average, so r = (R * N - K) / (N - K) (see `FastVPress`,
    `PDropPress` for worked examples).
    """

    acts_in_llm: ClassVar[bool] = True
    #: with frame_budgets="vidcom2", each stage keeps VidCom²'s share of every frame (`stage_frame_budget`)
    supports_frame_budgets: ClassVar[bool] = True
    #: where the ranking attention comes from (see the class docstring)
    scoring = "previous_layer"
    #: how the ranking attention is computed (see `check_compute_dtype`); FastV/PDrop make it a knob. Like `scoring`,
    #: not annotated here, so a subclass's knob keeps its own place in the dataclass field order.
    compute_dtype = "float32"

    def schedule(self, num_layers: int) -> list[tuple[int, float]]:
        """Stages [(layer, fraction)]: from `layer` on, `fraction` of each sample's frame tokens are processed."""
        raise NotImplementedError

    def pruner(self, adapter):
        """What runs `schedule` inside the LLM while the press is applied: a `vidpress.models.layer_pruning.LayerPruner`
        (keep each stage's top tokens); a press whose stages do more (merge the dropped tokens) returns a subclass."""
        from vidpress.models.layer_pruning import LayerPruner

        return LayerPruner(self, adapter)

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """The layers before the first stage see every token: about (first stage layer) / num_layers."""
        if num_layers is None:
            return 0.0
        return self.schedule(num_layers)[0][0] / num_layers

    def stage_budget(self, fraction: float, frame_tokens: torch.Tensor) -> torch.Tensor:
        """Frame tokens kept per sample at a stage: round(fraction * frame_tokens), at least 1. [B] -> [B]."""
        return (fraction * frame_tokens.float()).round().long().clamp(min=1)

    def stage_frame_budget(self, fraction: float, frame_retention: torch.Tensor, tokens_per_frame) -> torch.Tensor:
        """With frame_budgets="vidcom2": tokens kept per frame at a stage keeping `fraction` of the video, max(1,
        round(fraction * M * r[t] / R)) and at most M. frame_retention r [G] (`frame_retention_fca`, frames of all
        videos), tokens_per_frame M int or [G] -> [G]."""
        return stage_frame_budgets(frame_retention, self.retention, fraction, tokens_per_frame)

    def fold_pruned(self, hidden: torch.Tensor, keep: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """At a stage, before the dropped tokens leave: the hidden states [B, L, D] entering the stage layer, with
        `keep` [B, L] (rows that stay) and `frame` [B, L] (rows holding frame tokens). A merging press returns them
        with the dropped frame tokens folded into kept ones; the default drops them unchanged."""
        return hidden

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        # Nothing is dropped before the LLM; the pruning happens between decoder layers.
        T, M = tokens.num_frames, tokens.tokens_per_frame
        return Selection(torch.arange(tokens.num_tokens, device=tokens.features.device), tokens.num_tokens,
                         frame_budgets=torch.full((T,), M, dtype=torch.long))


#: Accepted values of the presses' `compute_dtype` knob.
COMPUTE_DTYPES = ("float32", "model")


def check_compute_dtype(value: str) -> str:
    """Validate a press's `compute_dtype` knob.

    "float32" (vidpress's default): similarities, norms and attention scores are computed in float32, whatever the
    model's dtype, so a bf16/fp16 model keeps the same tokens as a float32 one. "model": computed in the dtype the
    features arrive in (bf16/fp16 on a half-precision model), as the authors' released code does; rounding then
    swaps a few near-tied tokens (about 6.5% of VidCom2's kept tokens in bf16). On float32 features both are equal.
    """
    if value not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {', '.join(map(repr, COMPUTE_DTYPES))} ('model' computes in "
                         f"the features' own dtype, as the released code); got {value!r}")
    return value


def in_compute_dtype(x: torch.Tensor, compute_dtype: str) -> torch.Tensor:
    """x in the dtype a press computes in: float32, or x's own (floating) dtype for compute_dtype="model"."""
    return x.float() if compute_dtype == "float32" or not x.is_floating_point() else x


def token_budget(retention: float, num_tokens: int) -> int:
    """Tokens to keep for a retention: round(R * N), at least 1."""
    return max(1, min(num_tokens, round(retention * num_tokens)))


def apportion(total: int, sizes: list[int]) -> list[int]:
    """Split `total` over parts of the given sizes in proportion (largest remainder), each in [1, size].

    Requires len(sizes) <= total; a total of sum(sizes) or more gives every part its whole size. Ties go to the
    earlier part, so results do not depend on the order of evaluation.
    """
    if total >= sum(sizes):
        return list(sizes)
    whole = sum(sizes)
    shares = [total * s / whole for s in sizes]
    counts = [min(s, max(1, int(q))) for s, q in zip(sizes, shares)]
    # Hand out (or take back) one unit at a time, by largest (smallest) remainder.
    while sum(counts) < total:
        open_parts = [j for j in range(len(sizes)) if counts[j] < sizes[j]]
        counts[max(open_parts, key=lambda j: (shares[j] - counts[j], -j))] += 1
    while sum(counts) > total:
        open_parts = [j for j in range(len(sizes)) if counts[j] > 1]
        counts[min(open_parts, key=lambda j: (shares[j] - counts[j], j))] -= 1
    return counts


def keep_top_per_frame(scores: torch.Tensor, frame_budgets: torch.Tensor) -> torch.Tensor:
    """Keep the `frame_budgets[t]` highest-scoring tokens of every frame, in one vectorised step.

    scores [T, M], frame_budgets LongTensor [T] -> sorted keep indices [sum(frame_budgets)] into T * M.
    Ties go to the lower index (stable sort), so results do not depend on the backend.
    """
    T, M = scores.shape
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank_kept = torch.arange(M, device=scores.device)[None, :] < frame_budgets.to(scores.device)[:, None]
    keep = torch.zeros(T, M, dtype=torch.bool, device=scores.device).scatter_(1, order, rank_kept)
    return keep.flatten().nonzero().squeeze(1)


def average_into_kept(features: torch.Tensor, keep: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Merged features of the kept tokens: each the mean of itself and every token merged into it.

    features [N, D]; keep sorted LongTensor [K]; target LongTensor [N], the kept token (a flat index in `keep`) that
    each token goes to (kept tokens point to themselves). Returns [K, D] in the features' dtype. Computed as
    kept + mean of (merged - kept), so identical tokens merge to exactly their own value.
    """
    N = features.shape[0]
    slot = torch.full((N,), -1, dtype=torch.long, device=features.device)
    slot[keep] = torch.arange(keep.numel(), device=features.device)
    kept = features[keep].float()
    dropped = (slot < 0).nonzero().squeeze(1)
    if dropped.numel() == 0:
        return features[keep]
    into = slot[target[dropped]]
    counts = torch.bincount(into, minlength=keep.numel()).to(kept.dtype) + 1  # +1: the kept token itself
    deltas = torch.zeros_like(kept).index_add_(0, into, features[dropped].float() - kept[into])
    return (kept + deltas / counts[:, None]).to(features.dtype)


def keep_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep the `budget` highest-scoring tokens of the whole video. scores [T, M] -> sorted indices [budget]."""
    flat = scores.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[:budget]
    return order.sort().values


@dataclass
class ScorePress(Press):
    """A press defined by a score per token and, optionally, a token budget per frame.

    Subclasses implement `rank`, returning scores [T, M] (higher = keep first) and either per-frame budgets
    (LongTensor [T], each in [0, M]) or None to keep the top round(R * T * M) tokens of the whole video. With
    frame_budgets="vidcom2" the scores are kept and VidCom²'s per-frame budgets replace the press's own.
    """

    supports_frame_budgets: ClassVar[bool] = True

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def token_scores(self, tokens: VideoTokens) -> torch.Tensor | None:
        """`rank`'s scores, in float32; None for a press that reads the question."""
        return None if self.query_aware else self.rank(tokens, None)[0].float()

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        scores, budgets = self.rank(tokens, query)
        if self.frame_budgets is not None:
            budgets = self.frame_budgets_fca(tokens)
        if budgets is None:
            keep = keep_top(scores, token_budget(self.retention, tokens.num_tokens))
            budgets = torch.bincount(keep // tokens.tokens_per_frame, minlength=tokens.num_frames)
        else:
            keep = keep_top_per_frame(scores, budgets)
        return Selection(keep, tokens.num_tokens, frame_budgets=budgets.cpu())
