"""StreamingBench, real-time visual understanding: questions asked at a timestamp of a streaming video."""

from __future__ import annotations

import re

from vidpress.evaluation.benchmarks.base import (
    LETTERS,
    Benchmark,
    Sample,
    check_root,
    drop_missing_videos,
    frames_before,
    register_benchmark,
)
from vidpress.files import read_json, require_keys

ANNOTATION = "questions_real.json"


@register_benchmark
class StreamingBench(Benchmark):
    """StreamingBench (Lin et al., arXiv 2411.03628), its Real-Time Visual Understanding part (10 tasks). Layout, as
    the authors' release writes it: `questions_real.json`, a list of entries, each with video_path (relative to
    --data, e.g. "./videos/sample_1_real.mp4") and questions: a list of {task_type, question, time_stamp
    ("HH:MM:SS"), options (4 texts, "A. ..." or bare), answer (a letter)}; one entry per question or per video.

    Each question is asked at its time_stamp, having seen only the video before it, with the authors' prompt (the
    options lettered "A. ..." when they are bare, then "The best option is:"). Scored right when the first option
    letter (A-D) of the response is the answer; accuracy per task type.
    """

    name = "streamingbench"
    categories = ("task",)
    streaming = True

    def load(self, root, skip_missing=False):
        root = check_root(root, "StreamingBench")
        path = root / ANNOTATION
        if not path.is_file():
            raise ValueError(f"{path}: no StreamingBench annotation file (layout: {ANNOTATION} and the videos its "
                             "video_path fields name, under --data)")
        samples, seen = [], {}
        for i, entry in enumerate(read_json(path, "StreamingBench annotation", list)):
            where = f"{path} entry {i}"
            require_keys(entry, ("video_path", "questions"), where)
            video = root / entry["video_path"]
            for k, question in enumerate(entry["questions"]):
                q_where = f"{where} question {k}"
                require_keys(question, ("task_type", "question", "time_stamp", "options", "answer"), q_where)
                options = [re.sub(r"^[A-D]\.\s*", "", str(o)) for o in question["options"]]
                answer = str(question["answer"]).strip()
                if answer not in LETTERS[: len(options)]:
                    raise ValueError(f"{q_where}: answer {answer!r} is not one of the letters of its "
                                     f"{len(options)} options")
                stem = re.sub(r"[^A-Za-z0-9_.-]", "_", video.stem)
                count = seen[stem] = seen.get(stem, -1) + 1
                samples.append(Sample(id=f"{stem}-{count:02d}", video=video, question=str(question["question"]),
                                      options=options, answer=answer, categories={"task": str(question["task_type"])},
                                      ask_at=parse_time_stamp(question["time_stamp"], q_where)))
        return drop_missing_videos(samples, skip_missing, f"StreamingBench layout: {ANNOTATION} + the videos it names")

    def frame_indices(self, sample, total_frames, fps, num_frames):
        return frames_before(total_frames, fps, num_frames, sample.ask_at)

    def prompt(self, sample):
        options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options))
        return ("You are an advanced video question-answering AI assistant. You have been provided with some frames "
                "from the video and a multiple-choice question related to the video. Your task is to carefully "
                "analyze the video and provide the best answer to question, choosing from the four options "
                "provided. Respond with only the letter (A, B, C, or D) of the correct option.\n\n"
                f"Question: {sample.question}\n\nOptions:\n{options}\n\nThe best option is:")

    def extract(self, response, sample):
        match = re.search(f"[{LETTERS[: len(sample.options)]}]", response.strip())
        return match.group(0) if match else None


def parse_time_stamp(text, where: str) -> float:
    """"HH:MM:SS" (or "MM:SS", or seconds) -> seconds; ValueError naming `where` otherwise."""
    parts = str(text).strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not values or len(values) > 3 or any(v < 0 for v in values):
        raise ValueError(f"{where}: time_stamp {text!r} is not HH:MM:SS")
    return sum(v * 60**i for i, v in enumerate(reversed(values)))
