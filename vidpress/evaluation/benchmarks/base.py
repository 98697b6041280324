"""What every benchmark shares: the Sample record, the Benchmark base, decoding of chosen frames, the sampling rule
several benchmarks use, annotation checks, answer parsing, and the registry behind `BENCHMARKS` / `get`."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidpress.video import DecodedVideo, VideoDecodeError

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


@dataclass
class Sample:
    """One multiple-choice question.

    id: unique within its benchmark and safe as a file name.
    video: the video file, or a folder of numbered JPEG frames (MVBench's episodic reasoning).
    question: the question text; options: the option texts in the annotation's order.
    answer: the correct option's letter ("A" for options[0]).
    categories: the benchmark's breakdowns for this question, e.g. {"task": "Action Sequence"}.
    clip: (start, end) seconds of the annotated segment, or None for the whole video.
    duration: the annotated duration in seconds, where the benchmark samples frames from it.
    ask_at: for a streaming benchmark, the stream time (seconds) the question is asked at; only frames before it
        may be seen.
    """

    id: str
    video: Path
    question: str
    options: list[str]
    answer: str
    categories: dict[str, str] = field(default_factory=dict)
    clip: tuple[float, float] | None = None
    duration: float | None = None
    ask_at: float | None = None


class Benchmark:
    """A benchmark: where its files are, how frames are sampled, what the prompt says, how answers are scored.

    Subclasses set the class attributes, implement `load`, `frame_indices`, `prompt` and `extract`, and are
    decorated with `@register_benchmark` to be found by name.
    """

    name = ""
    categories: tuple[str, ...] = ()
    system_prompt: str | None = None  # the system turn of the authors' prompt, if any
    answer_prefix = ""  # text written after the assistant turn opens, which the answer continues
    # A streaming benchmark asks each question at `Sample.ask_at`: `vidpress eval` feeds the frames before that time
    # to a `VideoStream` chunk by chunk and asks there (vidpress.evaluation.stream_eval).
    streaming = False

    def load(self, root: Path, skip_missing: bool = False) -> list[Sample]:
        """All questions under `root`; ValueError naming what is missing. skip_missing: drop questions whose
        video is absent (and tasks whose annotation file is absent) instead, with a warning."""
        raise NotImplementedError

    def frame_indices(self, sample: Sample, total_frames: int, fps: float, num_frames: int) -> np.ndarray:
        """Sorted indices (int64 [T], T <= num_frames) of the frames to decode; a rule may repeat a frame (a clip
        shorter than `num_frames` frames), and the frame is then given that many times, as the authors do."""
        raise NotImplementedError

    def prompt(self, sample: Sample) -> str:
        """The user text that follows the video."""
        raise NotImplementedError

    def extract(self, response: str, sample: Sample) -> str | None:
        """The option letter the response chooses, or None when the benchmark's rule finds none."""
        raise NotImplementedError

    def is_correct(self, response: str, sample: Sample) -> bool:
        return self.extract(response, sample) == sample.answer

    def parsed(self, response: str, sample: Sample) -> bool:
        """True when the benchmark's rule finds an option letter in the response (`summarize` counts the others)."""
        return self.extract(response, sample) is not None

    def frames(self, sample: Sample, num_frames: int) -> DecodedVideo:
        """Decode the sample's frames with the benchmark's sampling rule. VideoDecodeError when unreadable."""
        return decode_indices(sample.video, lambda total, fps: self.frame_indices(sample, total, fps, num_frames))

    def summarize(self, records: list[dict]) -> dict:
        """Accuracy overall and per category from per-sample records ({"correct", "categories", ...})."""
        summary = {"benchmark": self.name, "samples": len(records), "accuracy": _accuracy(records)}
        summary["errors"] = sum(1 for r in records if r.get("error"))
        # answers in which the benchmark's rule finds no option letter (scored wrong, as the benchmarks do)
        summary["unparsed"] = sum(1 for r in records
                                  if not r.get("error") and not r.get("parsed", r.get("prediction", "") is not None))
        summary["by"] = {}
        for key in self.categories:
            groups: dict[str, list[dict]] = {}
            for record in records:
                groups.setdefault(str(record["categories"].get(key)), []).append(record)
            summary["by"][key] = {
                value: {"accuracy": _accuracy(group), "samples": len(group)} for value, group in sorted(groups.items())
            }
        return summary


def _accuracy(records: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in records) / len(records) if records else float("nan")


BENCHMARKS: dict[str, Benchmark] = {}  # name -> the benchmark, in the order benchmarks/__init__.py imports them


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make an instance of `cls` available as `cls.name` (`get_benchmark`, the CLI's --bench).

    A new benchmark is one file with `@register_benchmark` on its class, plus one import line in
    `benchmarks/__init__.py`.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__}: set the class attribute `name` (the name `get_benchmark` and --bench "
                         "accept)")
    taken = BENCHMARKS.get(cls.name)
    if taken is not None and type(taken) is not cls:
        raise ValueError(f"benchmark name {cls.name!r} is already registered for {type(taken).__name__}")
    BENCHMARKS[cls.name] = cls()
    return cls


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as `name`; ValueError listing the accepted names otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; accepted: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def decode_indices(path: Path, choose: Callable[[int, float], np.ndarray]) -> DecodedVideo:
    """Decode the frames `choose(total_frames, fps)` picks (sorted int64 [T], repeats allowed) from a video file
    or a folder of numbered JPEGs. VideoDecodeError naming the file when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        return _decode_frame_folder(path, choose)
    # The probe and the single-pass decoder of vidpress.video; `video.load` itself only samples evenly or by fps.
    from vidpress.video import decode_pyav, probe_pyav

    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such file")
    fps, total = probe_pyav(str(path))
    if total == 0:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    # The decoder keeps each wanted frame once; repeated indices are filled in afterwards.
    unique, repeat = np.unique(choose(total, fps), return_inverse=True)
    frames, timestamps, _ = decode_pyav(str(path), unique, total, fps)
    repeat = repeat[repeat < len(frames)]  # frames past the end of a stream shorter than listed are dropped
    return DecodedVideo(
        frames=frames[repeat],
        frame_indices=unique[repeat].tolist(),
        timestamps=[float(timestamps[i]) for i in repeat],
        fps=fps,
        total_frames=total,
        duration=total / fps,
        path=str(path),
    )


MVBENCH_FRAME_FPS = 3.0  # MVBench's frame folders (TVQA) hold frames extracted at 3 fps, named 00001.jpg, ...


def _decode_frame_folder(folder: Path, choose) -> DecodedVideo:
    from PIL import Image

    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not names:
        raise VideoDecodeError(f"{folder}: a frame folder without .jpg/.png frames")
    indices = choose(len(names), MVBENCH_FRAME_FPS)
    frames = []
    for index in indices.tolist():
        try:
            with Image.open(folder / names[index]) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise VideoDecodeError(f"{folder / names[index]}: cannot read the frame ({error})") from error
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise VideoDecodeError(f"{folder}: frames of different sizes {sorted(sizes)}")
    return DecodedVideo(
        frames=np.stack(frames),
        frame_indices=indices.tolist(),
        timestamps=[i / MVBENCH_FRAME_FPS for i in indices.tolist()],
        fps=MVBENCH_FRAME_FPS,
        total_frames=len(names),
        duration=len(names) / MVBENCH_FRAME_FPS,
        path=str(folder),
    )


def frames_before(total_frames: int, fps: float, num_frames: int, seconds: float) -> np.ndarray:
    """`num_frames` frame indices spread evenly over [0, seconds) of a video (the frames a streaming question may
    see), each the middle of its segment; fewer when that span holds fewer frames."""
    last = min(total_frames, max(1, int(np.floor(seconds * fps))))  # frames strictly before the question time
    count = min(num_frames, last)
    return np.floor((np.arange(count) + 0.5) * last / count).astype(np.int64)


def segment_middles(total_frames: int, fps: float, num_frames: int, clip=None, first_index: int = 0) -> np.ndarray:
    """MVBench's rule (also MLVU's): split [start, end] into `num_frames` equal segments, take each middle.

    With a clip (start, end) in seconds the range is its frames; otherwise the whole video. first_index: 1 for
    MVBench's frame folders, whose files count from 1 (the returned indices are then 0-based into the sorted files).
    """
    start_s, end_s = clip if clip is not None else (-1e5, 1e5)
    last = total_frames - 1 + first_index
    start = max(first_index, round(start_s * fps))
    end = min(round(end_s * fps), last)
    if end < start:  # a clip outside the video: fall back to the whole video rather than decode nothing
        start, end = first_index, last
    segment = (end - start) / num_frames
    indices = np.array([int(start + segment / 2 + np.round(segment * i)) for i in range(num_frames)]) - first_index
    return np.clip(indices, 0, total_frames - 1)


def check_root(root: Path, name: str) -> Path:
    """`root` as a Path when it is a folder; ValueError naming the --data option otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data {root}: no such folder (the {name} data root)")
    return root


def drop_missing_videos(samples: list[Sample], skip_missing: bool, layout: str) -> list[Sample]:
    """`samples` whose video file exists; a missing one is a ValueError listing them (described by `layout`),
    or, with `skip_missing`, a logged warning and the question is left out."""
    missing = [s for s in samples if not s.video.exists()]
    if not missing:
        return samples
    if not skip_missing:
        shown = "\n  ".join(str(s.video) for s in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"{len(missing)} of {len(samples)} videos are missing ({layout}):\n  {shown}{more}\n"
            "download and unpack them, or pass --skip-missing to evaluate only the questions whose video is present"
        )
    logger.warning("skipping %d of %d questions whose video is missing", len(missing), len(samples))
    present = {id(s) for s in samples} - {id(s) for s in missing}
    return [s for s in samples if id(s) in present]


def letter_of(options: list[str], answer: str, where: str) -> str:
    """The letter (A, B, ...) of `answer` among `options`; ValueError naming `where` when it is not one of them."""
    if answer not in options:
        raise ValueError(f"{where}: the answer {answer!r} is not one of the candidates {options}")
    return LETTERS[options.index(answer)]


_ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)


def letter_after_prefixes(response: str, letters: str) -> str | None:
    """Video-MME's extraction (LongVideoBench's too): drop stock answer phrases, then take the first capital
    letter among `letters`."""
    text = response.strip()
    for prefix in _ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    match = re.search(f"[{letters}]", text)
    return match.group(0) if match else None
