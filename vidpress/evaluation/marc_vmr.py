"""The bench row `marc-vmr`: MARC as released (arXiv 2510.07915), retrieval before the vision encoder.

Per video: MARC's Visual Memory Retriever (`VisualMemoryRetriever(CLIPEmbedder(dual encoder), top_k=3)`) segments
the example's frames into event clips and keeps the 3 clips most similar to the question (`Example.prompt`, the
question without its options); then MarcPress's temporal merge (retrieval off, `top_k=None`) brings the retrieved
frames down to the row's budget K = round(R * T * M), R applying to the WHOLE video's T * M tokens as in every
other row (R = 1/64 of a 128-frame clip: one frame's tokens).

The videos are encoded once for every row. The Qwen2.5-VL vision tower attends within each temporal group (its
window and full attention are cut per group by cu_seqlens), so a group's features do not depend on the other
groups: encoding only the retrieved frames, cut at whole groups (`clip_groups`), gives exactly the whole video's
features of those groups. The row therefore takes the once-encoded features of the retrieved groups, at their own
M-RoPE positions; kept token indices stay in the whole video's numbering (evidence recall) and the effective
retention is relative to the whole video. At R = 1 nothing is dropped (every token kept, retrieval skipped), as
for MarcPress.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from vidpress.presses.base import Press, token_budget
from vidpress.presses.marc import MarcPress
from vidpress.retrieval import CLIPEmbedder, VisualMemoryRetriever, clip_groups
from vidpress.synthetic.reference import CLIP_RETRIEVER_DIR
from vidpress.types import Query, Selection, VideoTokens

__all__ = ["EpisodicMarcPress"]


@functools.lru_cache(maxsize=2)
def _embedder(path: Path) -> CLIPEmbedder:
    return CLIPEmbedder.from_pretrained(path)


@dataclass
class EpisodicMarcPress(Press):
    """MarcPress (`top_k=None`) on the temporal groups that MARC's retriever picked from the frames before encoding.

    The retrieval needs the frames and the question text, which a press does not see: call
    `begin_batch(examples)` before each batch is pressed; `select` then takes the batch's videos in order.

    Args:
        retention: R, K = round(R * T * M) of the whole video (1.0: every token).
        embedder: folder of the CLIP-style dual encoder (default: the one trained on the long family).
        top_k: clips retrieved per question (MARC: 3).
    """

    retention: float = 1 / 64
    embedder: Path = CLIP_RETRIEVER_DIR
    top_k: int = 3

    count_follows_content: ClassVar[bool] = True
    no_frame_budgets_because: ClassVar[str] = MarcPress.no_frame_budgets_because

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1 (clips retrieved per question); got {self.top_k!r}")
        if not Path(self.embedder).is_dir():
            raise ValueError(f"embedder {str(self.embedder)!r} is not a directory; pass a CLIP/SigLIP-style folder "
                             "(vidpress train clip-retriever)")
        self._pending: list[tuple[int, list[tuple[int, int]]]] = []  # (frames, retrieved clips) per video to press

    @property
    def retriever(self) -> VisualMemoryRetriever:
        return VisualMemoryRetriever(_embedder(Path(self.embedder)), top_k=self.top_k)

    def begin_batch(self, examples) -> None:
        """Retrieve the clips of every example of the next batch (its frames `video` and question `prompt`)."""
        if self._pending:
            raise RuntimeError(f"vidpress: {len(self._pending)} retrieved videos of the previous batch were never "
                               "pressed; begin_batch takes one batch's examples, pressed in the same order")
        retriever = self.retriever
        pending = []
        for example in examples:
            if not example.prompt:
                raise ValueError(f"example {example.seed} has no prompt (the question without its options) to "
                                 "retrieve with")
            memory = retriever.index_video(example.video)
            pending.append((len(example.video), retriever.retrieve(memory, example.prompt)))
        self._pending = pending

    def select(self, tokens: VideoTokens, query: Query | None = None) -> Selection:
        """Whole video [T, M, D] -> Selection over its T * M tokens, within the retrieved groups."""
        if not self._pending:
            raise RuntimeError("vidpress: EpisodicMarcPress got a video without its retrieved clips; call "
                               "begin_batch(examples) with the batch's examples before pressing it")
        num_frames, clips = self._pending.pop(0)
        if not isinstance(tokens, VideoTokens):
            raise ValueError(f"select expects VideoTokens; got {type(tokens).__name__}")
        T, M = tokens.num_frames, tokens.tokens_per_frame
        if num_frames % T:
            raise ValueError(f"the retrieved example has {num_frames} frames, which the video's {T} temporal groups "
                             "do not divide: the examples and the pressed videos are out of step")
        if self.retention >= 1.0:
            return super().select(tokens, query)
        groups = torch.tensor(clip_groups(clips, num_frames // T, num_frames))
        _, h, w = tokens.grid
        part = VideoTokens(
            tokens.features[groups.to(tokens.features.device)], (len(groups), h, w),
            None if tokens.timestamps is None else tokens.timestamps[groups.to(tokens.timestamps.device)],
            {k: v[groups.to(v.device)] for k, v in tokens.side_features.items()},
        )
        merged = MarcPress(budget_tokens=token_budget(self.retention, tokens.num_tokens), top_k=None).select(part)
        local = merged.keep_indices.cpu()
        keep = groups[local // M] * M + local % M  # sorted: groups ascend, and so do the local indices
        budgets = torch.zeros(T, dtype=torch.long)
        budgets[groups] = merged.frame_budgets.cpu()
        return Selection(keep.to(tokens.features.device), tokens.num_tokens, features=merged.features,
                         frame_budgets=budgets)
