"""Memory policies: which cached visual tokens leave when a new chunk would pass a stream's `memory_tokens`.

Every policy sees the cached visual tokens (`MemoryView`: features [N, D] in cache order, their chunk and frame) and
the incoming chunk's kept features [K, D], and returns at least `excess` indices into the memory to evict. The
incoming chunk is never evicted before it is prefilled, so the cap holds at every moment.

- fifo: the oldest tokens leave first (the baseline; the memory is a sliding window over the stream).
- uniqueness: VidCom²'s token score (Liu et al., arXiv 2505.14454) over the whole memory plus the incoming chunk: on
  the lowest-variance half of the channels, L2-normalised, score = K(x, g) + K(x, f[frame]) with g the centre of
  all tokens, f the token's frame centre and K(x, c) = sum over a in {1/8, 1/4, 1/2, 1, 2} of
  exp(-||x - c||^2 / (2a)); the memory tokens with the LARGEST score (the most redundant) leave.
- stc: STC's pruner memory (Wang et al., arXiv 2512.00891; authors' release): every appended chunk adds its mean raw
  feature to the memory, evicted chunks included, and the anchor is the mean of those means; score = K(x̂, m̂) +
  K(x̂, f[frame]) on the low-variance half of the channels; the most anchor-like memory tokens leave. Unlike
  uniqueness, the anchor summarises everything the stream has seen, not only what is still cached.
- recall: MARC-style (Wu et al., arXiv 2510.07915): whole chunks leave oldest first, and each evicted chunk goes into
  a `ClipIndex` (vidpress.retrieval) under its mean projected token; a question is embedded with the VLM's own
  input embeddings (`VLMEmbedder`) and the `recall_clips` closest evicted chunks are prefilled again, at their
  original positions, for that question only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)

#: The policy registry: name -> class, filled by `@register_policy`.
POLICIES: dict[str, type[MemoryPolicy]] = {}


def register_policy(name: str):
    def add(cls):
        POLICIES[name] = cls
        cls.name = name
        return cls

    return add


def build_policy(name: str, **context) -> MemoryPolicy:
    """The policy registered as `name`; `context` (model, processor, recall_clips) is passed to those that use it."""
    if name not in POLICIES:
        raise ValueError(f"unknown memory policy {name!r}; available: {', '.join(sorted(POLICIES))}")
    return POLICIES[name].from_context(**context)


@dataclass
class MemoryView:
    """The cached visual tokens: features [N, D] (float32), chunk [N] and stream frame [N] of each, cache order."""

    features: torch.Tensor
    chunk: torch.Tensor
    frame: torch.Tensor

    def __len__(self) -> int:
        return int(self.chunk.numel())


def gaussian_similarity(x: torch.Tensor, centres: torch.Tensor, alphas=ALPHAS) -> torch.Tensor:
    """sum over a of exp(-||x - c||^2 / (2a)) for rows x [N, C] and their centres [N, C] -> [N]."""
    sq = (x - centres).pow(2).sum(-1)
    return sum(torch.exp(-sq / (2 * a)) for a in alphas)


def low_variance_channels(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Indices of the int(D * ratio) channels of x [N, D] with the lowest (biased) variance."""
    keep = max(1, int(x.shape[-1] * ratio))
    return x.var(0, unbiased=False).topk(keep, largest=False).indices


def frame_centres(x: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Each row's frame centre: the mean of the rows x [N, C] of its frame [N] -> [N, C]."""
    ids, inverse = frame.unique(return_inverse=True)
    sums = torch.zeros(len(ids), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    counts = torch.zeros(len(ids), dtype=x.dtype).index_add_(0, inverse, torch.ones_like(inverse, dtype=x.dtype))
    return (sums / counts[:, None])[inverse]


def largest_first(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest scores; ties go to the lower index (the older token)."""
    return torch.sort(scores, descending=True, stable=True).indices[:count]


class MemoryPolicy:
    """Base: no state. `choose` is the one method to override."""

    name = ""

    @classmethod
    def from_context(cls, **context) -> MemoryPolicy:
        return cls()

    def reset(self) -> None:
        """Forget the stream (called by `VideoStream.reset`)."""

    def choose(self, memory: MemoryView, incoming: torch.Tensor, incoming_frame: torch.Tensor,
               excess: int) -> torch.Tensor:
        """At least `excess` indices into `memory` to evict, given the incoming chunk's features [K, D]."""
        raise NotImplementedError

    def on_append(self, stream, chunk: int, features: torch.Tensor) -> None:
        """A chunk's kept features [K, D] entered the cache."""

    def on_evict(self, stream, chunks: list[int]) -> None:
        """These chunks lost their last visual token (called before they leave the cache)."""

    def before_question(self, stream, question: str) -> None:
        """A question is about to be prefilled; anything prefilled here is cropped away with it."""


@register_policy("fifo")
class FIFOPolicy(MemoryPolicy):
    """The oldest tokens leave first."""

    def choose(self, memory, incoming, incoming_frame, excess):
        return torch.arange(excess)


@register_policy("uniqueness")
class UniquenessPolicy(MemoryPolicy):
    """VidCom²'s token score over the memory and the incoming chunk; the most redundant memory tokens leave."""

    def choose(self, memory, incoming, incoming_frame, excess):
        x = torch.cat([memory.features, incoming])
        frames = torch.cat([memory.frame, incoming_frame])
        x = F.normalize(x[:, low_variance_channels(x)], dim=-1)
        centre = x.mean(0, keepdim=True).expand_as(x)
        score = gaussian_similarity(x, centre) + gaussian_similarity(x, frame_centres(x, frames))
        return largest_first(score[: len(memory)], excess)


@register_policy("stc")
class STCMemoryPolicy(MemoryPolicy):
    """STC's pruner memory as an eviction rule: the memory tokens closest to the anchor of every chunk seen leave."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.total: torch.Tensor | None = None  # [D] sum of the chunk means seen (constant-size memory)
        self.chunks = 0

    def anchor(self, incoming: torch.Tensor | None = None) -> torch.Tensor:
        """[D] mean of the chunk means seen (the incoming chunk's included when given)."""
        total, count = self.total, self.chunks
        if incoming is not None:
            total = incoming.mean(0) if total is None else total + incoming.mean(0)
            count += 1
        return total / count

    def choose(self, memory, incoming, incoming_frame, excess):
        x = torch.cat([memory.features, incoming])
        frames = torch.cat([memory.frame, incoming_frame])
        channels = low_variance_channels(x)
        x = F.normalize(x[:, channels], dim=-1)
        anchor = F.normalize(self.anchor(incoming)[channels], dim=-1).expand_as(x)
        score = gaussian_similarity(x, anchor) + gaussian_similarity(x, frame_centres(x, frames))
        return largest_first(score[: len(memory)], excess)

    def on_append(self, stream, chunk, features):
        mean = features.mean(0)
        self.total = mean if self.total is None else self.total + mean
        self.chunks += 1


@register_policy("recall")
class RecallPolicy(MemoryPolicy):
    """FIFO over whole chunks; evicted chunks are indexed and the closest ones come back for a question.

    Args:
        model, processor: the stream's model (for the question embedding). recall_clips: clips brought back per
        question. max_stored: evicted chunks kept for recall (their kept features stay in CPU memory); older ones
        are forgotten.
    """

    def __init__(self, model=None, processor=None, recall_clips: int = 2, max_stored: int = 1024):
        if isinstance(recall_clips, bool) or not isinstance(recall_clips, int) or recall_clips < 1:
            raise ValueError(f"recall_clips must be a positive integer; got {recall_clips!r}")
        self.model, self.processor = model, processor
        self.recall_clips, self.max_stored = recall_clips, max_stored
        self.embedder = None
        self.reset()

    @classmethod
    def from_context(cls, model=None, processor=None, recall_clips: int = 2, **_):
        return cls(model, processor, recall_clips)

    def reset(self):
        self.index = None
        self.records: dict[int, object] = {}  # index row -> ChunkRecord
        self.last_recalled: list[int] = []

    def choose(self, memory, incoming, incoming_frame, excess):
        # whole chunks, oldest first, until enough tokens leave
        order = memory.chunk
        counts = torch.unique_consecutive(order, return_counts=True)[1]
        chunks_needed = int((counts.cumsum(0) < excess).sum()) + 1
        return torch.arange(int(counts[:chunks_needed].sum()))

    def on_evict(self, stream, chunks):
        from vidpress.retrieval import ClipIndex

        view = stream.memory_view()
        for chunk in chunks:
            record = stream.chunks.get(chunk)
            rows = view.chunk == chunk
            if record is None or not bool(rows.any()):
                continue
            embedding = view.features[rows].mean(0)
            if self.index is None:
                self.index = ClipIndex(embedding.shape[0], backend="torch")
            self.index.add(embedding, [record.frames])
            self.records[len(self.index) - 1] = record
            if len(self.records) > self.max_stored:
                self.records.pop(min(self.records))

    def before_question(self, stream, question):
        self.last_recalled = []
        if self.index is None or not self.records:
            return
        if self.embedder is None:
            from vidpress.retrieval import VLMEmbedder

            self.embedder = VLMEmbedder(self.model, self.processor)
        query = self.embedder.embed_text([question])[0]
        _, rows = self.index.search(query, len(self.index))
        found = [int(r) for r in rows if int(r) in self.records][: self.recall_clips]
        records = sorted((self.records[r] for r in found), key=lambda rec: rec.index)  # chronological
        self.last_recalled = [rec.index for rec in records]
        stream.recall(records)
