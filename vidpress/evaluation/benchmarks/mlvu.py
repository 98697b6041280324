"""MLVU (dev): the 7 multiple-choice tasks; segment-middle frames, "Best option: (" answers, M-Avg."""

from __future__ import annotations

import logging
from pathlib import Path

from vidpress.evaluation.benchmarks.base import (
    LETTERS,
    Benchmark,
    Sample,
    check_root,
    drop_missing_videos,
    letter_of,
    register_benchmark,
    segment_middles,
)
from vidpress.files import read_json, require_keys

logger = logging.getLogger(__name__)


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


@register_benchmark
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
        root = check_root(root, "MLVU")
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
            for i, entry in enumerate(read_json(path, "MLVU annotation", list)):
                where = f"{path} entry {i}"
                require_keys(entry, ("video", "question", "candidates", "answer"), where)
                options = [str(c) for c in entry["candidates"]]
                samples.append(
                    Sample(
                        id=f"{task}-{i:04d}",
                        video=folder / entry["video"],
                        question=entry["question"],
                        options=options,
                        answer=letter_of(options, str(entry["answer"]), where),
                        categories={"task": task},
                        duration=entry.get("duration"),
                    )
                )
        return drop_missing_videos(samples, skip_missing, layout)

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
