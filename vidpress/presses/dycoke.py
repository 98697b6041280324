"""DyCoke, stage 1: token temporal merging (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video
Large Language Models", CVPR 2025, arXiv 2411.15024).

Frames are grouped in windows of 4; the first frame of each window is kept whole, and in every other frame only the
tokens least similar (cosine) to the same spatial position of a reference frame survive; the rest are averaged into it.
Acts on the projector output, before the LLM; needs no attention weights. (Stage 2, the decoding-time KV-cache pruning
by attention, is not part of this press.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from vidpress.presses.base import Press, average_into_kept, keep_top_per_frame, token_budget
from vidpress.types import Query, Selection, VideoTokens

logger = logging.getLogger("vidpress")


@dataclass
class DyCokePress(Press):
    """DyCoke token temporal merging (stage 1).

    Rule, with windows of `window` frames (offset o = 0 .. window-1 inside a window; the paper's 4-frame scheme):
      - reference of offset o: odd o -> the frame just before (o - 1); even o > 0 -> the window's first frame (0).
        For 4 frames: 1 -> 0, 2 -> 0, 3 -> 2 (the paper pairs odd with even frames, then compares the window's
        remaining even frame with its first frame).
      - similarity of token (t, m): cosine between it and token (reference(t), m), on the original features.
      - frame 0 of each window keeps all M tokens; each other frame keeps its least similar tokens, as many as its
        share of the budget (the paper's fixed pruning ratio p per frame, here derived from R): the round(R * T * M)
        tokens minus the reference frames' tokens, split evenly over the other frames (the remainder spread evenly).
      - a dropped token is averaged into the token at the same position of its reference frame, or, if that one was
        dropped too, into where that one went (3 -> 2 -> 0); `Selection.features` holds the averages.

    Effective retention: exactly round(R * T * M) / (T * M) when R >= `min_retention(T)` = ceil(T / window) / T (the
    reference frames alone: 1/4 for T divisible by 4). Below that floor stage 1 cannot go: the press keeps the reference
    frames only, reports that (higher) retention in the Selection and logs a warning once.

    Args:
        retention: R, fraction of video tokens kept.
        window: frames per window (4 in the paper), at least 2.
        merge: average dropped tokens into their reference token (True); False only drops them.
    """

    window: int = 4
    merge: bool = True

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (frames per window; 4 in the paper); got {self.window!r}")
        if not isinstance(self.merge, bool):
            raise ValueError(f"merge must be True or False; got {self.merge!r}")
        self._warned_floor = False

    def min_retention(self, num_frames: int) -> float:
        """Lowest retention stage 1 reaches on `num_frames` frames: the reference frames kept whole."""
        return math.ceil(num_frames / self.window) / num_frames

    def reference_frames(self, num_frames: int) -> torch.Tensor:
        """Reference frame of every frame, LongTensor [T]; a window's first frame is its own reference."""
        t = torch.arange(num_frames)
        start = t - t % self.window
        offset = t % self.window
        return torch.where(offset % 2 == 1, t - 1, start)

    def similarity(self, tokens: VideoTokens) -> torch.Tensor:
        """Cosine similarity of every token to the same position in its reference frame, [T, M] (1 on references)."""
        x = tokens.features.float()
        norm = torch.linalg.vector_norm(x, dim=-1)  # [T, M]
        sim = torch.ones(x.shape[:2], device=x.device)
        W = self.window
        for o in range(1, W):  # one strided view per offset, all windows at once, no [T, M, D] copy
            n = len(range(o, x.shape[0], W))
            if n == 0:
                break
            r = o - 1 if o % 2 == 1 else 0  # reference offset
            dot = torch.linalg.vecdot(x[o::W], x[r::W][:n])
            sim[o::W] = dot / (norm[o::W] * norm[r::W][:n]).clamp_min(1e-12)
        return sim

    def frame_budgets(self, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
        """Tokens kept per frame, LongTensor [T]: M for reference frames, the rest of the budget spread evenly."""
        T, M = num_frames, tokens_per_frame
        is_reference = self.reference_frames(T) == torch.arange(T)
        budgets = torch.where(is_reference, M, 0)
        others = (~is_reference).nonzero().squeeze(1)
        extra = token_budget(self.retention, T * M) - int(budgets.sum())
        if extra <= 0 or others.numel() == 0:
            if extra < 0 and not self._warned_floor:
                logger.warning(
                    "DyCokePress: retention %.3g is below what stage 1 reaches on %d frames (%.3g, the reference frames "
                    "kept whole); keeping the reference frames only", self.retention, T, self.min_retention(T),
                )
                self._warned_floor = True
            return budgets
        n = others.numel()
        # extra = n * base + remainder; the remainder's +1s go to evenly spaced frames (Bresenham), not the first ones
        base, remainder = divmod(extra, n)
        i = torch.arange(n)
        plus_one = ((i + 1) * remainder) // n - (i * remainder) // n
        budgets[others] = base + plus_one
        return budgets

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        budgets = self.frame_budgets(T, M)
        sim = self.similarity(tokens)
        keep = keep_top_per_frame(-sim, budgets)  # least similar first; references keep all M
        features = None
        if self.merge:
            kept = torch.zeros(T * M, dtype=torch.bool, device=sim.device)
            kept[keep] = True
            kept = kept.view(T, M)
            # Target of every token: itself if kept, else its reference's target. References come first in a window
            # (offset o's reference has offset o-1 or 0), so walking offsets upward reads finished targets.
            target = torch.arange(T * M, device=sim.device).view(T, M)
            reference = self.reference_frames(T).to(sim.device)
            for o in range(1, self.window):
                frames = torch.arange(o, T, self.window, device=sim.device)
                if frames.numel() == 0:
                    break
                target[frames] = torch.where(kept[frames], target[frames], target[reference[frames]])
            features = average_into_kept(tokens.features.reshape(T * M, -1), keep, target.flatten())
        return Selection(keep, T * M, features=features, frame_budgets=budgets.cpu())
