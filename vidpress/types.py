"""The few types every part of vidpress shares: VideoTokens in, Selection out, Query on the side."""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class VideoTokens:
    """One video's visual tokens as the LLM would receive them.

    Args:
        features: float tensor [T, M, D]: T temporal groups ("frames"), M tokens per frame, LLM width D.
        grid: (t, h, w) after spatial/temporal merging; t == T and h * w == M.
        timestamps: optional [T] seconds of each frame.
        side_features: extra per-token tensors [T, M, *] that must be pruned with the same index
            (e.g. Qwen3-VL DeepStack features, keyed "deepstack.0", ...).
    """

    features: torch.Tensor
    grid: tuple[int, int, int]
    timestamps: torch.Tensor | None = None
    side_features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.features, torch.Tensor) or self.features.dim() != 3:
            shape = tuple(self.features.shape) if isinstance(self.features, torch.Tensor) else type(self.features)
            raise ValueError(f"features must be a tensor [T, M, D] (3 dims); got {shape}")
        if not self.features.is_floating_point():
            raise ValueError(f"features must be a floating-point tensor; got dtype {self.features.dtype}")
        if self.features.is_meta:
            raise ValueError("features are on the meta device (shapes without values); presses need real values: "
                             "load the model's weights (not on device 'meta') before pressing")
        T, M, _ = self.features.shape
        if T == 0 or M == 0:
            raise ValueError("features must hold at least one frame and one token per frame; "
                             f"got shape {tuple(self.features.shape)}")
        grid = _grid(self.grid)
        if grid is None or grid[0] != T or grid[1] * grid[2] != M:
            raise ValueError(f"grid must be three integers (t, h, w) >= 1 with t == T={T} and h * w == M={M}; "
                             f"got {self.grid!r}")
        self.grid = grid
        if self.timestamps is not None and self.timestamps.shape != (T,):
            raise ValueError(f"timestamps must have shape [T]=[{T}]; got {tuple(self.timestamps.shape)}")
        for name, side in self.side_features.items():
            if side.shape[:2] != (T, M):
                raise ValueError(f"side feature {name!r} must have shape [T, M, ...]=[{T}, {M}, ...]; "
                                 f"got {tuple(side.shape)}")

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0] * self.features.shape[1]

    def check_finite(self) -> None:
        # A sum is non-finite whenever an element is (or, rarely, on overflow): one cheap pass decides.
        if not torch.isfinite(self.features.sum()) and not torch.isfinite(self.features).all():
            raise ValueError("features contain NaN or Inf values; presses accept finite features only")


def _grid(grid) -> tuple[int, int, int] | None:
    """(t, h, w) as ints when `grid` is three integers >= 1 (ints, numpy or 0-dim integer tensors); else None."""
    try:
        sizes = tuple(operator.index(g) for g in grid if not isinstance(g, (bool, np.bool_)))
    except TypeError:
        return None
    return sizes if len(sizes) == 3 == len(grid) and min(sizes) >= 1 else None


@dataclass
class Query:
    """The question a video is asked about, for query-aware presses.

    Args:
        token_ids: [L] the sample's text token ids (visual placeholders and padding removed).
        embeddings: [L, D] their input embeddings in the LLM's space.
        text: the decoded text, when known.
        question_mask: optional [L] bool over token_ids: the user's question alone (no system prompt, role tags
            or generation prompt); None: unknown, every token counts.
        position_ids: optional [L] or [R, L] positions of `token_ids` in the full sequence, as the VLM numbers
            them (Qwen: M-RoPE rows), for presses that rebuild the whole prompt (CaCoVID's policy).
        video_position_ids: optional [N] or [R, N] positions of this video's N = T * M frame tokens.
        video_offset: with these, how many of `token_ids` come before the video's frame tokens.
    """

    token_ids: torch.Tensor
    embeddings: torch.Tensor | None = None
    text: str | None = None
    question_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    video_position_ids: torch.Tensor | None = None
    video_offset: int | None = None


@dataclass
class Selection:
    """What a press keeps of one video.

    Args:
        keep_indices: sorted LongTensor [K] of kept tokens, indices into the flattened T * M tokens.
        num_tokens: T * M, the token count before compression.
        features: optional [K, D] replacement features (merging presses); None keeps the original features.
        frame_budgets: optional LongTensor [T], tokens kept per frame.
    """

    keep_indices: torch.Tensor
    num_tokens: int
    features: torch.Tensor | None = None
    frame_budgets: torch.Tensor | None = None

    def __post_init__(self):
        k = self.keep_indices
        if k.dim() != 1 or k.dtype != torch.long:
            raise ValueError(f"keep_indices must be a 1-D LongTensor; got {k.dtype} with shape {tuple(k.shape)}")
        if k.numel() == 0:
            raise ValueError("a Selection must keep at least one token")
        if k.numel() > 1 and not bool((k[1:] > k[:-1]).all()):
            raise ValueError("keep_indices must be sorted ascending without duplicates")
        if int(k[0]) < 0 or int(k[-1]) >= self.num_tokens:
            raise ValueError(f"keep_indices must lie in [0, {self.num_tokens}); got [{int(k[0])}, {int(k[-1])}]")
        if self.features is not None and self.features.shape[0] != k.numel():
            raise ValueError(f"features must have one row per kept token ({k.numel()}); "
                             f"got {tuple(self.features.shape)}")

    @property
    def num_kept(self) -> int:
        return self.keep_indices.numel()

    @property
    def retention(self) -> float:
        """Effective retention: kept tokens / all tokens."""
        return self.num_kept / self.num_tokens


def check_retention(retention: float) -> float:
    """Validate a retention ratio; accepted: a number in (0, 1] (not a bool: True would read as 1.0)."""
    if isinstance(retention, (bool, np.bool_)):
        raise ValueError(f"retention must be a number in (0, 1]; got the bool {retention!r}")
    try:
        value = float(retention)
    except (TypeError, ValueError):
        raise ValueError(f"retention must be a number in (0, 1]; got {retention!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"retention must be in (0, 1] (1.0 keeps every token); got {retention!r}")
    return value


def check_number(name: str, value, accepted: str, within=lambda v: True, integer: bool = False):
    """Validate a numeric knob: a real number (an integer with integer=True), not a bool or NaN, for which
    `within(value)` holds. The error names the knob, the value and what is `accepted` ("a number > 0").
    Returns the value unchanged."""
    kind = numbers.Integral if integer else numbers.Real
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, kind) or math.isnan(value)
            or not within(value)):
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    return value
