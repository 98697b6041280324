"""The streaming benchmarks (OVO-Bench, StreamingBench real-time): their layouts, the frames a question may see,
their scoring, and `vidpress eval` asking each question through a VideoStream at its time."""

import json

import pytest
from fixtures_benchmarks.streaming import ovobench, streamingbench

from vidpress.cli import main
from vidpress.evaluation import benchmarks
from vidpress.evaluation.benchmarks.base import frames_before

OVO = benchmarks.get_benchmark("ovobench")
SB = benchmarks.get_benchmark("streamingbench")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return {"ovobench": ovobench(tmp_path_factory.mktemp("ovo")),
            "streamingbench": streamingbench(tmp_path_factory.mktemp("sb"))}


def test_ovobench_layout(layouts):
    root, count = layouts["ovobench"]
    samples = {s.id: s for s in OVO.load(root)}
    assert len(samples) == count and OVO.streaming
    epm, stu = samples["EPM-0"], samples["STU-1"]
    assert epm.answer == "B" and epm.ask_at == 1.0 and epm.categories == {"task": "EPM", "mode": "backward"}
    assert stu.answer == "A" and stu.categories["mode"] == "realtime" and stu.video == root / "src_videos/b.mp4"
    assert [samples[f"REC-2-{k}"].answer for k in (0, 1)] == ["2", "3"]
    assert samples["REC-2-1"].ask_at == 1.8 and "How many times did they jump?" in OVO.prompt(samples["REC-2-1"])
    assert samples["SSR-3-0"].answer == "Yes" and "Cut the bread." in OVO.prompt(samples["SSR-3-0"])
    assert samples["CRR-4-0"].answer == "No" and "What colour is the car?" in OVO.prompt(samples["CRR-4-0"])
    assert "A. A cup; B. A key; C. A pen; D. A box;" in OVO.prompt(epm)


def test_streamingbench_layout(layouts):
    root, count = layouts["streamingbench"]
    samples = SB.load(root)
    assert [s.id for s in samples] == ["sample_1_real-00", "sample_1_real-01", "sample_2_real-00"] and SB.streaming
    assert len(samples) == count
    assert [s.answer for s in samples] == ["B", "A", "D"] and [s.ask_at for s in samples] == [1.0, 2.0, 1.0]
    assert samples[0].options == ["A map.", "A square.", "A dog.", "A car."]  # the letters are the prompt's
    prompt = SB.prompt(samples[1])
    assert "A. One.\nB. Two.\nC. Three.\nD. Four." in prompt and prompt.endswith("The best option is:")
    assert samples[1].categories == {"task": "Counting"}


@pytest.mark.parametrize("bench, name", [(OVO, "ovobench"), (SB, "streamingbench")])
def test_a_question_sees_only_the_frames_before_its_time(layouts, bench, name):
    root, _ = layouts[name]
    for sample in bench.load(root):
        video = bench.frames(sample, 4)
        assert 1 <= len(video.frames) <= 4 and max(video.timestamps) < sample.ask_at
        assert video.frame_indices == sorted(set(video.frame_indices))


def test_frames_before_spreads_evenly_and_never_reaches_the_time():
    assert frames_before(100, 10.0, 4, 2.0).tolist() == [2, 7, 12, 17]
    assert frames_before(100, 10.0, 8, 0.3).tolist() == [0, 1, 2]  # only 3 frames before 0.3 s
    assert frames_before(16, 8.0, 4, 100.0).tolist() == [2, 6, 10, 14]  # a time past the end: the whole video
    assert frames_before(16, 8.0, 4, 0.0).tolist() == [0]  # at time 0: the first frame


@pytest.mark.parametrize("sample_id, response, correct", [
    ("EPM-0", "The answer is B.", True), ("EPM-0", "A", False), ("STU-1", "A. Left", True),
    ("REC-2-0", "2", True), ("REC-2-0", "two", False), ("REC-2-1", "They jumped 3 times.", True),
    ("SSR-3-0", "Y", True), ("SSR-3-0", "Yes.", True), ("SSR-3-0", "No", False),
    ("CRR-4-0", "N", True), ("CRR-4-0", "No, not enough.", True), ("CRR-4-0", "Yes", False),
])
def test_ovobench_scoring_follows_the_authors(layouts, sample_id, response, correct):
    sample = {s.id: s for s in OVO.load(layouts["ovobench"][0])}[sample_id]
    assert OVO.is_correct(response, sample) is correct


def test_ovobench_summary_averages_over_tasks(layouts):
    samples = OVO.load(layouts["ovobench"][0])
    right = {"EPM-0", "REC-2-0"}
    records = [{"id": s.id, "categories": s.categories, "correct": s.id in right, "prediction": "x"} for s in samples]
    summary = OVO.summarize(records)
    assert summary["by"]["task"]["REC"]["accuracy"] == 0.5
    assert summary["mode_avg"] == {"backward": 1.0, "realtime": 0.0, "forward": pytest.approx(0.5 / 3)}
    assert summary["total_avg"] == pytest.approx((1 + 0 + 0.5 + 0 + 0) / 5)


def test_streamingbench_scoring_takes_the_first_option_letter(layouts):
    sample = SB.load(layouts["streamingbench"][0])[0]
    assert SB.is_correct(" B. A square.", sample) and not SB.is_correct("A square (B)", sample)
    assert SB.extract("none", sample) is None


@pytest.mark.parametrize("bench, file, entry, message", [
    ("ovobench", "ovo_bench_new.json", {"id": 0, "task": "XYZ", "video": "a.mp4"}, "unknown task 'XYZ'"),
    ("ovobench", "ovo_bench_new.json", {"id": 0, "task": "EPM", "video": "a.mp4", "question": "q",
                                        "options": ["a", "b"], "gt": 2, "realtime": 1}, "gt 2 is not an index"),
    ("ovobench", "ovo_bench_new.json", {"id": 0, "task": "REC", "video": "a.mp4", "activity": "jump",
                                        "test_info": [{"realtime": 1}]}, "count"),
    ("streamingbench", "questions_real.json", {"video_path": "v.mp4", "questions": [
        {"task_type": "t", "question": "q", "time_stamp": "1:xx", "answer": "A", "options": ["a", "b"]}]},
     "time_stamp '1:xx' is not HH:MM:SS"),
    ("streamingbench", "questions_real.json", {"video_path": "v.mp4", "questions": [
        {"task_type": "t", "question": "q", "time_stamp": "00:00:01", "answer": "E", "options": ["a", "b"]}]},
     "answer 'E' is not one of the letters"),
])
def test_bad_annotations_are_clear_errors(tmp_path, bench, file, entry, message):
    (tmp_path / file).write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=message):
        benchmarks.get_benchmark(bench).load(tmp_path)
    (tmp_path / file).unlink()
    with pytest.raises(ValueError, match=f"no {'OVO-Bench' if bench == 'ovobench' else 'StreamingBench'} annotation"):
        benchmarks.get_benchmark(bench).load(tmp_path)


@pytest.fixture(scope="module")
def model_dir(tiny_model, tiny_cache):
    tiny_model("qwen2_5_vl")
    return str(tiny_cache / "qwen2_5_vl")


@pytest.mark.slow
def test_eval_asks_each_question_through_a_stream_at_its_time(model_dir, layouts, tmp_path, capsys):
    root, _ = layouts["ovobench"]
    out = tmp_path / "run"
    argv = ["eval", "--model", model_dir, "--bench", "ovobench", "--data", str(root), "--num-frames", "4",
            "--max-new-tokens", "2", "--press", "none", "--memory-tokens", "4", "--chunk-frames", "2", "--limit", "4",
            "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ovobench: accuracy" in printed and "Total Avg." in printed
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 4 and results["settings"]["stream"] == {
        "memory_tokens": 4, "policy": None, "chunk_frames": 2}
    assert set(results["mode_avg"]) == {"backward", "realtime", "forward"}
    record = json.loads((out / "samples" / "REC-2-1.json").read_text())
    assert record["ask_at"] == 1.8 and record["frames"] == 4 and record["kept_tokens"] <= 4
    assert record["evicted_tokens"] == record["visual_tokens"] - record["kept_tokens"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--bench", "mlvu", "--memory-tokens", "8"], "--memory-tokens only apply to streaming benchmarks"),
    (["--bench", "ovobench", "--memory-tokens", "0"], "--memory-tokens must be a positive integer"),
    (["--bench", "ovobench", "--memory-policy", "lru"], "--memory-policy 'lru'"),
    (["--bench", "ovobench", "--press", "fastv"], "acts inside the LLM"),
])
def test_eval_streaming_bad_input(model_dir, layouts, tmp_path, capsys, argv, message):
    args = ["eval", "--model", model_dir, "--data", str(layouts["ovobench"][0]), "--out", str(tmp_path / "o"),
            "--quiet", *argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err
