"""Event segmentation: cut a video into clips where its content changes (MARC's first retrieval step).

A detector maps per-frame embeddings [N, D] to boundaries: the index of the first frame of every event after the
first. Any object with `boundaries(embeddings) -> list[int]` plugs in (e.g. a learned shot-boundary model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SimilarityDropDetector:
    """Boundaries where the cosine similarity of adjacent frames drops well below its typical level.

    Args:
        min_clip_frames: every clip has at least this many frames; of two candidate boundaries closer than this,
            the stronger drop wins.
        threshold: a fixed dissimilarity (1 - cosine) above which a cut is placed; None picks it per video as
            median + sensitivity * MAD of the adjacent dissimilarities, and never below `min_change`.
        sensitivity: how many median absolute deviations above the median a change must be to count as a cut.
        min_change: the smallest dissimilarity that can ever be a cut (keeps near-static videos in one clip).
    """

    min_clip_frames: int = 2
    threshold: float | None = None
    sensitivity: float = 4.0
    min_change: float = 0.02

    def __post_init__(self):
        if int(self.min_clip_frames) != self.min_clip_frames or self.min_clip_frames < 1:
            raise ValueError(f"min_clip_frames must be an integer >= 1; got {self.min_clip_frames!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be a dissimilarity in (0, 2) or None; got {self.threshold!r}")
        if self.sensitivity <= 0 or self.min_change < 0:
            raise ValueError("sensitivity must be > 0 and min_change >= 0")

    def changes(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Dissimilarity 1 - cos(e[i-1], e[i]) of adjacent frames: [N, D] -> [N - 1]."""
        e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        return 1.0 - (e[1:] * e[:-1]).sum(-1)

    def boundaries(self, embeddings: torch.Tensor) -> list[int]:
        """[N, D] per-frame embeddings -> sorted first-frame indices of the events after the first."""
        check_embeddings(embeddings)
        n = embeddings.shape[0]
        if n < 2:
            return []
        change = self.changes(embeddings)
        if self.threshold is not None:
            cut = self.threshold
        else:
            median = change.median()
            mad = (change - median).abs().median()
            cut = max(float(median + self.sensitivity * mad), self.min_change)
        candidates = [int(i) + 1 for i in torch.argsort(change, descending=True, stable=True) if change[i] > cut]
        chosen: list[int] = []
        for frame in candidates:  # strongest first: a weaker cut too close to a chosen one is dropped
            if frame < self.min_clip_frames or n - frame < self.min_clip_frames:
                continue
            if all(abs(frame - other) >= self.min_clip_frames for other in chosen):
                chosen.append(frame)
        return sorted(chosen)


def check_embeddings(embeddings) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[0] == 0:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"per-frame embeddings must be a tensor [N, D] with N >= 1; got {shape}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("per-frame embeddings contain NaN or Inf values")


def segment(embeddings: torch.Tensor, detector=None) -> list[int]:
    """Event boundaries of per-frame embeddings [N, D]: the first frame of every event after the first.

    detector: any object with `boundaries(embeddings) -> list[int]`; default SimilarityDropDetector().
    """
    detector = detector if detector is not None else SimilarityDropDetector()
    boundaries = sorted(int(b) for b in detector.boundaries(embeddings))
    n = embeddings.shape[0]
    if any(not 0 < b < n for b in boundaries) or len(set(boundaries)) != len(boundaries):
        raise ValueError(f"detector {type(detector).__name__} returned boundaries outside (0, {n}) or repeated: {boundaries}")
    return boundaries


def clips_from_boundaries(boundaries: list[int], num_frames: int) -> list[tuple[int, int]]:
    """[(start, end)] half-open frame ranges of the clips that `boundaries` cut `num_frames` frames into."""
    edges = [0, *boundaries, num_frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]
