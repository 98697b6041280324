"""Loaders, frame sampling and scoring for four published video-QA benchmarks, read from local folders.

Each benchmark reads the annotation layout its authors publish, samples frames with the rule of the authors'
evaluation code, writes the prompt that code writes, and extracts and scores the answer as that code does:

==================  =====================================================================================
mvbench             OpenGVLab/MVBench: json/<task>.json + video/<source>/... (20 tasks); frames at segment
                    middles inside the annotated clip; "Best option:(" answer prefix; accuracy per task.
videomme            lmms-lab/Video-MME: videomme/test-00000-of-00001.parquet + data/<videoID>.mp4; evenly
                    spaced frames; "The best answer is:"; accuracy per duration, domain, sub-category, task type.
mlvu                MLVU/MVLU (dev): [MLVU/]json/<n>_<task>.json + video/<n>_<task>/ (7 multiple-choice tasks);
                    segment-middle frames; "Best option: ("; accuracy per task and M-Avg (mean over tasks).
longvideobench      longvideobench/LongVideoBench: lvb_val.json + videos/; at most one frame per second of the
                    annotated duration; letter answer; accuracy per duration group and question category.
==================  =====================================================================================

Subtitles (Video-MME "w/ subs", LongVideoBench's interleaved subtitles) are not used: these are the
video-only settings of each benchmark.
"""

from __future__ import annotations

import json
import logging
import random
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
    """

    id: str
    video: Path
    question: str
    options: list[str]
    answer: str
    categories: dict[str, str] = field(default_factory=dict)
    clip: tuple[float, float] | None = None
    duration: float | None = None


class Benchmark:
    """A benchmark: where its files are, how frames are sampled, what the prompt says, how answers are scored.

    Subclasses set the class attributes and implement `load`, `frame_indices`, `prompt` and `extract`.
    """

    name = ""
    categories: tuple[str, ...] = ()
    system_prompt: str | None = None  # the system turn of the authors' prompt, if any
    answer_prefix = ""  # text written after the assistant turn opens, which the answer continues

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

    def frames(self, sample: Sample, num_frames: int) -> DecodedVideo:
        """Decode the sample's frames with the benchmark's sampling rule. VideoDecodeError when unreadable."""
        return decode_indices(sample.video, lambda total, fps: self.frame_indices(sample, total, fps, num_frames))

    def summarize(self, records: list[dict]) -> dict:
        """Accuracy overall and per category from per-sample records ({"correct", "categories", ...})."""
        summary = {"benchmark": self.name, "samples": len(records), "accuracy": _accuracy(records)}
        summary["errors"] = sum(1 for r in records if r.get("error"))
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


def _check_root(root: Path, name: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data {root}: no such folder (the {name} data root)")
    return root


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the {what} ({error.strerror})") from error
    except ValueError as error:
        raise ValueError(f"{path}: the {what} is not valid JSON ({error})") from error


def _require_keys(entry: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (expected {', '.join(keys)})")


def _drop_missing_videos(samples: list[Sample], skip_missing: bool, layout: str) -> list[Sample]:
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


def _letter_of(options: list[str], answer: str, where: str) -> str:
    if answer not in options:
        raise ValueError(f"{where}: the answer {answer!r} is not one of the candidates {options}")
    return LETTERS[options.index(answer)]


# ------------------------------------------------------------------------------------------------ MVBench

# task -> (annotation file, video folder under video/, has an annotated clip (start/end))
MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", False),
    "Action Localization": ("action_localization.json", "sta/sta_video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", False),
    "Action Count": ("action_count.json", "perception/videos", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", False),
    "State Change": ("state_change.json", "perception/videos", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", False),
    "Character Order": ("character_order.json", "perception/videos", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", True),  # frame folders
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", False),
}


class MVBench(Benchmark):
    """MVBench (Li et al., CVPR 2024): 20 temporal tasks of 200 questions, 3-5 options each."""

    name = "mvbench"
    categories = ("task",)
    system_prompt = (
        "Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
        "of objects, and the action and pose of persons. Based on your observations, select the best option that "
        "accurately addresses the question.\n"
    )
    answer_prefix = "Best option:("

    def load(self, root, skip_missing=False):
        root = _check_root(root, "MVBench")
        layout = "MVBench layout: json/<task>.json and video/<source>/<file>"
        files = {task: root / "json" / spec[0] for task, spec in MVBENCH_TASKS.items()}
        absent = [str(path) for path in files.values() if not path.is_file()]
        if len(absent) == len(files) or (absent and not skip_missing):
            raise ValueError(
                f"{len(absent)} of {len(files)} MVBench annotation files are missing:\n  " + "\n  ".join(absent)
                + f"\n({layout}; --skip-missing evaluates the tasks that are present)"
            )
        samples = []
        for task, (file, folder, has_clip) in MVBENCH_TASKS.items():
            if not files[task].is_file():
                logger.warning("MVBench: skipping task %r (no %s)", task, files[task])
                continue
            entries = _read_json(files[task], "MVBench annotation")
            for i, entry in enumerate(entries):
                where = f"{files[task]} entry {i}"
                _require_keys(entry, ("video", "question", "candidates", "answer"), where)
                clip = (float(entry["start"]), float(entry["end"])) if has_clip and "start" in entry else None
                options = [str(c) for c in entry["candidates"]]
                samples.append(
                    Sample(
                        id=f"{Path(file).stem}-{i:04d}",
                        video=root / "video" / folder / entry["video"],
                        question=entry["question"],
                        options=options,
                        answer=_letter_of(options, str(entry["answer"]), where),
                        categories={"task": task},
                        clip=clip,
                    )
                )
        return _drop_missing_videos(samples, skip_missing, layout)

    def frame_indices(self, sample, total_frames, fps, num_frames):
        first = 1 if sample.video.is_dir() else 0  # frame folders count from 00001.jpg
        return segment_middles(total_frames, fps, num_frames, sample.clip, first)

    def prompt(self, sample):
        options = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(sample.options))
        return f"Question: {sample.question}\nOptions:\n{options}\nOnly give the best option."

    def extract(self, response, sample):
        match = re.match(r"\(+([a-j])(?![a-z])", _mvbench_word(response))
        return match.group(1).upper() if match else None

    def is_correct(self, response, sample):
        # The authors' rule: the first word of "(" + the response's first line matches "(x)" either way round.
        # A word without any option letter is wrong (as in the later VideoChat2 evaluation code; the first
        # release counted an empty answer, "(", as correct).
        word = _mvbench_word(response)
        if not re.search(r"[a-g]", word):
            return False
        truth = f"({sample.answer.lower()})"
        return word.replace(".", "") in truth or truth in word


def _mvbench_word(response: str) -> str:
    """The answer continues "Best option:(", so the authors prepend "(" to the first line and read its first word."""
    return ("(" + response.strip().split("\n")[0]).lower().split(" ")[0]


# ----------------------------------------------------------------------------------------------- Video-MME


class VideoMME(Benchmark):
    """Video-MME (Fu et al., CVPR 2025): 2,700 questions on 900 videos of 11 s to 1 h, four options each."""

    name = "videomme"
    categories = ("duration", "domain", "sub_category", "task_type")
    annotation = Path("videomme") / "test-00000-of-00001.parquet"

    def load(self, root, skip_missing=False):
        root = _check_root(root, "Video-MME")
        layout = "Video-MME layout: videomme/test-00000-of-00001.parquet and data/<videoID>.mp4"
        path = root / self.annotation
        if not path.is_file():
            raise ValueError(f"{path}: the Video-MME annotation file is missing ({layout})")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Video-MME's parquet annotations needs pyarrow: pip install pyarrow") from None
        rows = pq.read_table(path).to_pylist()
        samples = []
        for i, row in enumerate(rows):
            where = f"{path} row {i}"
            _require_keys(row, ("question_id", "videoID", "question", "options", "answer", *self.categories), where)
            # Options are stored with their letter ("A. ..."); keep the text only, the prompt writes the letters.
            options = [re.sub(r"^[A-J]\.\s*", "", str(o)) for o in row["options"]]
            if row["answer"] not in LETTERS[: len(options)]:
                raise ValueError(f"{where}: the answer {row['answer']!r} is not an option letter")
            samples.append(
                Sample(
                    id=str(row["question_id"]),
                    video=root / "data" / f"{row['videoID']}.mp4",
                    question=row["question"],
                    options=options,
                    answer=row["answer"],
                    categories={k: str(row[k]) for k in self.categories},
                )
            )
        return _drop_missing_videos(samples, skip_missing, layout)

    def frame_indices(self, sample, total_frames, fps, num_frames):
        return np.linspace(0, total_frames - 1, num_frames).astype(np.int64)

    def prompt(self, sample):
        options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(sample.options))
        return (
            "Select the best answer to the following multiple-choice question based on the video. Respond with only "
            f"the letter (A, B, C, or D) of the correct option.\n{sample.question}\n{options}\nThe best answer is:"
        )

    def extract(self, response, sample):
        return _letter_after_prefixes(response, "ABCD")


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


def _letter_after_prefixes(response: str, letters: str) -> str | None:
    """Video-MME's extraction: drop stock answer phrases, then take the first capital letter among `letters`."""
    text = response.strip()
    for prefix in _ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    match = re.search(f"[{letters}]", text)
    return match.group(0) if match else None


# -------------------------------------------------------------------------------------------------- MLVU

# task (question_type) -> annotation file; videos live in video/<file stem> (the release) or video/<task>.
MLVU_TASKS = {
    "plotQA": "1_plotQA.json",
    "needle": "2_needle.json",
    "ego": "3_ego.json",
    "count": "4_count.json",
    "order": "5_order.json",
    "anomaly_reco": "6_anomaly_reco.json",
    "topic_reasoning": "7_topic_reasoning.json",
}


class MLVU(Benchmark):
    """MLVU dev set (Zhou et al., CVPR 2025): the 7 multiple-choice tasks (the 2 generation tasks need a judge)."""

    name = "mlvu"
    categories = ("task",)
    system_prompt = (
        "Carefully watch this video and pay attention to every detail. Based on your observations, select the best "
        "option that accurately addresses the following question:\n"
    )
    answer_prefix = "Best option: ("

    def load(self, root, skip_missing=False):
        root = _check_root(root, "MLVU")
        if not (root / "json").is_dir() and (root / "MLVU" / "json").is_dir():
            root = root / "MLVU"  # the dataset repository wraps the release in MLVU/
        layout = "MLVU layout: json/<n>_<task>.json and video/<n>_<task>/<file> (optionally under MLVU/)"
        absent = [str(root / "json" / f) for f in MLVU_TASKS.values() if not (root / "json" / f).is_file()]
        if len(absent) == len(MLVU_TASKS) or (absent and not skip_missing):
            raise ValueError(
                f"{len(absent)} of {len(MLVU_TASKS)} MLVU annotation files are missing:\n  " + "\n  ".join(absent)
                + f"\n({layout}; --skip-missing evaluates the tasks that are present)"
            )
        samples = []
        for task, file in MLVU_TASKS.items():
            path = root / "json" / file
            if not path.is_file():
                logger.warning("MLVU: skipping task %r (no %s)", task, path)
                continue
            folder = root / "video" / Path(file).stem
            if not folder.is_dir() and (root / "video" / task).is_dir():
                folder = root / "video" / task
            for i, entry in enumerate(_read_json(path, "MLVU annotation")):
                where = f"{path} entry {i}"
                _require_keys(entry, ("video", "question", "candidates", "answer"), where)
                options = [str(c) for c in entry["candidates"]]
                samples.append(
                    Sample(
                        id=f"{task}-{i:04d}",
                        video=folder / entry["video"],
                        question=entry["question"],
                        options=options,
                        answer=_letter_of(options, str(entry["answer"]), where),
                        categories={"task": task},
                        duration=entry.get("duration"),
                    )
                )
        return _drop_missing_videos(samples, skip_missing, layout)

    def frame_indices(self, sample, total_frames, fps, num_frames):
        return segment_middles(total_frames, fps, num_frames)

    def prompt(self, sample):
        options = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(sample.options))
        return f"Question: {sample.question}\nOptions:\n{options}\nOnly give the best option."

    def extract(self, response, sample):
        # The authors' rule: the character before the first ")" (the answer continues "Best option: ("),
        # else the whole response, compared with the letter as is.
        text = response.strip()
        if ")" in text:
            text = text[max(text.index(")") - 1, 0) : text.index(")")]
        return text if len(text) == 1 and text in LETTERS else None

    def summarize(self, records):
        summary = super().summarize(records)
        tasks = summary["by"]["task"].values()
        summary["m_avg"] = sum(t["accuracy"] for t in tasks) / len(tasks) if tasks else float("nan")
        return summary


# ------------------------------------------------------------------------------------------ LongVideoBench


class LongVideoBench(Benchmark):
    """LongVideoBench validation set (Wu et al., NeurIPS 2024): 1,337 questions on videos up to an hour."""

    name = "longvideobench"
    categories = ("duration_group", "question_category")
    annotation = "lvb_val.json"

    def load(self, root, skip_missing=False):
        root = _check_root(root, "LongVideoBench")
        layout = "LongVideoBench layout: lvb_val.json and videos/<video_path>"
        path = root / self.annotation
        if not path.is_file():
            raise ValueError(f"{path}: the LongVideoBench annotation file is missing ({layout})")
        samples = []
        for i, entry in enumerate(_read_json(path, "LongVideoBench annotation")):
            where = f"{path} entry {i}"
            keys = ("id", "video_path", "question", "candidates", "correct_choice", "duration", *self.categories)
            _require_keys(entry, keys, where)
            options = [str(c) for c in entry["candidates"]]
            if not 0 <= int(entry["correct_choice"]) < len(options):
                raise ValueError(f"{where}: correct_choice {entry['correct_choice']} is not an option index")
            samples.append(
                Sample(
                    id=str(entry["id"]),
                    video=root / "videos" / entry["video_path"],
                    question=entry["question"],
                    options=options,
                    answer=LETTERS[int(entry["correct_choice"])],
                    categories={k: str(entry[k]) for k in self.categories},
                    duration=float(entry["duration"]),
                )
            )
        return _drop_missing_videos(samples, skip_missing, layout)

    def frame_indices(self, sample, total_frames, fps, num_frames):
        # The authors' loader: at most one frame per second of the annotated duration, evenly strided from frame 0.
        count = max(1, min(num_frames, int(sample.duration)))
        stride = max(1, int(int(sample.duration * fps) / count))
        return np.clip(np.arange(count) * stride, 0, total_frames - 1)

    def prompt(self, sample):
        options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(sample.options))
        return f"Question: {sample.question}\n{options}\nAnswer with the option's letter from the given choices directly."

    def extract(self, response, sample):
        letter = _letter_after_prefixes(response, "ABCDE")
        if letter is None:
            # The authors assign a random option when parsing fails; seeded by the question so scores reproduce.
            return random.Random(sample.id).choice(LETTERS[: len(sample.options)])
        return letter


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (MVBench(), VideoMME(), MLVU(), LongVideoBench())}


def get(name: str) -> Benchmark:
    """The benchmark registered as `name`; ValueError listing the accepted names otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; accepted: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
