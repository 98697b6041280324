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


def test_learned_press_needs_and_loads_a_policy(tmp_path, capsys):
    from vidpress.cli import main

    assert main(["generate", "--press", "cacovid"]) == 2
    assert "needs a trained policy: pass --policy DIR" in capsys.readouterr().err
    assert main(["generate", "--press", "vidcom2", "--policy", str(tmp_path)]) == 2
    assert "--policy is for presses with a trained policy" in capsys.readouterr().err
    assert main(["inspect", "--press", "cacovid", "--policy", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    out = tmp_path / "kept.png"
    from vidpress.evaluation.bench import CACOVID_REFERENCE_DIR

    assert main(["inspect", "--press", "cacovid", "--policy", str(CACOVID_REFERENCE_DIR),
                 "--retention", "0.1", "--out", str(out)]) == 0
    assert out.is_file() and "kept 44/440 tokens" in capsys.readouterr().out
