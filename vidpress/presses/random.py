"""Random baseline: keep a uniformly random subset of round(R * T * M) tokens (seeded, reproducible)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import ScorePress, register
from vidpress.types import Query, VideoTokens, check_number


@register("random")
@dataclass
class RandomPress(ScorePress):
    """Keep a uniform random subset of the video's tokens.

    Args:
        retention: fraction of tokens kept.
        seed: every call with the same seed and token count keeps the same indices.
    """

    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_number("seed", self.seed, "an integer (the random generator's seed)", integer=True)

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, None]:
        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(tokens.num_frames, tokens.tokens_per_frame, generator=generator)
        return scores.to(tokens.features.device), None
