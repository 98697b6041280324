"""`PressReport`: what one pressed call kept, per video (`pressed.last_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidpress.types import Selection, VideoTokens


@dataclass
class PressReport:
    """What one pressed call did.

    selections: one Selection per video, in placeholder order over (batch, sequence); for presses acting inside
        the LLM, what survives the last stage.
    videos: the VideoTokens each selection was made from (same order).
    sample_of_video: batch index of each video.
    extra_tokens: per video, always-kept placeholder tokens after its frame tokens (LLaVA-OneVision's newline).
    sequence_length: (before, after) padded sequence length entering the LLM.
    layer_tokens: for presses acting inside the LLM, frame tokens each decoder layer processed (whole batch).
    input_ids: [B, L'] token ids of the pressed sequence; where the caller passed `inputs_embeds` alone, the visual
        placeholder ids where the embeddings are placeholders and the pad id elsewhere.
    """

    selections: list[Selection] = field(default_factory=list)
    videos: list[VideoTokens] = field(default_factory=list)
    sample_of_video: list[int] = field(default_factory=list)
    extra_tokens: list[int] = field(default_factory=list)
    sequence_length: tuple[int, int] = (0, 0)
    layer_tokens: list[int] | None = None
    input_ids: torch.Tensor | None = None

    @property
    def visual_tokens_before(self) -> int:
        return sum(s.num_tokens for s in self.selections)

    @property
    def visual_tokens_after(self) -> int:
        return sum(s.num_kept for s in self.selections)

    @property
    def retention(self) -> float:
        """Effective retention over all videos of the call: kept / all frame tokens, averaged over the LLM's
        layers for presses acting inside it (1.0 when there was no video)."""
        before = self.visual_tokens_before
        if not before:
            return 1.0
        if self.layer_tokens:
            return sum(self.layer_tokens) / len(self.layer_tokens) / before
        return self.visual_tokens_after / before

    @property
    def retention_before_llm(self) -> float:
        """Frame tokens entering the LLM's first layer / all frame tokens (for presses acting before the LLM, the
        same as `retention`; FlashVID: its vision side)."""
        before = self.visual_tokens_before
        if not before:
            return 1.0
        return (self.layer_tokens[0] if self.layer_tokens else self.visual_tokens_after) / before
