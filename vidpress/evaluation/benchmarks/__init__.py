"""Loaders, frame sampling and scoring for six published video-QA benchmarks, read from local folders.

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
ovobench            JoeLeelyf/OVO-Bench: ovo_bench_new.json + the videos it names; streaming: each question
                    asked at its realtime through a VideoStream; backward / real-time / forward tasks scored
                    as the authors' release; accuracy per task, mode averages and the total average.
streamingbench      mjuicem/StreamingBench (real-time visual understanding): questions_real.json + videos/;
                    streaming: asked at each time_stamp through a VideoStream; accuracy per task type.
==================  =====================================================================================

Subtitles (Video-MME "w/ subs", LongVideoBench's interleaved subtitles) are not used: these are the
video-only settings of each benchmark.

Each benchmark registers itself with `@register_benchmark` (base.py) in its own file; the one import line per benchmark
below is what loads it. A new benchmark: one new file and one line here.
"""

from __future__ import annotations

from vidpress.evaluation.benchmarks.base import (
    BENCHMARKS,
    LETTERS,
    MVBENCH_FRAME_FPS,
    Benchmark,
    Sample,
    decode_indices,
    get_benchmark,
    register_benchmark,
    segment_middles,
)

# Kept in this order, not sorted: it is the order of BENCHMARKS, which `get`'s error and the CLI's --bench choices list.
# isort: off
from vidpress.evaluation.benchmarks.mvbench import MVBENCH_TASKS, MVBench
from vidpress.evaluation.benchmarks.videomme import VideoMME
from vidpress.evaluation.benchmarks.mlvu import MLVU, MLVU_TASKS
from vidpress.evaluation.benchmarks.longvideobench import LongVideoBench
from vidpress.evaluation.benchmarks.ovobench import OVOBench
from vidpress.evaluation.benchmarks.streamingbench import StreamingBench
# isort: on

__all__ = [
    "BENCHMARKS", "LETTERS", "MLVU", "MLVU_TASKS", "MVBENCH_FRAME_FPS", "MVBENCH_TASKS", "Benchmark", "LongVideoBench",
    "MVBench", "OVOBench", "Sample", "StreamingBench", "VideoMME", "decode_indices", "get_benchmark",
    "register_benchmark", "segment_middles",
]
