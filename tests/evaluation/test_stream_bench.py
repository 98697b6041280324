"""`vidpress bench --stream`: the synthetic streams through VideoStream with the shipped reference model."""

import json
import time

import pytest
import torch

from vidpress.cli import main
from vidpress.evaluation.stream_bench import (
    OFFLINE,
    StreamSetting,
    format_stream_table,
    run_stream_bench,
    settings_grid,
)
from vidpress.synthetic.reference import load_reference
from vidpress.synthetic.stream_world import STREAM_KINDS, StreamConfig, make_stream_split


@pytest.fixture(scope="module")
def reference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference model's ops are tiny: more threads only wait on each other under load
    yield load_reference()
    torch.set_num_threads(threads)


def test_settings_grid_runs_an_unbounded_memory_once_per_press():
    grid = settings_grid([None, "stc"], ["fifo", "recall"], [32, None], [0.5, 0.25])
    assert [s.label for s in grid] == ["none/fifo/32", "none/recall/32", "none/fifo/unbounded",
                                       "stc@0.5/fifo/32", "stc@0.5/recall/32", "stc@0.5/fifo/unbounded",
                                       "stc@0.25/fifo/32", "stc@0.25/recall/32", "stc@0.25/fifo/unbounded"]


def test_unbounded_stream_answers_as_offline_and_a_window_keeps_only_the_present(reference):
    model, processor = reference
    examples = make_stream_split("test", 1, config=StreamConfig(segments=4, segment_frames=8, flashes=2))
    settings = [StreamSetting(None, None, "fifo", None), StreamSetting(None, None, "fifo", 32)]
    rows, records = run_stream_bench(model, processor, examples, settings, chunk_frames=4, progress=False)
    assert [r["setting"] for r in rows] == [OFFLINE, "none/fifo/unbounded", "none/fifo/32"]
    by = {(r["setting"], r["kind"]): r for r in records}
    for kind in STREAM_KINDS:
        # no press, no cap: the stream's positions are the offline call's, so the answers are too
        assert by[("none/fifo/unbounded", kind)]["prediction"] == by[(OFFLINE, kind)]["prediction"]
        assert by[("none/fifo/unbounded", kind)]["evidence"]
    window = {k: by[("none/fifo/32", k)] for k in STREAM_KINDS}
    assert all(r["visual_tokens"] == 32 for r in window.values())
    assert window["present"]["evidence"] and not window["past"]["evidence"]  # the past flash is >= 2 chunks old
    offline = rows[0]
    assert offline["scored"] == 3 and offline["prompt_tokens_max"] > 256 and offline["evidence_recall"] == 1.0
    table = format_stream_table(rows)
    assert table.count("\n") == 4 and "| - | offline | all |" in table


def test_bench_stream_command(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--stream", "--limit", "1", "--memory-tokens", "128", "--chunk-frames", "16", "--policies",
            "fifo,recall", "--no-offline", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "none/fifo/128" in printed and "none/recall/128" in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in results["rows"]] == ["none/fifo/128", "none/recall/128"]
    assert results["run"]["chunk_frames"] == 16 and results["run"]["load_average_start"] is not None
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert rows == results["rows"]  # written as each row finished
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and {p["kind"] for p in predictions} == set(STREAM_KINDS)
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "results.md").read_text().startswith("| press")
    assert main(argv) == 2  # finished results are never overwritten silently
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stream", "--memory-tokens", "0"], "'0' is not a positive integer"),
        (["--stream", "--memory-tokens", "abc"], "'abc' is not a positive integer"),
        (["--stream", "--memory-tokens", ","], "names no budget"),
        (["--stream", "--memory-tokens", "32,32"], "repeats a budget"),
        (["--stream", "--policies", "lru"], "--policies 'lru'"),
        (["--stream", "--presses", "fastv"], "acts inside the LLM"),
        (["--stream", "--presses", "nope"], "unknown press 'nope'"),
        (["--stream", "--chunk-frames", "3"], "--chunk-frames must divide"),
        (["--stream", "--limit", "0"], "--limit must be a positive integer"),
        (["--stream", "--full"], "--full is the clip bench's grid"),
        (["--stream", "--retentions", "0.5"], "name them with --presses"),
        (["--memory-tokens", "32"], "--memory-tokens only apply with --stream"),
        (["--policies", "fifo", "--no-offline"], "--policies, --no-offline only apply with --stream"),
    ],
)
def test_bench_stream_bad_input_is_refused_before_any_work(argv, message, capsys, monkeypatch):
    import vidpress.evaluation.testbed as testbed

    monkeypatch.setattr(testbed, "load_bench_model", lambda *a: pytest.fail("the run started"))
    started = time.perf_counter()
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
    assert time.perf_counter() - started < 5
