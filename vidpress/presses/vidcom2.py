"""VidCom² — Video Compression Commander (Liu et al., arXiv 2505.14454, EMNLP 2025).

Frames that differ most from the whole video get a larger share of the budget (softmax over frame uniqueness);
inside each frame the tokens least similar to both the video centre and the frame centre are kept.
Training-free, query-agnostic, acts after the projector, needs no attention weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

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

    tau: float = 0.01
    alphas: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
    channel_ratio: float = 0.5
    similarity: str = "gaussian"
    compute_dtype: str = "float32"

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
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        T, M, D = x.shape
        num_channels = max(1, int(D * self.channel_ratio))
        # Low-variance channels carry the shared "background"; similarity on them separates redundant tokens.
        variance = _channel_variance(x.reshape(T * M, D))
        channels = torch.topk(variance, num_channels, largest=False).indices
        raw = x[..., channels]
        norm = torch.linalg.vector_norm(raw, dim=-1, keepdim=True)
        x = raw / norm.clamp_min(1e-12)
        video_centre = x.mean(dim=(0, 1))  # [d]
        frame_centres = x.mean(dim=1)  # [T, d]
        dot_video = x @ video_centre  # [T, M]
        dot_frame = torch.einsum("tmd,td->tm", x, frame_centres)
        if self.similarity == "cosine":
            return (
                dot_video / video_centre.norm().clamp_min(1e-12),
                dot_frame / frame_centres.norm(dim=-1, keepdim=True).clamp_min(1e-12),
            )
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, with ||x||^2 = 1 for every non-zero token: no [T, M, d] temporaries.
        sq_norm = (norm.squeeze(-1) / norm.squeeze(-1).clamp_min(1e-12)).pow(2)
        sq_video = (sq_norm - 2 * dot_video + video_centre.pow(2).sum()).clamp_min(0)
        sq_frame = (sq_norm - 2 * dot_frame + frame_centres.pow(2).sum(-1, keepdim=True)).clamp_min(0)
        alphas = torch.tensor(self.alphas, device=x.device, dtype=x.dtype)

        def kernel(sq_dist):  # [T, M] -> [T, M]
            return torch.exp(-sq_dist[..., None] / (2 * alphas)).sum(-1)

        return kernel(sq_video), kernel(sq_frame)

    def frame_retention(self, tokens: VideoTokens) -> torch.Tensor:
        """Unclamped per-frame retention r[t] = R * (1 + p[t] - 1/T), [T]; it averages to R."""
        sv, _ = self.similarities(tokens)
        return self._frame_retention(sv)

    def _frame_retention(self, sv: torch.Tensor) -> torch.Tensor:
        uniqueness = -sv.mean(dim=1)  # [T]
        p = torch.softmax((uniqueness - uniqueness.max()) / self.tau, dim=0)
        return self.retention * (1 + p - 1 / sv.shape[0])

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, torch.Tensor]:
        sv, sf = self.similarities(tokens)
        r = self._frame_retention(sv).clamp(max=1.0)
        M = tokens.tokens_per_frame
        budgets = torch.round(r * M).long().clamp(min=1, max=M)
        return -(sv + sf).float(), budgets  # most distinct from the video and frame centres first


def _channel_variance(x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Biased variance of each column of x [N, D], two-pass over row chunks: exact like torch.var, ~4x faster on
    CPU for large N, and never more than one chunk of temporaries."""
    mean = x.mean(dim=0)
    total = torch.zeros_like(mean)
    for rows in x.split(chunk):
        centred = rows - mean
        total += (centred * centred).sum(dim=0)
    return total / x.shape[0]
