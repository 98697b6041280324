"""MARC (Memory-Augmented RL token Compression, arXiv 2510.07915, ICLR 2026): retrieval + temporal merging.

Retrieve the clips the question is about (event segmentation, top-k by cosine to the question), then repeatedly
replace the most similar adjacent pair of frames by their mean, per clip and then globally, down to about one
frame's tokens. This press is the parameter-free part; C-GRPO (`vidpress train cgrpo`) trains the student for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import Press, apportion, check_compute_dtype, in_compute_dtype, register, token_budget
from vidpress.retrieval.events import clips_from_boundaries, segment
from vidpress.types import Query, Selection, VideoTokens, check_retention


@register("marc")
@dataclass
class MarcPress(Press):
    """MARC's token-level retrieval and memory-aware temporal merge (no parameters).

    Rule, for a video of T frames x M tokens and a token budget K:
      1. Retrieval (`top_k` clips; None = off, e.g. for videos already retrieved before the vision encoder):
         frame embedding = mean of its tokens; clips = `segment(frame embeddings, detector)`; clip embedding = mean
         of its frames'; query embedding = mean of the question's `Query.embeddings` (the VLM's own text
         embeddings, MARC's fallback embedder), over `Query.question_mask` (as released, the question text only: no
         system prompt, role tags or generation prompt; every token when the mask is missing). The `top_k` clips
         most cosine-similar to the query are kept, in time order; the others are dropped. Without a query (or
         without embeddings) there is nothing to retrieve with: every clip is kept and the press only merges.
      2. Frame budget F = max(1, K // M), split over the kept clips in proportion to their length (largest
         remainder, at least one frame each). Within each clip, the most similar ADJACENT pair of frame groups is
         replaced by its mean until the clip holds its budget; similarity = mean over the M spatial positions of
         the cosine between same-position tokens. If the clips together still hold more than F groups (more clips
         than frames in the budget), groups are merged globally the same way across clip borders.
         A group's value is the mean of all its original frames (merges weight by frame counts).
      3. Each group is placed at the token positions of its first frame, so its tokens keep their M-RoPE ids.
         With K < M, the single group left keeps its K most distinctive tokens (largest cosine distance to the
         group's mean token); the rest are dropped.
    Effective retention: min(F, frames retrieved) * M / (T * M) for K >= M, K / (T * M) below; exactly what
    `Selection.retention` reports. K >= T * M (or retention 1.0) keeps every token unchanged.

    Args:
        retention: fraction of tokens to keep, K = round(R * T * M); give this or `budget_tokens`, not both.
        budget_tokens: K as a token count; default (both None): one frame's tokens, K = M (the paper's target).
        top_k: clips kept by retrieval (3 in the paper); None turns retrieval off.
        detector: event-boundary detector for `segment` (default: `SimilarityDropDetector()`).
        compute_dtype: "float32" (default) or "model": retrieval and frame similarities/means in the features' own
            dtype (see `vidpress.presses.base.check_compute_dtype`).
    """

    retention: float | None = None
    budget_tokens: int | None = None
    top_k: int | None = 3
    detector: object | None = None
    compute_dtype: str = "float32"

    query_aware = True
    count_follows_content = True
    no_frame_budgets_because = ("it merges whole frames (the retrieved clips averaged down to a number of frames) "
                                "instead of ranking tokens inside frames")

    def __post_init__(self):
        if self.retention is not None and self.budget_tokens is not None:
            raise ValueError("give MarcPress either retention or budget_tokens, not both")
        if self.retention is not None:
            self.retention = check_retention(self.retention)
        self.check_frame_budgets()
        if self.budget_tokens is not None and (
            isinstance(self.budget_tokens, bool) or not isinstance(self.budget_tokens, int) or self.budget_tokens < 1
        ):
            raise ValueError(
                f"budget_tokens must be an integer >= 1 (or None: one frame's tokens); got {self.budget_tokens!r}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be an integer >= 1, or None to turn retrieval off; got {self.top_k!r}")
        if self.detector is not None and not callable(getattr(self.detector, "boundaries", None)):
            raise ValueError("detector must be None (SimilarityDropDetector()) or an object with a method "
                             f"boundaries(embeddings [N, D]) -> list[int]; got {self.detector!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    def budget(self, tokens: VideoTokens) -> int:
        """K, the tokens this press aims to keep of `tokens`."""
        if self.retention is not None:
            return token_budget(self.retention, tokens.num_tokens)
        if self.budget_tokens is not None:
            return min(self.budget_tokens, tokens.num_tokens)
        return tokens.tokens_per_frame

    def select(self, tokens: VideoTokens, query: Query | None = None) -> Selection:
        if self.retention is not None:
            return super().select(tokens, query)
        if not isinstance(tokens, VideoTokens):
            raise ValueError(f"select expects VideoTokens; got {type(tokens).__name__}")
        tokens.check_finite()
        return self.compress(tokens, query)

    # -- retrieval ----------------------------------------------------------------------------------------
    def retrieve(self, tokens: VideoTokens, query: Query | None) -> list[tuple[int, int]]:
        """Kept clips as (first frame, end frame), in time order (all clips without a query or with top_k None)."""
        frames = in_compute_dtype(tokens.features, self.compute_dtype).mean(dim=1)  # [T, D]
        clips = clips_from_boundaries(segment(frames, self.detector), tokens.num_frames)
        if self.top_k is None or query is None or query.embeddings is None or len(clips) <= self.top_k:
            return clips
        if query.embeddings.shape[-1] != frames.shape[-1]:
            raise ValueError(
                f"query embeddings have width {query.embeddings.shape[-1]} but video tokens {frames.shape[-1]}: "
                "MarcPress compares them in the LLM's input space"
            )
        clip_embeddings = torch.stack([frames[a:b].mean(dim=0) for a, b in clips])  # [C, D]
        embeddings = query.embeddings
        mask = query.question_mask
        if mask is not None and bool(mask.any()):
            embeddings = embeddings[mask.to(embeddings.device)]
        q = embeddings.to(frames.dtype).mean(dim=0).to(frames.device)
        scores = torch.nn.functional.cosine_similarity(clip_embeddings, q[None], dim=-1, eps=1e-12)
        best = torch.sort(scores, descending=True, stable=True).indices[: self.top_k]
        return [clips[int(i)] for i in best.sort().values]

    # -- merging ------------------------------------------------------------------------------------------
    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        N = T * M
        K = self.budget(tokens)
        device = tokens.features.device
        if K >= N:
            return Selection(torch.arange(N, device=device), N, frame_budgets=torch.full((T,), M, dtype=torch.long))
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        clips = self.retrieve(tokens, query)
        F = max(1, K // M)
        sizes = [b - a for a, b in clips]
        clip_budgets = apportion(F, sizes) if len(clips) <= F else [1] * len(clips)
        groups: list[_Group] = []
        for (a, b), budget in zip(clips, clip_budgets):
            groups += merge_adjacent([_Group(t, 1, x[t]) for t in range(a, b)], budget)
        groups = merge_adjacent(groups, F)

        if K < M:  # one group left: keep its K most distinctive tokens
            (group,) = groups
            mean = group.mean()
            unit = torch.nn.functional.normalize(mean, dim=-1, eps=1e-12)
            centre = torch.nn.functional.normalize(mean.mean(dim=0), dim=0, eps=1e-12)
            positions = torch.sort(1 - unit @ centre, descending=True, stable=True).indices[:K].sort().values
            keep = group.first * M + positions
            features = mean[positions]
        else:
            keep = torch.cat([g.first * M + torch.arange(M, device=device) for g in groups])
            features = torch.cat([g.mean() for g in groups])
        counts = torch.zeros(T, dtype=torch.long)
        counts.index_add_(0, (keep // M).cpu(), torch.ones(keep.numel(), dtype=torch.long))
        return Selection(keep, N, features=features.to(tokens.features.dtype), frame_budgets=counts)


@dataclass
class _Group:
    """Consecutive original frames merged into one: the first frame's index, the frame count, their sum [M, D]."""

    first: int
    count: int
    total: torch.Tensor

    def mean(self) -> torch.Tensor:
        return self.total / self.count


def frame_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over spatial positions of the cosine between same-position tokens: [M, D], [M, D] -> scalar."""
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).mean())


def merge_adjacent(groups: list[_Group], target: int) -> list[_Group]:
    """Replace the most similar adjacent pair by its (count-weighted) mean until `target` groups remain.

    Ties go to the earlier pair. Only the similarities next to a merge are recomputed.
    """
    groups = list(groups)
    sims = [frame_similarity(groups[i].mean(), groups[i + 1].mean()) for i in range(len(groups) - 1)]
    while len(groups) > max(1, target):
        i = max(range(len(sims)), key=lambda j: (sims[j], -j))
        left, right = groups[i], groups[i + 1]
        groups[i : i + 2] = [_Group(left.first, left.count + right.count, left.total + right.total)]
        del sims[i]
        merged = groups[i].mean()
        if i > 0:
            sims[i - 1] = frame_similarity(groups[i - 1].mean(), merged)
        if i < len(groups) - 1:
            sims[i] = frame_similarity(merged, groups[i + 1].mean())
    return groups
