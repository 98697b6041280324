"""Video-MME: four-option questions on 11 s to 1 h videos; evenly spaced frames, "The best answer is:"."""

from __future__ import annotations

import re
from pathlib import Path

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
from vidpress.files import require_keys


@register_benchmark
class VideoMME(Benchmark):
    """Video-MME (Fu et al., CVPR 2025): 2,700 questions on 900 videos of 11 s to 1 h, four options each."""

    name = "videomme"
    categories = ("duration", "domain", "sub_category", "task_type")
    annotation = Path("videomme") / "test-00000-of-00001.parquet"

    def load(self, root, skip_missing=False):
        root = check_root(root, "Video-MME")
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
            require_keys(row, ("question_id", "videoID", "question", "options", "answer", *self.categories), where)
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
        return drop_missing_videos(samples, skip_missing, layout)

    def frame_indices(self, sample, total_frames, fps, num_frames):
        return np.linspace(0, total_frames - 1, num_frames).astype(np.int64)

    def prompt(self, sample):
        options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(sample.options))
        return (
            "Select the best answer to the following multiple-choice question based on the video. Respond with only "
            f"the letter (A, B, C, or D) of the correct option.\n{sample.question}\n{options}\nThe best answer is:"
        )

    def extract(self, response, sample):
        return letter_after_prefixes(response, "ABCD")
