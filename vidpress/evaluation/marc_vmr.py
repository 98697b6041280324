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
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from vidpress.presses.base import Press, token_budget
from vidpress.presses.marc import MarcPress
from vidpress.retrieval import CLIPEmbedder, VisualMemoryRetriever, clip_groups
from vidpress.retrieval.events import FrameDescriptor, SimilarityDropDetector
from vidpress.synthetic.reference import CLIP_RETRIEVER_DIR
from vidpress.types import Query, Selection, VideoTokens

__all__ = ["EpisodicMarcPress"]


def synthetic_descriptor() -> FrameDescriptor:
    """The cut descriptor for the synthetic world: its colour histogram only. Its events are colour flashes on a
    noisy dark background, and the noise moves the grey and edge layouts of every frame as much as a flash does."""
    return FrameDescriptor(weights=(1.0, 0.0, 0.0))


def synthetic_detector() -> SimilarityDropDetector:
    """The cut detector for the synthetic world: a cut where the change is 1 MAD above the video's median, no local
    test. With the defaults (tuned for shot cuts: 4 MADs, 6 x the local median) 15 of the first 40 long-family
    `train` videos stayed one clip (retrieval then keeps the whole video) and the asked event's clip had a median
    22 frames; with these (and `synthetic_descriptor`), none stayed one clip and the median was 4 frames."""
    return SimilarityDropDetector(sensitivity=1.0, contrast=None)


@functools.lru_cache(maxsize=2)
def _embedder(path: Path) -> CLIPEmbedder:
    return CLIPEmbedder.from_pretrained(path)


@dataclass
class EpisodicMarcPress(Press):
    """MarcPress (`top_k=None`) on the temporal groups that MARC's retriever picked from the frames before encoding.

    The retrieval needs the frames and the question text, which a press does not see: call
    `begin_batch(examples)` before each batch is pressed (or `begin_clips` with clips retrieved earlier by
    `retrieve`, as C-GRPO training does for its cached videos); `select` then takes the batch's videos in order.

    Args:
        retention: R, K = round(R * T * M) of the whole video (1.0: every token).
        embedder: folder of the CLIP-style dual encoder (default: the one trained on the long family).
        top_k: clips retrieved per question (MARC: 3).
        budget_tokens: K as a token count instead of R (e.g. one frame's tokens, MarcPress's default budget).
        detector, descriptor: how the retriever cuts the frames into event clips (default: tuned for the synthetic
            world, `synthetic_detector` and `synthetic_descriptor`).
    """

    retention: float = 1 / 64
    embedder: Path = CLIP_RETRIEVER_DIR
    top_k: int = 3
    budget_tokens: int | None = None
    detector: object = field(default_factory=synthetic_detector)
    descriptor: FrameDescriptor = field(default_factory=synthetic_descriptor)

    count_follows_content: ClassVar[bool] = True
    no_frame_budgets_because: ClassVar[str] = MarcPress.no_frame_budgets_because

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1 (clips retrieved per question); got {self.top_k!r}")
        if not Path(self.embedder).is_dir():
            raise ValueError(f"embedder {str(self.embedder)!r} is not a directory; pass a CLIP/SigLIP-style folder "
                             "(vidpress train clip-retriever)")
        if self.budget_tokens is not None and (
            isinstance(self.budget_tokens, bool) or not isinstance(self.budget_tokens, int) or self.budget_tokens < 1
        ):
            raise ValueError(f"budget_tokens must be an integer >= 1 (or None: R of the video); got "
                             f"{self.budget_tokens!r}")
        self._pending: list[tuple[int, list[tuple[int, int]]]] = []  # (frames, retrieved clips) per video to press

    @property
    def retriever(self) -> VisualMemoryRetriever:
        return VisualMemoryRetriever(_embedder(Path(self.embedder)), detector=self.detector, top_k=self.top_k,
                                     descriptor=self.descriptor)

    def retrieve(self, examples) -> list[tuple[int, list[tuple[int, int]]]]:
        """(frame count, retrieved clips [(start, end)]) of each example (its frames `video`, question `prompt`)."""
        retriever = self.retriever
        out = []
        for example in examples:
            if not example.prompt:
                raise ValueError(f"example {example.seed} has no prompt (the question without its options) to "
                                 "retrieve with")
            memory = retriever.index_video(example.video)
            out.append((len(example.video), retriever.retrieve(memory, example.prompt)))
        return out

    def begin_batch(self, examples) -> None:
        """Retrieve the clips of every example of the next batch (its frames `video` and question `prompt`)."""
        self.begin_clips(self.retrieve(examples))

    def begin_clips(self, clips: list[tuple[int, list[tuple[int, int]]]]) -> None:
        """The next batch's videos, in order, as (frame count, retrieved clips) from `retrieve`."""
        if self._pending:
            raise RuntimeError(f"vidpress: {len(self._pending)} retrieved videos of the previous batch were never "
                               "pressed; begin_batch takes one batch's examples, pressed in the same order")
        self._pending = list(clips)

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
        budget = (token_budget(self.retention, tokens.num_tokens) if self.budget_tokens is None
                  else min(self.budget_tokens, tokens.num_tokens))
        if budget >= tokens.num_tokens:  # nothing to drop: every token, retrieval skipped
            return Selection(torch.arange(tokens.num_tokens, device=tokens.features.device), tokens.num_tokens,
                             frame_budgets=torch.full((T,), M, dtype=torch.long))
        groups = torch.tensor(clip_groups(clips, num_frames // T, num_frames))
        _, h, w = tokens.grid
        part = VideoTokens(
            tokens.features[groups.to(tokens.features.device)], (len(groups), h, w),
            None if tokens.timestamps is None else tokens.timestamps[groups.to(tokens.timestamps.device)],
            {k: v[groups.to(v.device)] for k, v in tokens.side_features.items()},
        )
        merged = MarcPress(budget_tokens=budget, top_k=None).select(part)
        local = merged.keep_indices.cpu()
        keep = groups[local // M] * M + local % M  # sorted: groups ascend, and so do the local indices
        budgets = torch.zeros(T, dtype=torch.long)
        budgets[groups] = merged.frame_budgets.cpu()
        return Selection(keep.to(tokens.features.device), tokens.num_tokens, features=merged.features,
                         frame_budgets=budgets)
