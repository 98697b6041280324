"""Benchmark loaders on tiny folders in each published layout, frame sampling rules, answer scoring."""

import json

import numpy as np
import pytest
from fixtures_benchmarks import WRITERS

from vidpress.evaluation import benchmarks
from vidpress.evaluation.benchmarks import LETTERS, Sample, segment_middles

pytest.importorskip("pyarrow")  # Video-MME's annotations are parquet


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{benchmark name: (data root, number of questions)} written once for the module."""
    return {name: write(tmp_path_factory.mktemp(name)) for name, write in WRITERS.items()}


@pytest.mark.parametrize("name", list(WRITERS))
def test_loader_reads_the_published_layout(layouts, name):
    root, count = layouts[name]
    bench = benchmarks.get_benchmark(name)
    samples = bench.load(root)
    assert len(samples) == count
    assert len({s.id for s in samples}) == count
    for sample in samples:
        assert sample.video.exists()
        assert sample.answer in LETTERS[: len(sample.options)]
        assert set(sample.categories) == set(bench.categories)
        assert "{" not in bench.prompt(sample) and sample.question in bench.prompt(sample)
        video = bench.frames(sample, 4)
        assert 1 <= len(video.frames) <= 4 and video.frames.dtype == np.uint8
        assert video.frame_indices == sorted(video.frame_indices)


def test_mvbench_details(layouts):
    root, _ = layouts["mvbench"]
    samples = {s.categories["task"]: s for s in benchmarks.get_benchmark("mvbench").load(root)}
    assert samples["Action Sequence"].clip == (0.5, 1.5) and samples["Action Antonym"].clip is None
    assert samples["Action Sequence"].video == root / "video/star/Charades_v1_480/clip0.mp4"
    # Bounded clip of a 16-frame 8 fps video: frames 4..12, four segments of 2, middles at 5, 7, 9, 11.
    assert benchmarks.get_benchmark("mvbench").frames(samples["Action Sequence"], 4).frame_indices == [5, 7, 9, 11]
    episodic = samples["Episodic Reasoning"]
    assert episodic.video.is_dir()
    video = benchmarks.get_benchmark("mvbench").frames(episodic, 3)
    # The 1 s clip of 3 fps frames spans files 2..4; three segments of 2/3 frame fall on files 2, 3, 3.
    assert video.frames.shape == (3, 48, 64, 3) and video.fps == 3.0 and video.frame_indices == [1, 2, 2]
    assert (video.frames[1] == video.frames[2]).all() and not (video.frames[0] == video.frames[1]).all()


def test_videomme_and_lvb_details(layouts):
    samples = benchmarks.get_benchmark("videomme").load(layouts["videomme"][0])
    assert [s.answer for s in samples] == ["A", "B", "C"]
    assert samples[0].options[0] == "One." and samples[2].categories["duration"] == "medium"
    assert "A. One.\nB. Two." in benchmarks.get_benchmark("videomme").prompt(samples[0])
    lvb = benchmarks.get_benchmark("longvideobench").load(layouts["longvideobench"][0])
    assert [s.answer for s in lvb] == ["A", "B", "C"]
    assert lvb[2].categories == {"duration_group": "60", "question_category": "S2E"}


def test_sampling_rules():
    # MVBench / MLVU: middles of equal segments over frames 0..total-1.
    assert segment_middles(100, 25.0, 4).tolist() == [12, 37, 62, 86]
    # Frame folders count from 1; indices come back 0-based into the sorted files.
    assert segment_middles(30, 3.0, 3, clip=(2.0, 8.0), first_index=1).tolist() == [8, 14, 20]
    assert segment_middles(5, 25.0, 8).tolist() == [0, 0, 1, 2, 2, 2, 3, 4]  # short videos repeat frames
    lvb = benchmarks.get_benchmark("longvideobench")
    sample = Sample("x", None, "q", ["a", "b"], "A", duration=10.0)
    assert lvb.frame_indices(sample, 250, 25.0, 64).tolist() == list(range(0, 250, 25))  # one frame per second
    assert lvb.frame_indices(sample, 250, 25.0, 5).tolist() == [0, 50, 100, 150, 200]
    assert benchmarks.get_benchmark("videomme").frame_indices(sample, 101, 25.0, 5).tolist() == [0, 25, 50, 75, 100]


@pytest.mark.parametrize(
    "name, response, answer, correct",
    [
        ("mvbench", "A) walking to the door", "A", True),  # continues "Best option:("
        ("mvbench", "B", "B", True),
        ("mvbench", "a.", "A", True),
        ("mvbench", "B) walking", "A", False),
        ("mvbench", "", "A", False),  # no letter at all is wrong
        ("mlvu", "C) the dog", "C", True),
        ("mlvu", "C", "C", True),
        ("mlvu", "C.", "C", False),  # the authors compare the bare text when there is no ")"
        ("videomme", "The best answer is B.", "B", True),
        ("videomme", "  D", "D", True),
        ("videomme", "I cannot tell from this video.", "A", False),
        ("longvideobench", "The answer is C.", "C", True),
        ("longvideobench", "Answer: C", "C", False),  # the authors' rule takes the first capital A-E: "A"nswer
        ("longvideobench", "B. It moves right.", "A", False),
    ],
)
def test_answer_scoring_follows_the_authors(name, response, answer, correct):
    sample = Sample("q1", None, "q", ["a", "b", "c", "d"], answer)
    assert benchmarks.get_benchmark(name).is_correct(response, sample) is correct


def test_longvideobench_unparsable_answer_is_a_seeded_random_option():
    sample = Sample("q7", None, "q", ["a", "b", "c"], "A")
    lvb = benchmarks.get_benchmark("longvideobench")
    picks = {lvb.extract("no idea", sample) for _ in range(3)}
    assert len(picks) == 1 and picks <= {"A", "B", "C"}
    assert not lvb.parsed("no idea", sample) and lvb.parsed("B", sample)


def test_summaries_count_answers_without_an_option_letter():
    from vidpress.evaluation.runner import format_summary

    records = [
        {"correct": False, "categories": {"duration": "short"}, "prediction": None, "parsed": False},
        {"correct": True, "categories": {"duration": "short"}, "prediction": "A", "parsed": True},
        {"correct": False, "categories": {"duration": "short"}, "prediction": None},  # a record from before "parsed"
        {"correct": False, "categories": {"duration": "short"}, "prediction": None, "error": "unreadable"},
    ]
    summary = benchmarks.get_benchmark("videomme").summarize(records)
    assert summary["unparsed"] == 2 and summary["errors"] == 1
    summary["effective_retention"] = 1.0
    assert "2 answers without an option letter counted wrong" in format_summary(summary)


def test_summaries_by_category_and_mlvu_m_avg():
    records = [
        {"correct": True, "categories": {"task": "count"}},
        {"correct": False, "categories": {"task": "count"}},
        {"correct": True, "categories": {"task": "ego"}, "error": None},
    ]
    summary = benchmarks.get_benchmark("mlvu").summarize(records)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["by"]["task"]["count"] == {"accuracy": 0.5, "samples": 2}
    assert summary["m_avg"] == pytest.approx(0.75)  # mean over tasks, not over questions


@pytest.mark.parametrize("name, annotation", [
    ("mvbench", "json/action_sequence.json"),
    ("videomme", "videomme/test-00000-of-00001.parquet"),
    ("mlvu", "MLVU/json/4_count.json"),
    ("longvideobench", "lvb_val.json"),
])
def test_missing_annotation_is_named(tmp_path, name, annotation):
    root, _ = WRITERS[name](tmp_path)
    (root / annotation).unlink()
    with pytest.raises(ValueError, match=annotation.split("/")[-1]):
        benchmarks.get_benchmark(name).load(root)


def test_missing_videos_are_named_or_skipped(tmp_path):
    root, count = WRITERS["longvideobench"](tmp_path)
    (root / "videos" / "v1.mp4").unlink()
    with pytest.raises(ValueError, match=r"(?s)1 of 3 videos are missing.*v1\.mp4.*--skip-missing"):
        benchmarks.get_benchmark("longvideobench").load(root)
    assert [s.id for s in benchmarks.get_benchmark("longvideobench").load(root, skip_missing=True)] == ["v0_0", "v2_2"]


def test_partial_mvbench_needs_skip_missing(tmp_path):
    root, count = WRITERS["mvbench"](tmp_path)
    (root / "json" / "fine_grained_pose.json").unlink()
    with pytest.raises(ValueError, match="1 of 20 MVBench annotation files are missing"):
        benchmarks.get_benchmark("mvbench").load(root)
    assert len(benchmarks.get_benchmark("mvbench").load(root, skip_missing=True)) == count - 1


def test_bad_annotations_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        benchmarks.get_benchmark("mlvu").load(tmp_path / "absent")
    root, _ = WRITERS["longvideobench"](tmp_path)
    entries = json.loads((root / "lvb_val.json").read_text())
    del entries[1]["candidates"]
    (root / "lvb_val.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"lvb_val\.json entry 1: missing field\(s\) candidates"):
        benchmarks.get_benchmark("longvideobench").load(root)
    (root / "lvb_val.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        benchmarks.get_benchmark("longvideobench").load(root)
    with pytest.raises(ValueError, match="accepted: mvbench, videomme, mlvu, longvideobench"):
        benchmarks.get_benchmark("egoschema")
