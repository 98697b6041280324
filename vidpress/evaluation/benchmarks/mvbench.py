"""MVBench: 20 temporal tasks; frames at segment middles of the annotated clip, "Best option:(" answers."""

from __future__ import annotations

import logging
import re
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


@register_benchmark
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
        root = check_root(root, "MVBench")
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
            entries = read_json(files[task], "MVBench annotation", list)
            for i, entry in enumerate(entries):
                where = f"{files[task]} entry {i}"
                require_keys(entry, ("video", "question", "candidates", "answer"), where)
                clip = (float(entry["start"]), float(entry["end"])) if has_clip and "start" in entry else None
                options = [str(c) for c in entry["candidates"]]
                samples.append(
                    Sample(
                        id=f"{Path(file).stem}-{i:04d}",
                        video=root / "video" / folder / entry["video"],
                        question=entry["question"],
                        options=options,
                        answer=letter_of(options, str(entry["answer"]), where),
                        categories={"task": task},
                        clip=clip,
                    )
                )
        return drop_missing_videos(samples, skip_missing, layout)

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
