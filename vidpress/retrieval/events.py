"""Event segmentation: cut a video into clips where its content changes (MARC's first retrieval step).

A detector maps per-frame embeddings [N, D] to boundaries: the index of the first frame of every event after the
first. Any object with `boundaries(embeddings) -> list[int]` plugs in (e.g. a learned shot-boundary model).
`detect_events` runs the whole step on a video file or a frame array with offline, weight-free frame descriptors.

    detect_events("bikes.mp4")          # [30, 76, 137, 187, 242]: the frames that open a new shot
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vidpress import video as video_io


@dataclass
class SimilarityDropDetector:
    """Boundaries where the cosine similarity of adjacent frames drops well below its typical level.

    A change d[i] = 1 - cos(e[i-1], e[i]) is a cut when it is above the video-wide threshold AND `contrast` times
    above the median change of the `window` frames on either side: a cut is an isolated spike, while fast motion
    or a pan changes many consecutive frames a lot and raises its own local baseline.

    Args:
        min_clip_frames: every clip has at least this many frames; of two candidate boundaries closer than this,
            the stronger drop wins.
        threshold: a fixed dissimilarity (1 - cosine) above which a cut is placed; None picks it per video as
            median + sensitivity * MAD of the adjacent dissimilarities, and never below `min_change`.
        sensitivity: how many median absolute deviations above the median a change must be to count as a cut.
        min_change: the smallest dissimilarity that can ever be a cut (keeps near-static videos in one clip).
        window: changes on each side of a candidate that form its local baseline.
        contrast: how many times its local baseline (median) a change must be; None disables the local test.
    """

    min_clip_frames: int = 2
    threshold: float | None = None
    sensitivity: float = 4.0
    min_change: float = 0.02
    window: int = 5
    contrast: float | None = 6.0

    def __post_init__(self):
        if int(self.min_clip_frames) != self.min_clip_frames or self.min_clip_frames < 1:
            raise ValueError(f"min_clip_frames must be an integer >= 1; got {self.min_clip_frames!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be a dissimilarity in (0, 2) or None; got {self.threshold!r}")
        if self.sensitivity <= 0 or self.min_change < 0:
            raise ValueError("sensitivity must be > 0 and min_change >= 0")
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"window must be an integer >= 1; got {self.window!r}")
        if self.contrast is not None and not self.contrast >= 1.0:
            raise ValueError(f"contrast must be a ratio >= 1 or None; got {self.contrast!r}")

    def changes(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Dissimilarity 1 - cos(e[i-1], e[i]) of adjacent frames: [N, D] -> [N - 1]."""
        e = F.normalize(embeddings.float(), dim=-1)
        return 1.0 - (e[1:] * e[:-1]).sum(-1)

    def local_baseline(self, change: torch.Tensor) -> torch.Tensor:
        """[N - 1] -> [N - 1]: median of the changes within `window` on either side, the change itself excluded."""
        w = self.window
        padded = torch.cat([change.new_full((w,), float("nan")), change, change.new_full((w,), float("nan"))])
        neighbours = padded.unfold(0, 2 * w + 1, 1)  # [n, 2w + 1], the centre column is the change itself
        neighbours = torch.cat([neighbours[:, :w], neighbours[:, w + 1 :]], dim=1)
        # A change with no neighbours (a 2-frame video) gets baseline 0: only the video-wide threshold applies.
        return torch.nan_to_num(neighbours.nanmedian(dim=1).values, nan=0.0)

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
        spike = change > cut
        if self.contrast is not None:
            spike &= change > self.contrast * self.local_baseline(change)
        candidates = [int(i) + 1 for i in torch.argsort(change, descending=True, stable=True) if spike[i]]
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
        raise ValueError(
            f"detector {type(detector).__name__} returned boundaries outside (0, {n}) or repeated: {boundaries}")
    return boundaries


def clips_from_boundaries(boundaries: list[int], num_frames: int) -> list[tuple[int, int]]:
    """[(start, end)] half-open frame ranges of the clips that `boundaries` cut `num_frames` frames into."""
    edges = [0, *boundaries, num_frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


# ------------------------------------------------------------------------------------------- frame descriptors


@dataclass
class FrameDescriptor:
    """Weight-free per-frame embedding for cut detection: colour histogram + grey layout + edge layout.

    Every frame is area-resized to `size` x `size` first (so the cost per frame is fixed). The parts:
    a joint RGB histogram of `colour_bins`^3 cells (square-rooted, so the cosine is the Bhattacharyya
    coefficient), the zero-mean grey image pooled to `grid` x `grid` (its cosine is a correlation, blind to
    brightness shifts), and the gradient magnitude pooled to `grid` x `grid`. Each part is L2-normalised and
    scaled by sqrt(weight), so the cosine of two descriptors is the weight-averaged cosine of their parts (a
    layout of little contrast is scaled down rather than normalised, so noise does not count as structure).
    A shot cut changes all three; motion inside a shot mostly moves the layouts, lighting mostly the histogram.
    """

    size: int = 64
    colour_bins: int = 8
    grid: int = 8
    weights: tuple[float, float, float] = (2.0, 1.0, 1.0)

    def __post_init__(self):
        if self.size < 8 or self.colour_bins < 2 or not 1 <= self.grid <= self.size // 2:
            raise ValueError(f"need size >= 8, colour_bins >= 2 and 1 <= grid <= size / 2; got {self}")
        if len(self.weights) != 3 or min(self.weights) < 0 or sum(self.weights) == 0:
            raise ValueError(f"weights must be 3 non-negative numbers, not all 0; got {self.weights!r}")

    @property
    def dim(self) -> int:
        return self.colour_bins**3 + 2 * self.grid**2

    def __call__(self, frames) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] (numpy or torch) -> float descriptors [N, dim]."""
        x = torch.as_tensor(check_frames(frames)).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return self.describe_resized(x)

    def describe_resized(self, x: torch.Tensor) -> torch.Tensor:
        """Frames already resized to [N, 3, size, size], float 0..255 -> [N, dim]."""
        n, bins = x.shape[0], self.colour_bins
        q = (x * (bins / 256.0)).long().clamp_(0, bins - 1)
        cell = ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).flatten(1)
        hist = torch.zeros(n, bins**3).scatter_add_(1, cell, torch.ones_like(cell, dtype=torch.float32)).sqrt()
        grey = x.mean(1, keepdim=True)
        layout = F.adaptive_avg_pool2d(grey, self.grid).flatten(1)
        layout = layout - layout.mean(1, keepdim=True)
        dx, dy = grey[..., :-1, 1:] - grey[..., :-1, :-1], grey[..., 1:, :-1] - grey[..., :-1, :-1]
        edges = F.adaptive_avg_pool2d((dx.square() + dy.square()).sqrt(), self.grid).flatten(1)
        # A layout with under ~4 grey levels of contrast per cell is mostly noise: it is scaled down instead of
        # normalised up, so flat or noisy frames are compared by colour. A flat frame's edges stay a zero part.
        floors = (1e-6, 4.0 * self.grid, 1e-6)
        parts = [p / p.norm(dim=1, keepdim=True).clamp(min=floor) * w**0.5
                 for p, w, floor in zip((hist, layout, edges), self.weights, floors)]
        return torch.cat(parts, dim=1)


def check_frames(frames) -> np.ndarray | torch.Tensor:
    """`frames` if it is a uint8 array or tensor [N, H, W, 3] with N >= 1; else a ValueError saying what it is."""
    if not isinstance(frames, (np.ndarray, torch.Tensor)):
        raise ValueError(f"frames must be a uint8 numpy array or tensor [N, H, W, 3]; got {type(frames).__name__}")
    shape, dtype = tuple(frames.shape), frames.dtype
    if len(shape) != 4 or shape[-1] != 3 or 0 in shape:
        raise ValueError(f"frames must have shape [N, H, W, 3] (RGB, N >= 1); got {shape}")
    if dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"frames must be uint8 RGB (0..255); got dtype {dtype}")
    return frames


def describe_video(video, descriptor: FrameDescriptor | None = None, batch_size: int = 256,
                   progress: bool = False) -> torch.Tensor:
    """Descriptors [N, dim] of EVERY frame of `video`: a path (decoded with PyAV, frame 0 first) or uint8 [N, H, W, 3].

    A file is streamed: frames are scaled to the descriptor's size by FFmpeg while decoding, so memory holds
    descriptors, not frames. Raises VideoDecodeError for a file that cannot be decoded.
    """
    descriptor = descriptor if descriptor is not None else FrameDescriptor()
    if isinstance(video, (str, os.PathLike)):
        return _describe_file(os.fspath(video), descriptor, batch_size, progress)
    frames = check_frames(video)
    chunks = [descriptor(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)]
    return torch.cat(chunks)


def _describe_file(path: str, descriptor: FrameDescriptor, batch_size: int, progress: bool) -> torch.Tensor:
    import av

    if not os.path.isfile(path):
        raise video_io.VideoDecodeError(
            f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a regular file")
    _, listed = video_io.probe_pyav(path)
    container, stream = video_io.open_pyav(path)
    size, pending, chunks, packets = descriptor.size, [], [], 0
    bar = tqdm(total=listed or None, desc="describing frames", unit="frame", disable=not progress)
    with container, bar:
        stream.thread_type = "AUTO"
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    raise video_io.VideoDecodeError(
                        f"{path}: corrupt or truncated data after {len(chunks) * batch_size + len(pending)} frames")
                packets += video_io.is_data_packet(packet)
                for frame in packet.decode():
                    pending.append(frame.to_ndarray(format="rgb24", width=size, height=size, interpolation="AREA"))
                    if len(pending) == batch_size:
                        chunks.append(descriptor(np.stack(pending)))
                        bar.update(len(pending))
                        pending = []
        except av.FFmpegError as error:
            raise video_io.VideoDecodeError(f"{path}: decoding failed ({error})") from error
        if pending:
            chunks.append(descriptor(np.stack(pending)))
            bar.update(len(pending))
    if packets < listed:
        raise video_io.VideoDecodeError(
            f"{path}: truncated: the container lists {listed} frames, {packets} could be read")
    if not chunks:
        raise video_io.VideoDecodeError(f"{path}: no decodable frames")
    return torch.cat(chunks)


def detect_events(video, detector=None, descriptor: FrameDescriptor | None = None, progress: bool = False) -> list[int]:
    """First frame of every event after the first, in the video's own frame numbering.

    video: a path (str / PathLike; every frame is decoded with PyAV, counted from 0) or uint8 frames
        [N, H, W, 3] (numpy or torch). detector: anything with `boundaries(embeddings [N, D]) -> list[int]`
        (default SimilarityDropDetector()). descriptor: the per-frame embedding, any callable uint8
        [N, H, W, 3] -> [N, D] for arrays (default FrameDescriptor(); a file is streamed through a FrameDescriptor).
    Raises VideoDecodeError (a ValueError) for a file that cannot be decoded, ValueError for a malformed array.
    """
    if descriptor is not None and not isinstance(descriptor, FrameDescriptor) and isinstance(video, (str, os.PathLike)):
        embeddings = descriptor(video_io.load(video).frames)  # a custom embedder sees full-size frames
    else:
        embeddings = describe_video(video, descriptor, progress=progress)
    return segment(embeddings, detector)
