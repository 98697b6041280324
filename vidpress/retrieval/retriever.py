"""MARC's Visual Memory Retriever: index a video's event clips once, then fetch the top-k clips for each question.

    retriever = VisualMemoryRetriever(CLIPEmbedder.from_pretrained("siglip-folder"), top_k=3)
    memory = retriever.index_video("long.mp4")                   # segment + embed + index, once per video
    memory.save("long.memory")                                   # ... and VideoMemory.load later
    clips = retriever.retrieve(memory, "Who opens the door?")    # [(start, end), ...] in time order
    frames, indices = retriever.episodic_video(sampled_frames, "Who opens the door?", memory=memory,
                                               frame_indices=sampled_indices)

Retrieval runs before the vision encoder: only the frames of the retrieved clips are encoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidpress import video as video_io
from vidpress.retrieval.embedders import Embedder
from vidpress.retrieval.events import FrameDescriptor, check_frames, clips_from_boundaries, describe_video, segment
from vidpress.retrieval.index import ClipIndex


@dataclass
class VideoMemory:
    """One indexed video: its event clips [(start, end)] (half-open, the video's frame numbering) and their
    embeddings in a ClipIndex. Index a long video once, `save` it, and `load` it for every later question."""

    index: ClipIndex
    num_frames: int
    source: str | None = None
    embedder: str | None = None

    @property
    def clips(self) -> list[tuple[int, int]]:
        return list(self.index.ranges)

    def save(self, directory) -> Path:
        self.index.metadata.update(num_frames=self.num_frames, source=self.source, embedder=self.embedder)
        return self.index.save(directory)

    @classmethod
    def load(cls, directory, backend: str = "auto") -> VideoMemory:
        index = ClipIndex.load(directory, backend)
        if "num_frames" not in index.metadata:
            raise ValueError(
                f"{directory} holds a clip index but not a video memory (no num_frames); save it with VideoMemory.save")
        meta = index.metadata
        return cls(index, int(meta["num_frames"]), meta.get("source"), meta.get("embedder"))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (clips to retrieve) must be an integer >= 1; got {k!r}")
    return int(k)


def clip_frame_indices(clips: list[tuple[int, int]], frames_per_clip: int | None) -> list[np.ndarray]:
    """Per clip, the frames embedded for it: `frames_per_clip` evenly spaced ones (None: all), at least one."""
    out = []
    for start, end in clips:
        count = end - start if frames_per_clip is None else min(frames_per_clip, end - start)
        out.append(np.unique(np.linspace(start, end - 1, count).round().astype(np.int64)))
    return out


def clip_groups(clips: list[tuple[int, int]], temporal_patch: int, num_frames: int) -> list[int]:
    """The temporal groups (frames g * temporal_patch .. (g + 1) * temporal_patch - 1, as a Video LLM that merges
    `temporal_patch` frames per temporal token encodes them) that the clips [(start, end)] touch, sorted: the
    clips widened outward to whole groups, so the groups' encoder features are those of the clips' frames."""
    if isinstance(temporal_patch, bool) or not isinstance(temporal_patch, (int, np.integer)) or temporal_patch < 1:
        raise ValueError(f"temporal_patch must be an integer >= 1; got {temporal_patch!r}")
    if num_frames % temporal_patch:
        raise ValueError(f"a video of {num_frames} frames is not whole groups of temporal_patch={temporal_patch}")
    groups = set()
    for start, end in clips:
        if not 0 <= start < end <= num_frames:
            raise ValueError(f"clip ({start}, {end}) is not a non-empty frame range of a {num_frames}-frame video")
        groups.update(range(start // temporal_patch, (end - 1) // temporal_patch + 1))
    return sorted(groups)


@dataclass
class VisualMemoryRetriever:
    """Segment a video into event clips, embed and index them, retrieve the clips that match a question.

    Args:
        embedder: anything with `embed_frames(uint8 [N, H, W, 3]) -> [N, D]` and `embed_text(list[str]) -> [Q, D]`
            (CLIPEmbedder, VLMEmbedder, or your own).
        detector: event boundary detector, `boundaries(embeddings [N, D]) -> list[int]` (default
            SimilarityDropDetector() over FrameDescriptor features).
        top_k: clips retrieved per question (MARC: 3).
        frames_per_clip: frames embedded per clip, evenly spaced (None: every frame); a clip's embedding is the
            normalised mean of its frames' embeddings.
        descriptor: per-frame features the detector segments (default FrameDescriptor()).
        backend: ClipIndex backend ("auto", "faiss", "torch").
        progress: progress bars while describing and embedding frames.
    """

    embedder: Embedder
    detector: object = None
    top_k: int = 3
    frames_per_clip: int | None = 8
    descriptor: FrameDescriptor = field(default_factory=FrameDescriptor)
    backend: str = "auto"
    progress: bool = False

    def __post_init__(self):
        _check_k(self.top_k)
        if self.frames_per_clip is not None and (
            int(self.frames_per_clip) != self.frames_per_clip or self.frames_per_clip < 1
        ):
            raise ValueError(f"frames_per_clip must be a positive integer or None; got {self.frames_per_clip!r}")
        if not isinstance(self.embedder, Embedder):
            raise ValueError(f"embedder {type(self.embedder).__name__} lacks embed_frames(frames) / embed_text(texts)")

    def index_video(self, video) -> VideoMemory:
        """Segment, embed and index `video`: a path (every frame decoded for the cuts) or uint8 [N, H, W, 3]."""
        is_path = isinstance(video, (str, os.PathLike))
        descriptors = describe_video(video, self.descriptor, progress=self.progress)
        num_frames = descriptors.shape[0]
        clips = clips_from_boundaries(segment(descriptors, self.detector), num_frames)
        picked = clip_frame_indices(clips, self.frames_per_clip)
        wanted = np.concatenate(picked)
        if is_path:
            path = os.fspath(video)
            rate, listed = video_io.probe_pyav(path)
            frames, _, _ = video_io.decode_pyav(path, wanted, listed, rate)
            if len(frames) != len(wanted):
                raise video_io.VideoDecodeError(f"{path}: {len(frames)} of the {len(wanted)} frames to embed decoded")
        else:
            frames = video[torch.as_tensor(wanted)] if isinstance(video, torch.Tensor) else video[wanted]
        frame_embeddings = self.embedder.embed_frames(frames)
        if frame_embeddings.dim() != 2 or frame_embeddings.shape[0] != len(wanted):
            raise ValueError(f"{type(self.embedder).__name__}.embed_frames gave {tuple(frame_embeddings.shape)} "
                             f"for {len(wanted)} frames")
        clip_embeddings = torch.stack([part.mean(0) for part in frame_embeddings.split([len(p) for p in picked])])
        index = ClipIndex(frame_embeddings.shape[1], self.backend)
        index.add(F.normalize(clip_embeddings.float(), dim=-1), clips)
        return VideoMemory(index, num_frames, os.fspath(video) if is_path else None, type(self.embedder).__name__)

    def retrieve(self, memory: VideoMemory, question: str, k: int | None = None,
                 candidates=None) -> list[tuple[int, int]]:
        """The k clips of `memory` most similar to `question` (default `top_k`), as [(start, end)] in time order.

        candidates: optional clip ids to choose among (e.g. clips that hold a sampled frame); None: all clips.
        """
        k = _check_k(self.top_k if k is None else k)
        if not isinstance(memory, VideoMemory):
            raise ValueError(
                f"memory must be a VideoMemory from index_video or VideoMemory.load; got {type(memory).__name__}")
        query = self.embedder.embed_text([question])[0]
        if query.shape != (memory.index.dim,):
            raise ValueError(
                f"the question embedding has width {query.shape[-1]} but the memory's clips have width "
                f"{memory.index.dim}: the memory was indexed with a different embedder ({memory.embedder})"
            )
        _, ids = memory.index.search(query, len(memory.index))
        allowed = None if candidates is None else {int(c) for c in candidates}
        ranked = [int(i) for i in ids if allowed is None or int(i) in allowed][:k]
        return sorted(memory.clips[i] for i in ranked)

    def episodic_video(self, frames, question: str, k: int | None = None, memory: VideoMemory | None = None,
                       frame_indices=None) -> tuple[np.ndarray | torch.Tensor, torch.Tensor]:
        """MARC's "episodic memory" video: the frames of the top-k clips for `question`, in time order.

        frames: uint8 [N, H, W, 3], e.g. frames sampled from a long video; frame_indices: their frame numbers in
        the video (default 0..N-1, i.e. `frames` is the whole video). memory: the video's index (default: index
        `frames` now). Only clips holding at least one of `frames` compete.
        Returns (frames [N', H, W, 3] of the same type, frame_indices LongTensor [N']).
        """
        check_frames(frames)
        n = len(frames)
        indices = (torch.arange(n) if frame_indices is None
                   else torch.as_tensor(np.asarray(frame_indices), dtype=torch.long))
        if indices.shape != (n,):
            raise ValueError(f"frame_indices must hold one index per frame ({n}); got shape {tuple(indices.shape)}")
        if n > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise ValueError("frame_indices must be strictly increasing")
        if memory is None:
            if frame_indices is not None and not torch.equal(indices, torch.arange(n)):
                raise ValueError(
                    "frame_indices other than 0..N-1 need the memory of the whole video (index_video(path))")
            memory = self.index_video(frames)
        if int(indices[0]) < 0 or int(indices[-1]) >= memory.num_frames:
            raise ValueError(f"frame_indices span [{int(indices[0])}, {int(indices[-1])}] but the memory indexes a "
                             f"video of {memory.num_frames} frames: it belongs to another video")
        starts = torch.tensor([start for start, _ in memory.clips])
        clip_of_frame = torch.searchsorted(starts, indices, right=True) - 1
        clips = self.retrieve(memory, question, k, candidates=clip_of_frame.unique().tolist())
        keep = torch.zeros(n, dtype=torch.bool)
        for start, end in clips:
            keep |= (indices >= start) & (indices < end)
        chosen = keep.nonzero().squeeze(1)
        subset = frames[chosen] if isinstance(frames, torch.Tensor) else frames[chosen.numpy()]
        return subset, indices[chosen]
