"""DyCoke, stage 1: token temporal merging (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video
Large Language Models", CVPR 2025, arXiv 2411.15024).

Frames are grouped in windows of 4; the first frame of each window is kept whole, and in every other frame only the
tokens least similar (cosine) to the same spatial position of a reference frame survive; the rest are dropped (the
released code; averaging them into the reference is an option).
Acts on the projector output, before the LLM; needs no attention weights. (Stage 2, the decoding-time KV-cache pruning
by attention, is not part of this press.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vidpress.presses.base import (
    Press,
    average_into_kept,
    check_compute_dtype,
    in_compute_dtype,
    keep_top_per_frame,
    register,
    token_budget,
)
from vidpress.types import Query, Selection, VideoTokens

logger = logging.getLogger("vidpress")


@register("dycoke")
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
      - dropped tokens are removed (released code, `merge=False`, the default). `merge=True` (vidpress's earlier
        default) averages each dropped token into the token at the same position of its reference frame, or, if that
        one was dropped too, into where that one went (3 -> 2 -> 0); `Selection.features` then holds the averages.
      - `edges`: "uniform" (default) treats every window alike. "released" (windows of 4 only) reproduces the released
        loop at the video's end: a window's frame 2 is pruned only when frames follow the window (t + 2 < T), so with
        T % 4 == 0 frame T - 2 stays whole; with odd T the last frame (never paired) is dropped entirely.

    Effective retention: exactly round(R * T * M) / (T * M) when R >= `min_retention(T)` (the frames kept whole,
    ceil(T / window) / T with uniform edges: 1/4 for T divisible by 4). Below that floor stage 1 cannot go: the press
    keeps only the frames kept whole, reports that (higher) retention in the Selection and logs a warning once.
    Per-frame budgets come from R (the rest of the budget spread evenly over the pruned frames) where the released
    code uses a fixed per-frame int(p * M); apart from that and `compute_dtype`, `DyCokePress(merge=False,
    edges="released")` keeps the released code's tokens.

    Args:
        retention: R, fraction of video tokens kept.
        window: frames per window (4 in the paper), at least 2.
        merge: False (released) drops the pruned tokens; True averages them into their reference token.
        edges: "uniform" or "released", the handling of the video's last window and of odd T (above).
        compute_dtype: "float32" (default) or "model": the cosine similarities in the features' own dtype, as the
            released code (see `vidpress.presses.base.check_compute_dtype`).
    """

    window: int = 4
    merge: bool = False
    edges: str = "uniform"
    compute_dtype: str = "float32"

    no_frame_budgets_because = ("its budgets follow its temporal windows (each window's first frame kept whole, the "
                                "others pruned against their reference frame)")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (frames per window; 4 in the paper); got {self.window!r}")
        if not isinstance(self.merge, bool):
            raise ValueError(f"merge must be True or False; got {self.merge!r}")
        if self.edges not in ("uniform", "released"):
            raise ValueError(f"edges must be 'uniform' or 'released' (the released loop's last window and odd T); "
                             f"got {self.edges!r}")
        if self.edges == "released" and (self.window != 4 or self.merge):
            raise ValueError("edges='released' reproduces the released loop, which has windows of 4 and drops tokens: "
                             f"use window=4 and merge=False (got window={self.window}, merge={self.merge})")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)
        self._warned_floor = False

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """Lowest retention stage 1 reaches on `num_frames` frames: the frames kept whole."""
        return int(self._frame_kinds(num_frames)[0].sum()) / num_frames

    def _frame_kinds(self, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool masks [T]: frames kept whole, frames dropped entirely (the rest are pruned to a share)."""
        t = torch.arange(num_frames)
        whole = self.reference_frames(num_frames) == t
        dropped = torch.zeros(num_frames, dtype=torch.bool)
        if self.edges == "released":
            whole |= (t % 4 == 2) & (t + 2 >= num_frames)  # the loop over frame-2 comparisons stops before the end
            if num_frames % 2 == 1:  # the pair loop never reaches the last frame
                dropped[-1] = True
                whole[-1] = False
        return whole, dropped

    def reference_frames(self, num_frames: int) -> torch.Tensor:
        """Reference frame of every frame, LongTensor [T]; a window's first frame is its own reference."""
        t = torch.arange(num_frames)
        start = t - t % self.window
        offset = t % self.window
        return torch.where(offset % 2 == 1, t - 1, start)

    def token_scores(self, tokens: VideoTokens) -> torch.Tensor:
        """Distinctness from the reference frame, -similarity [T, M]: DyCoke keeps the least similar tokens first."""
        return -self.similarity(tokens)

    def similarity(self, tokens: VideoTokens) -> torch.Tensor:
        """Cosine similarity of every token to the same position in its reference frame, [T, M] (1 on references)."""
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        norm = torch.linalg.vector_norm(x, dim=-1)  # [T, M]
        sim = torch.ones(x.shape[:2], device=x.device, dtype=x.dtype)
        W = self.window
        for o in range(1, W):  # one strided view per offset, all windows at once, no [T, M, D] copy
            n = len(range(o, x.shape[0], W))
            if n == 0:
                break
            r = o - 1 if o % 2 == 1 else 0  # reference offset
            dot = torch.linalg.vecdot(x[o::W], x[r::W][:n])
            sim[o::W] = dot / (norm[o::W] * norm[r::W][:n]).clamp_min(1e-12)
        return sim

    def split_budget(self, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
        """Tokens kept per frame, LongTensor [T]: M for frames kept whole, 0 for dropped ones, the rest of the budget
        spread evenly over the other frames."""
        T, M = num_frames, tokens_per_frame
        whole, dropped = self._frame_kinds(T)
        budgets = torch.where(whole, M, 0)
        others = (~whole & ~dropped).nonzero().squeeze(1)
        extra = token_budget(self.retention, T * M) - int(budgets.sum())
        if extra <= 0 or others.numel() == 0:
            if extra < 0 and not self._warned_floor:
                logger.warning(
                    "DyCokePress: retention %.3g is below what stage 1 reaches on %d frames (%.3g, the frames kept "
                    "whole); keeping those frames only", self.retention, T, self.min_retention(T),
                )
                self._warned_floor = True
            return budgets
        n = others.numel()
        # extra = n * base + remainder; the remainder's +1s go to evenly spaced frames (Bresenham), not the first ones
        base, remainder = divmod(extra, n)
        i = torch.arange(n)
        plus_one = ((i + 1) * remainder) // n - (i * remainder) // n
        budgets[others] = (base + plus_one).clamp(max=M)  # with a dropped last frame the budget can exceed the rest
        return budgets

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        budgets = self.split_budget(T, M)
        sim = self.similarity(tokens)
        keep = keep_top_per_frame(-sim.float(), budgets)  # least similar first; whole frames keep all M
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
