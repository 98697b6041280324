"""A press that keeps what was decided beforehand: the tool for training loops that choose the tokens themselves
(a sampled combination, a training-time drop) and need the model to see exactly that. Not registered: it is not a
compression method."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidpress.presses.base import Press
from vidpress.types import Query, Selection, VideoTokens


@dataclass
class PlannedPress(Press):
    """Keeps indices planned in advance: `plans` holds one sorted LongTensor [K_v] of kept indices into T * M per
    video, consumed in call order (one per video the adapter presses, in placeholder order over batch and
    sequence). `retention` only needs to be below 1: at 1 every token is kept and no plan is consumed.
    """

    plans: list[torch.Tensor] = field(default_factory=list)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        if not self.plans:
            raise ValueError("PlannedPress has no plan left for this video; pass one LongTensor of kept indices per "
                             "video, in the order the videos are pressed")
        return Selection(self.plans.pop(0).to(tokens.features.device), tokens.num_tokens)
