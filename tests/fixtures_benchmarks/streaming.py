"""Tiny folders in the streaming benchmarks' published layouts (OVO-Bench, StreamingBench real-time), written on the
fly with 2 s videos (16 frames at 8 fps)."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures_benchmarks import write_video


def ovobench(root: Path) -> tuple[Path, int]:
    """ovo_bench_new.json as the authors publish it: backward / real-time entries with question, options, gt and
    realtime; forward entries with test_info probes (REC counts, SSR steps, CRR yes / no)."""
    write_video(root / "src_videos" / "a.mp4")
    write_video(root / "src_videos" / "b.mp4")
    entries = [
        {"id": 0, "task": "EPM", "video": "src_videos/a.mp4", "question": "What did I put down?",
         "options": ["A cup", "A key", "A pen", "A box"], "gt": 1, "realtime": 1.0},
        {"id": 1, "task": "STU", "video": "src_videos/b.mp4", "question": "Where is the square now?",
         "options": ["Left", "Right", "Top"], "gt": 0, "realtime": 1.5},
        {"id": 2, "task": "REC", "video": "src_videos/a.mp4", "activity": "jump",
         "test_info": [{"realtime": 0.8, "count": 2}, {"realtime": 1.8, "count": 3}]},
        {"id": 3, "task": "SSR", "video": "src_videos/b.mp4",
         "test_info": [{"realtime": 1.0, "step": "Cut the bread.", "type": 1}]},
        {"id": 4, "task": "CRR", "video": "src_videos/a.mp4", "question": "What colour is the car?",
         "answer": "Red", "test_info": [{"realtime": 1.2, "type": 0}]},
    ]
    (root / "ovo_bench_new.json").write_text(json.dumps(entries))
    return root, 6


def streamingbench(root: Path) -> tuple[Path, int]:
    """questions_real.json as the authors publish it: one entry per video holding several questions, and one entry
    per question; options lettered ("A. ...") and bare."""
    write_video(root / "videos" / "sample_1_real.mp4")
    write_video(root / "videos" / "sample_2_real.mp4")
    entries = [
        {"questions": [
            {"task_type": "Object Perception", "question": "What is on the screen right now?", "time_stamp": "00:00:01",
             "answer": "B", "options": ["A. A map.", "B. A square.", "C. A dog.", "D. A car."],
             "required_ability": "working memory", "time": "[0:00:00 - 0:00:02]"},
            {"task_type": "Counting", "question": "How many squares are there?", "time_stamp": "00:00:02",
             "answer": "A", "options": ["One.", "Two.", "Three.", "Four."], "required_ability": "working memory"},
        ], "video_path": "./videos/sample_1_real.mp4"},
        {"time": "[0:00:00 - 0:00:02]", "questions": [
            {"task_type": "Attribute Perception", "question": "What colour is the square?", "time_stamp": "00:00:01",
             "answer": "D", "options": ["A. Red.", "B. Blue.", "C. Green.", "D. White."],
             "required_ability": "working memory"}],
         "video_categories": "tutorials", "video_path": "./videos/sample_2_real.mp4"},
    ]
    (root / "questions_real.json").write_text(json.dumps(entries))
    return root, 3
