"""Uniform baseline: keep every token of evenly spaced frames, i.e. plain frame sampling at the same budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import ScorePress, register
from vidpress.types import Query, VideoTokens


@register("uniform")
@dataclass
class UniformPress(ScorePress):
    """Keep whole frames, evenly spaced, as many as the token budget buys: max(1, round(R * T)) frames.

    The effective retention is (kept frames) / T, which can differ from R when R * T is not a whole number.
    """

    supports_frame_budgets = False
    no_frame_budgets_because = ("it keeps whole, evenly spaced frames: choosing frames is the whole method, and there "
                                "is no ranking inside a frame to keep")

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """One whole frame is always kept: 1 / num_frames."""
        return 1 / num_frames

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, torch.Tensor]:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        num_frames = max(1, min(T, round(self.retention * T)))
        # Centre of each of num_frames equal segments, the usual "uniform frame sampling".
        frames = ((torch.arange(num_frames) + 0.5) * T / num_frames).floor().long()
        budgets = torch.zeros(T, dtype=torch.long)
        budgets[frames] = M
        return torch.zeros(T, M, device=tokens.features.device), budgets
