"""LongVideoBench (validation): at most one frame per second of the annotated duration, letter answers."""

from __future__ import annotations

import random

import numpy as np

from vidpress.evaluation.benchmarks.base import (
    LETTERS,
    Benchmark,
    Sample,
    check_root,
    drop_missing_videos,
    letter_after_prefixes,
    register_benchmark,
)
from vidpress.files import read_json, require_keys


@register_benchmark
class LongVideoBench(Benchmark):
    """LongVideoBench validation set (Wu et al., NeurIPS 2024): 1,337 questions on videos up to an hour."""

    name = "longvideobench"
    categories = ("duration_group", "question_category")
    annotation = "lvb_val.json"

    def load(self, root, skip_missing=False):
        root = check_root(root, "LongVideoBench")
        layout = "LongVideoBench layout: lvb_val.json and videos/<video_path>"
        path = root / self.annotation
        if not path.is_file():
            raise ValueError(f"{path}: the LongVideoBench annotation file is missing ({layout})")
        samples = []
        for i, entry in enumerate(read_json(path, "LongVideoBench annotation", list)):
            where = f"{path} entry {i}"
            keys = ("id", "video_path", "question", "candidates", "correct_choice", "duration", *self.categories)
            require_keys(entry, keys, where)
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
        return drop_missing_videos(samples, skip_missing, layout)

    def frame_indices(self, sample, total_frames, fps, num_frames):
        # The authors' loader: at most one frame per second of the annotated duration, evenly strided from frame 0.
        count = max(1, min(num_frames, int(sample.duration)))
        stride = max(1, int(int(sample.duration * fps) / count))
        return np.clip(np.arange(count) * stride, 0, total_frames - 1)

    def prompt(self, sample):
        options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(sample.options))
        return (
            f"Question: {sample.question}\n{options}\nAnswer with the option's letter from the given choices directly."
        )

    def extract(self, response, sample):
        letter = letter_after_prefixes(response, "ABCDE")
        if letter is None:
            # The authors assign a random option when parsing fails; seeded by the question so scores reproduce.
            return random.Random(sample.id).choice(LETTERS[: len(sample.options)])
        return letter

    def parsed(self, response, sample):
        return letter_after_prefixes(response, "ABCDE") is not None
