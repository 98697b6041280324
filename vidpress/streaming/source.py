"""Live frame sources: anything PyAV opens (a file, an RTSP/HTTP URL, a capture device), decoded frame by frame,
sampled at a fixed rate and cut into chunks of equal duration."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np


class SourceError(ValueError):
    """The source failed: it cannot be opened, a chunk does not decode, or it dropped mid-stream. `seconds`: the
    stream time reached before the failure (None when nothing was read)."""

    def __init__(self, message: str, seconds: float | None = None):
        super().__init__(message)
        self.seconds = seconds


def _open(source: str, options: dict | None):
    import av

    try:
        container = av.open(source, options=options or {}, timeout=10.0)
    except (av.FFmpegError, OSError) as error:
        raise SourceError(f"{source}: cannot open as a video source ({error})") from error
    if not container.streams.video:
        container.close()
        raise SourceError(f"{source}: no video stream")
    return container, container.streams.video[0]


def video_chunks(source: str, fps: float = 2.0, chunk_seconds: float = 1.0, realtime: bool = False,
                 options: dict | None = None) -> Iterator[tuple[np.ndarray, list[float]]]:
    """Yield (frames uint8 [F, H, W, 3], timestamps [F] seconds from the source's first frame), one chunk per
    `chunk_seconds` of source time, frames sampled at `fps` (the first decoded frame at or after each sampling
    time). `realtime` paces a file at its own clock (a live source paces itself). A decode failure or a source
    that drops raises `SourceError` after everything read so far was yielded (the partial chunk included)."""
    import av

    if not fps > 0 or not chunk_seconds > 0:
        raise ValueError(f"fps and chunk_seconds must be > 0; got fps={fps!r}, chunk_seconds={chunk_seconds!r}")
    container, stream = _open(source, options)
    frames: list[np.ndarray] = []
    seconds: list[float] = []
    first = None
    next_sample = 0.0
    chunk_end = chunk_seconds
    started = time.monotonic()
    reached = None
    count = 0
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    with container:
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as error:
                if frames:  # what was read before the failure still reaches the stream
                    yield np.stack(frames), seconds
                raise SourceError(f"{source}: the source failed after {reached or 0:.1f} s of stream time "
                                  f"({type(error).__name__}: {error})", reached) from error
            count += 1
            if frame.time is not None:
                stamp = frame.time
            elif rate:  # no timestamp (some live sources): place it by the nominal frame rate
                stamp = (count - 1) / rate
            else:
                raise SourceError(f"{source}: a frame has no timestamp and the stream no frame rate", reached)
            if first is None:
                first = stamp
            t = stamp - first
            reached = t
            while t >= chunk_end and frames:
                yield np.stack(frames), seconds
                frames, seconds = [], []
                chunk_end += chunk_seconds
            while t >= chunk_end:  # a gap without sampled frames
                chunk_end += chunk_seconds
            if t + 1e-9 < next_sample:
                continue
            if realtime:
                delay = t - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
            frames.append(frame.to_ndarray(format="rgb24"))
            seconds.append(t)
            next_sample = (int(t * fps + 1e-6) + 1) / fps
    if frames:
        yield np.stack(frames), seconds


def parse_question(text: str) -> tuple[float, str]:
    """'30: What is on the table?' -> (30.0, 'What is on the table?')."""
    when, sep, question = text.partition(":")
    try:
        seconds = float(when)
    except ValueError:
        seconds = None
    if not sep or seconds is None or seconds < 0 or not question.strip():
        raise ValueError(f"--ask takes 'SECONDS: question' (e.g. '30: What is on the table?'); got {text!r}")
    return seconds, question.strip()
