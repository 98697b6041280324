"""`vidpress stream` on the bundled clip; a source that fails mid-stream leaves the stream answering."""

import pytest

from vidpress import video
from vidpress.cli import main
from vidpress.streaming.source import SourceError, parse_question, video_chunks


def test_stream_cli_answers_at_stream_times(tiny_cache, tiny_model, capsys):
    tiny_model("qwen2_5_vl")  # built into tiny_cache
    code = main(["stream", "--model", str(tiny_cache / "qwen2_5_vl"), "--ask", "1.5: What is moving?",
                 "--ask", "99: Anything else?", "--memory-tokens", "120", "--press", "stc", "--retention", "0.5",
                 "--max-new-tokens", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[1.5 s] Q (1.5 s): What is moving?" in out
    assert "the stream ended at 4.5 s; answering the 1 later question(s)" in out
    assert "[4.5 s] A:" in out
    stats = dict(part.rsplit(" ", 1) for part in out.split("stats: ")[1].strip().split(", "))
    assert stats["chunks"] == "5" and stats["frames"] == "10" and stats["questions"] == "2"
    assert int(stats["visual_tokens_in_memory"]) <= 120
    stages = out.split("ms per stage (median): ")[1].splitlines()[0].split(", ")
    assert [part.split(" ")[0] for part in stages] == ["encode", "press", "evict", "prefill", "ask"]


def test_chunks_follow_the_source_clock():
    chunks = list(video_chunks(str(video.sample_video()), fps=2.0, chunk_seconds=1.0))
    assert [len(frames) for frames, _ in chunks] == [2, 2, 2, 2, 2]
    seconds = [t for _, times in chunks for t in times]
    # the first frame at or after each sampling time (25 fps: 0.48 is before 0.5, 0.52 after)
    assert seconds == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5], abs=0.04)
    assert all(t >= k / 2 - 1e-9 for k, t in enumerate(seconds))


def test_a_dropped_source_is_a_clear_error_and_the_stream_still_answers(tiny_cache, tiny_model, tmp_path, capsys):
    tiny_model("qwen2_5_vl")
    data = video.sample_video().read_bytes()
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(data[: len(data) // 2])  # the source ends mid-stream
    with pytest.raises(SourceError, match="failed after 2.0 s") as error:
        list(video_chunks(str(broken)))
    assert error.value.seconds == pytest.approx(2.0, abs=0.1)
    code = main(["stream", "--model", str(tiny_cache / "qwen2_5_vl"), "--video", str(broken), "--ask", "1: What?",
                 "--ask", "4: And now?", "--max-new-tokens", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "error:" in captured.err and "the source failed after" in captured.err
    assert "the source failed at 2.0 s; answering the 1 later question(s) from the stream so far" in captured.out
    assert "[2.0 s] Q (4 s): And now?" in captured.out


@pytest.mark.parametrize("argv, message", [
    (["--ask", "soon: what?"], "'SECONDS: question'"),
    (["--ask", "3:"], "'SECONDS: question'"),
    (["--memory-tokens", "0"], "--memory-tokens must be >= 1"),
    (["--video", __file__], "cannot open as a video source"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(["stream", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_parse_question():
    assert parse_question("30: What is on the table?") == (30.0, "What is on the table?")
