"""Tiny benchmark folders in each published layout, written on the fly (a few KB of h264 per video).

Every writer returns the data root and the number of questions it wrote. Answers are varied so that scoring and
per-category summaries have something to tell apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from vidpress.evaluation.benchmarks import MLVU_TASKS, MVBENCH_TASKS


def write_video(path: Path, frames: int = 16, fps: int = 8, width: int = 64, height: int = 48) -> Path:
    """An h264 mp4 of `frames` frames: a bright square moving over a gradient that changes with time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = (t * 255) // max(frames - 1, 1)
            image[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)
            x = (t * 3) % (width - 12)
            image[10:22, x : x + 12] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: Path, count: int = 12) -> Path:
    """A folder of numbered JPEG frames 00001.jpg ... as MVBench's TVQA frames."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        Image.fromarray(np.full((48, 64, 3), i * 20, np.uint8)).save(folder / f"{i:05d}.jpg")
    return folder


def mvbench(root: Path) -> tuple[Path, int]:
    """json/<task>.json (one question per task) and video/<source>/..., one clip with start/end per bounded task."""
    (root / "json").mkdir(parents=True)
    for i, (task, (file, folder, has_clip)) in enumerate(MVBENCH_TASKS.items()):
        options = ["left", "right", "up", "down"][: 3 + i % 2]
        entry = {"question": f"{task}: where does the square go?", "candidates": options,
                 "answer": options[i % len(options)]}
        if folder.startswith("tvqa"):
            entry["video"] = f"clip{i}"
            write_frames(root / "video" / folder / entry["video"])
        else:
            entry["video"] = f"clip{i}.mp4"
            write_video(root / "video" / folder / entry["video"])
        if has_clip:
            entry.update(start=0.5, end=1.5)
        (root / "json" / file).write_text(json.dumps([entry]))
    return root, len(MVBENCH_TASKS)


def videomme(root: Path) -> tuple[Path, int]:
    """videomme/test-00000-of-00001.parquet (3 questions on 2 videos) and data/<videoID>.mp4."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, (video, duration) in enumerate([("vidA", "short"), ("vidA", "short"), ("vidB", "medium")]):
        rows.append({
            "video_id": f"00{i // 2 + 1}", "duration": duration, "domain": "Knowledge" if i < 2 else "Sports",
            "sub_category": "Humanity & History", "url": f"https://www.youtube.com/watch?v={video}", "videoID": video,
            "question_id": f"00{i // 2 + 1}-{i + 1}",
            "task_type": ["Counting Problem", "Object Recognition", "Temporal Reasoning"][i],
            "question": "How many squares appear?", "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
            "answer": "ABC"[i],
        })
        write_video(root / "data" / f"{video}.mp4")
    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    return root, len(rows)


def mlvu(root: Path) -> tuple[Path, int]:
    """MLVU/json/<n>_<task>.json (one question per task) and MLVU/video/<n>_<task>/, as the dataset repository."""
    base = root / "MLVU"
    (base / "json").mkdir(parents=True)
    for i, (task, file) in enumerate(MLVU_TASKS.items()):
        options = ["red", "green", "blue", "yellow"]
        entry = {"video": f"{task}_0.mp4", "duration": 2.0, "question": "Which colour?", "candidates": options,
                 "answer": options[i % 4], "question_type": task}
        write_video(base / "video" / Path(file).stem / entry["video"])
        (base / "json" / file).write_text(json.dumps([entry]))
    return root, len(MLVU_TASKS)


def longvideobench(root: Path) -> tuple[Path, int]:
    """lvb_val.json (3 questions) and videos/<video_path>."""
    entries = []
    for i, (group, category) in enumerate([(15, "S2E"), (15, "TOS"), (60, "S2E")]):
        entries.append({
            "video_id": f"v{i}", "question": "What happens after the square appears?",
            "question_wo_referring_query": "?",
            "candidates": ["It stops.", "It moves right.", "It turns red.", "It disappears."], "correct_choice": i % 4,
            "position": [1, 2], "topic_category": "NP-News-Programs", "question_category": category,
            "level": "L1-Perception",
            "id": f"v{i}_{i}", "video_path": f"v{i}.mp4", "subtitle_path": f"v{i}_en.json", "duration_group": group,
            "starting_timestamp_for_subtitles": 0, "duration": 2.0, "view_count": 10,
        })
        write_video(root / "videos" / f"v{i}.mp4")
    (root / "lvb_val.json").write_text(json.dumps(entries))
    return root, len(entries)


WRITERS = {"mvbench": mvbench, "videomme": videomme, "mlvu": mlvu, "longvideobench": longvideobench}


LMMS_TASK_YAML = """\
task: vidpress_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""

LMMS_TASK_UTILS = '''\
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(HERE, "videos", doc["video"])]


def doc_to_text(doc):
    options = "\\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", doc["options"]))
    return f"{doc['question']}\\n{options}\\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    answer = results[0].strip()[:1]
    return {"accuracy": float(answer == doc["answer"])}
'''


def lmms_task(folder: Path, questions: int = 3) -> Path:
    """A local lmms-eval task folder: vidpress_tiny_mc.yaml, utils.py, data.jsonl and videos/ (tiny mp4s)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(questions):
        write_video(folder / "videos" / f"q{i}.mp4")
        rows.append({"video": f"q{i}.mp4", "question": "Where does the square go?",
                     "options": ["left", "right", "up", "down"], "answer": "ABCD"[i % 4]})
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "utils.py").write_text(LMMS_TASK_UTILS)
    (folder / "vidpress_tiny_mc.yaml").write_text(LMMS_TASK_YAML.format(data=folder / "data.jsonl"))
    return folder
