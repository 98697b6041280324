"""`vidpress generate` end to end on the bundled real clip with a tiny model."""

import pytest

from vidpress.cli import main


def test_generate_prints_the_report(tiny_model, tiny_cache, capsys):
    tiny_model("qwen2_5_vl")  # builds the model folder into the cache
    code = main(["generate", "--model", str(tiny_cache / "qwen2_5_vl"), "--num-frames", "8", "--max-new-tokens", "4",
                 "--repeats", "1", "--retention", "0.25", "--attn", "eager"])
    out = capsys.readouterr().out
    assert code == 0
    assert "answer:" in out and "visual tokens:" in out and "per-frame budgets" in out and "LLM prefill:" in out
    before, after = out.split("visual tokens: ")[1].split(" (")[0].split(" -> ")
    assert int(after) < int(before)


def test_generate_default_uses_the_labelled_demo_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VIDPRESS_CACHE", str(tmp_path))
    assert main(["generate", "--num-frames", "4", "--max-new-tokens", "2", "--repeats", "1"]) == 0
    assert "random-weight demo model" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--retention", "0"], "retention"),
        (["generate", "--video", "/no/such/video.mp4"], "no/such/video.mp4"),
        (["generate", "--model", "/no/such/model"], "--model"),
    ],
)
def test_generate_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
