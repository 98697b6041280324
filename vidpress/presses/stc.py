"""STC-Pruner — Streaming Token Compression (Wang et al., arXiv 2512.00891, CVPR 2026; the VidCom² authors).

Each frame keeps the tokens least similar to a memory anchor (the mean of every earlier chunk's mean token) and to
its own frame centre; the memory spans a whole stream. Training-free, query-agnostic, acts after the projector. The
encoder-side half of STC (the cacher) lives in `vidpress.streaming.stc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidpress.presses.base import Press, register
from vidpress.types import Query, Selection, VideoTokens, check_number


@dataclass
class STCMemory:
    """The pruner's memory of one stream: the sum [C] of the mean raw (channel-selected) token of every chunk seen,
    and their count; the anchor is their mean. A running sum keeps the memory constant-size however long the
    stream."""

    total: torch.Tensor | None = None
    chunks: int = 0

    def add(self, chunk_mean: torch.Tensor) -> torch.Tensor:
        """Add one chunk's mean [C]; returns the anchor (mean of all chunk means, this one included)."""
        self.total = chunk_mean.clone() if self.total is None else self.total + chunk_mean
        self.chunks += 1
        return self.total / self.chunks


@register("stc")
@dataclass
class STCPress(Press):
    """STC-Pruner, the authors' released rule (pinned release 9b13ce0), per chunk of frames:

    1. keep the int(D * channel_ratio) lowest-variance channels (biased variance over the chunk's tokens);
    2. append the chunk's mean of those raw channels to the memory; anchor = mean of all appended means, taken
       position-wise although each chunk picks its own channels (the release's quirk, kept);
    3. x̂ = tokens L2-normalised on those channels; f = mean of the frame's x̂ (not renormalised);
       m̂ = normalise(anchor); score = K(x̂, m̂) + K(x̂, f), K(x, c) = sum over a in `alphas` of
       exp(-||x - c||^2 / (2a));
    4. every frame keeps its k tokens with the SMALLEST score, sorted. The release keeps a fixed 60 of 196 per frame
       (the default retention); vidpress keeps K = max(1, round(retention * T * M)) in all, k = K // T per frame
       plus one for the first K % T frames, which is the release's fixed count whenever retention * M is whole.

    Args:
        retention: share of the tokens kept.
        chunk_frames: frames per chunk when a whole video is pressed at once (`select`); the release encodes one
            frame per chunk. A `VideoStream` gives each appended chunk to `select_chunk` with the stream's memory.
        channel_ratio: share of channels scored (0.5 released). alphas: the kernel's bandwidths.

    The memory is reset per video (`select`) and per stream; the release never resets it (it spans every video a
    process sees), which vidpress does not copy.
    """

    retention: float = 60 / 196
    chunk_frames: int = 1
    channel_ratio: float = 0.5
    alphas: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive integer; got {self.chunk_frames!r}")
        check_number("channel_ratio", self.channel_ratio, "a number in (0, 1]", lambda v: 0 < v <= 1)
        accepted = "a non-empty list of positive kernel bandwidths (numbers > 0)"
        if isinstance(self.alphas, (str, bytes)) or not isinstance(self.alphas, (list, tuple)) or not self.alphas:
            raise ValueError(f"alphas must be {accepted}; got {self.alphas!r}")
        self.alphas = tuple(check_number("alphas", a, accepted, lambda v: v > 0) for a in self.alphas)

    def stream_memory(self) -> STCMemory:
        return STCMemory()

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        memory = STCMemory()
        T, M = tokens.num_frames, tokens.tokens_per_frame
        counts = self._frame_counts(T, M)
        kept = []
        for start in range(0, T, self.chunk_frames):
            chunk = tokens.features[start : start + self.chunk_frames]
            kept.append(self._chunk_keep(chunk, memory, counts[start : start + self.chunk_frames]) + start * M)
        keep = torch.cat(kept)
        return Selection(keep, tokens.num_tokens, frame_budgets=torch.bincount(keep // M, minlength=T).cpu())

    def select_chunk(self, tokens: VideoTokens, memory) -> Selection:
        """`select` for one chunk of a stream, scored against (and appended to) the stream's `memory`."""
        if not isinstance(tokens, VideoTokens):
            raise ValueError(f"select_chunk expects VideoTokens; got {type(tokens).__name__}")
        tokens.check_finite()
        M = tokens.tokens_per_frame
        keep = self._chunk_keep(tokens.features, memory, self._frame_counts(tokens.num_frames, M))
        return Selection(keep, tokens.num_tokens,
                         frame_budgets=torch.bincount(keep // M, minlength=tokens.num_frames).cpu())

    def _frame_counts(self, T: int, M: int) -> list[int]:
        """Tokens kept in each of T frames of M: K = max(1, round(R * T * M)) spread evenly, earlier frames first."""
        total = min(T * M, max(1, round(self.retention * T * M)))
        return [total // T + (t < total % T) for t in range(T)]

    def _chunk_keep(self, chunk: torch.Tensor, memory: STCMemory, counts: list[int]) -> torch.Tensor:
        """Sorted kept indices into one chunk's tokens [F, M, D] (F * M of them), counts[f] in frame f."""
        F_, M, D = chunk.shape
        x = chunk.float().reshape(F_ * M, D)
        channels = x.var(0, unbiased=False).topk(max(1, int(D * self.channel_ratio)), largest=False).indices
        raw = x[:, channels]
        anchor = F.normalize(memory.add(raw.mean(0)), dim=-1)
        unit = F.normalize(raw, dim=-1).view(F_, M, -1)
        frame = unit.mean(1, keepdim=True)
        score = self._kernel(unit, anchor) + self._kernel(unit, frame)  # [F, M]
        # smallest scores; a stable sort breaks ties toward the lower index
        order = torch.sort(score, dim=1, stable=True).indices
        return torch.cat([order[f, :k].sort().values + f * M for f, k in enumerate(counts)])

    def _kernel(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        sq = (x - centre).pow(2).sum(-1)
        return sum(torch.exp(-sq / (2 * a)) for a in self.alphas)
