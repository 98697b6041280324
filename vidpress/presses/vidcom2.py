"""VidCom² — Video Compression Commander (Liu et al., arXiv 2505.14454, EMNLP 2025).

Frames that differ most from the whole video get a larger share of the budget (softmax over frame uniqueness);
inside each frame the tokens least similar to both the video centre and the frame centre are kept.
Training-free, query-agnostic, acts after the projector, needs no attention weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vidpress.presses import fca
from vidpress.presses.base import ScorePress, check_compute_dtype, in_compute_dtype, register
from vidpress.types import Query, VideoTokens, check_number


@register("vidcom2")
@dataclass
class VidCom2Press(ScorePress):
    """VidCom² token selection (the released rule by default; `similarity="cosine"` is the paper's variant).

    Args:
        retention: R, fraction of video tokens kept; frame budgets average to R before clamping.
        tau: softmax temperature of the frame budgets (0.01 released).
        alphas: bandwidths of the multi-scale Gaussian kernel sum_a exp(-||x - c||^2 / (2a)).
        channel_ratio: share of channels, lowest variance first, used for similarity (0.5 released).
        similarity: "gaussian" (released code) or "cosine" (paper).
        compute_dtype: "float32" (default) or "model": the similarities in the features' own dtype (bf16/fp16),
            as the released code; in bf16 that swaps about 6.5% of the kept tokens (see
            `vidpress.presses.base.check_compute_dtype`).

    Follows the released code exactly in float32 (and the released precision with compute_dtype="model").
    """

    tau: float = fca.TAU
    alphas: tuple[float, ...] = fca.ALPHAS
    channel_ratio: float = fca.CHANNEL_RATIO
    similarity: str = "gaussian"
    compute_dtype: str = "float32"

    supports_frame_budgets = False
    no_frame_budgets_because = "these budgets are VidCom²'s own (it always uses them)"

    def __post_init__(self):
        super().__post_init__()
        check_number("tau", self.tau, "> 0 (a number: the softmax temperature)", lambda v: v > 0)
        accepted = "a non-empty list of positive kernel bandwidths"
        values = [] if isinstance(self.alphas, str) or not isinstance(self.alphas, Iterable) else list(self.alphas)
        if not values:
            raise ValueError(f"alphas must be {accepted}; got {self.alphas!r}")
        self.alphas = tuple(float(check_number("alphas", a, accepted, lambda v: v > 0)) for a in values)
        check_number("channel_ratio", self.channel_ratio, "a number in (0, 1]", lambda v: 0 < v <= 1)
        if self.similarity not in ("gaussian", "cosine"):
            raise ValueError(f"similarity must be 'gaussian' or 'cosine'; got {self.similarity!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    def similarities(self, tokens: VideoTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarity of every token to the video centre (sv) and to its frame centre (sf), both [T, M]."""
        return fca.similarities(in_compute_dtype(tokens.features, self.compute_dtype), self.alphas,
                                self.channel_ratio, self.similarity)

    def frame_retention(self, tokens: VideoTokens) -> torch.Tensor:
        """Unclamped per-frame retention r[t] = R * (1 + p[t] - 1/T), [T]; it averages to R."""
        sv, _ = self.similarities(tokens)
        return self._frame_retention(sv)

    def _frame_retention(self, sv: torch.Tensor) -> torch.Tensor:
        return fca.frame_retention(sv, self.retention, self.tau)

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, torch.Tensor]:
        sv, sf = self.similarities(tokens)
        budgets = fca.frame_budgets(self._frame_retention(sv), tokens.tokens_per_frame)
        return -(sv + sf).float(), budgets  # most distinct from the video and frame centres first

