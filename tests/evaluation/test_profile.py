"""The efficiency profiler: stage costs with and without a press, the CLI's JSON, published checkpoint shapes."""

import json

import pytest

from vidpress import presses
from vidpress.cli import main
from vidpress.evaluation import checkpoints
from vidpress.evaluation.profiler import profile
from vidpress.testing import make_inputs, tiny_video

FIELDS = {"vision_ms", "press_ms", "llm_prefill_ms", "decode_ms_per_token", "generate_ms", "visual_tokens",
          "sequence_length", "peak_mem_mb", "flops"}


def test_profile_measures_both_sides(tiny_model):
    model, processor = tiny_model("qwen2_5_vl", "sdpa")
    inputs = make_inputs(processor, [tiny_video(8, 112, 112)], "What happens?")
    result = profile(model, inputs, presses.get("vidcom2", retention=0.25), repeats=1, decode_tokens=3, progress=False)
    full, pressed = result.full, result.pressed
    assert (full.visual_tokens, pressed.visual_tokens) == (64, 16)
    assert full.sequence_length - pressed.sequence_length == 48
    assert full.press_ms == 0 and full.press_flops == 0 and pressed.press_ms > 0
    assert full.vision_ms == pressed.vision_ms and full.vision_flops == pressed.vision_flops > 0
    # Fewer tokens, fewer prefill FLOPs: the linear layers scale with the sequence length.
    flops_ratio = full.llm_prefill_flops / pressed.llm_prefill_flops
    assert 1.5 < flops_ratio < full.sequence_length / pressed.sequence_length + 0.5
    times = (full.llm_prefill_ms, pressed.llm_prefill_ms, full.decode_ms_per_token, pressed.decode_ms_per_token)
    assert all(t > 0 for t in times)
    # One generate call holds a prefill and decode_tokens - 1 decode steps.
    for side in (full, pressed):
        assert side.generate_ms > side.decode_ms_per_token * 2
    assert result.sequence_ratio == pytest.approx(full.sequence_length / pressed.sequence_length)
    assert result.prefill_speedups == [pytest.approx(full.llm_prefill_ms / pressed.llm_prefill_ms)]


def test_speedup_is_the_median_of_interleaved_pairs_so_one_slow_run_cannot_make_it():
    from vidpress.evaluation.profiler import Profile

    result = Profile(full=None, pressed=None, prefill_speedups=[2.0, 35.4, 2.2, 1.9, 2.1])
    assert result.prefill_speedup == 2.1


def test_load_warning_when_the_load_average_exceeds_the_cores(monkeypatch):
    import os

    from vidpress.timing import load_warning

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (8.5, 6.0, 4.0))
    assert load_warning().startswith("warning: load average 8.5 exceeds the 2 cores")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert load_warning() is None


def test_profile_cli_writes_full_and_pressed(tmp_path, capsys):
    path = tmp_path / "profile.json"
    argv = ["profile", "--config", "tiny", "--frames", "4", "--resolution", "56", "--repeats", "1",
            "--decode-tokens", "2", "--retention", "0.5", "--json", str(path), "--quiet"]
    assert main(argv) == 0
    assert "LLM prefill speed-up" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert set(data) == {"full", "pressed", "prefill_speedup", "prefill_speedups"}
    assert len(data["prefill_speedups"]) == 1 and data["prefill_speedup"] == data["prefill_speedups"][0]
    for side in (data["full"], data["pressed"]):
        assert FIELDS <= set(side) and side["setup"]["config"] == "tiny" and side["setup"]["frames"] == 4
    assert data["pressed"]["visual_tokens"] < data["full"]["visual_tokens"]


@pytest.mark.parametrize("argv, message", [
    (["--layers", "0"], "--layers must be in [1,"),
    (["--config", "qwen2.5-vl-7b", "--layers", "29"], "--layers must be in [1, 28]"),
    (["--frames", "0"], "--frames must be a positive integer"),
    (["--retention", "1.5"], "retention must be in (0, 1]"),
    (["--model", "somewhere", "--layers", "2"], "do not apply to --model"),
])
def test_profile_bad_options_are_clear_errors(argv, message, capsys):
    assert main(["profile", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name, params", [
    ("qwen2.5-vl-7b", 8_292_166_656),  # the parameter counts published with the checkpoints
    ("qwen2.5-vl-3b", 3_754_622_976),
    ("llava-ov-7b", 8_030_807_584),
])
def test_checkpoint_shapes_match_the_published_models(name, params):
    model, _ = checkpoints.build(name, device="meta")  # shapes only, no memory
    assert sum(p.numel() for p in model.parameters()) == params


def test_scaled_down_checkpoints_and_their_processors():
    model, processor = checkpoints.build("qwen2.5-vl-7b", layers=2, vision_layers=9, device="meta")
    text, vision = model.config.get_text_config(), model.config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, vision.depth, vision.fullatt_block_indexes) == (2, 3584, 9, [7])
    # 32 frames of 448 px: 16 temporal groups x 16 x 16 merged tokens, as Qwen2.5-VL's processor makes them.
    inputs = make_inputs(processor, [tiny_video(32, 448, 448)], "What happens?")
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 4096
    model, processor = checkpoints.build("llava-ov-7b", layers=1, vision_layers=1, device="meta")
    inputs = make_inputs(processor, [tiny_video(4, 300, 200)], "What happens?")
    assert inputs["pixel_values_videos"].shape[-2:] == (384, 384)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 4 * 14 * 14 + 1  # + newline token


def test_a_model_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(checkpoints, "_available_ram", lambda: 2**30)
    with pytest.raises(ValueError,
                       match=r"qwen2.5-vl-3b with 36 decoder layers needs 14.0 GiB .* 1.0 GiB are available"):
        checkpoints.build("qwen2.5-vl-3b")


@pytest.mark.slow
def test_profile_pipeline_retrieves_before_the_encoder_then_presses_to_a_share_of_the_full_video(tmp_path, capsys):
    """--pipeline: all 16 frames (8 groups x 16 tokens) against the top-1 of 4 scenes (4 frames, 32 tokens) merged
    by MarcPress to 0.125 of the FULL video's 128 tokens: one frame's 16 tokens."""
    path = tmp_path / "pipeline.json"
    argv = ["profile", "--frames", "16", "--resolution", "112", "--repeats", "1", "--retrieve", "1", "--pipeline",
            "--press", "marc", "--retention", "0.125", "--json", str(path), "--quiet"]
    assert main(argv) == 0
    assert "retrieve-then-press: top-1 of 4 event clips" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert set(data) == {"pipeline"}
    pipeline = data["pipeline"]
    full, retrieved = pipeline["full"], pipeline["retrieved"]
    assert (full["frames_encoded"], retrieved["frames_encoded"]) == (16, 4)
    assert (full["visual_tokens_encoded"], retrieved["visual_tokens_encoded"]) == (128, 32)
    assert (full["visual_tokens"], retrieved["visual_tokens"]) == (128, 16)
    assert full["sequence_length"] - retrieved["sequence_length"] == 128 - 16
    assert 3.5 < full["vision_flops"] / retrieved["vision_flops"] < 4.5
    assert full["llm_prefill_flops"] > 3 * retrieved["llm_prefill_flops"]
    assert full["retrieve_ms"] == full["press_ms"] == 0 and retrieved["retrieve_ms"] > 0 and retrieved["press_ms"] > 0
    for side in (full, retrieved):
        stages = side["retrieve_ms"] + side["vision_ms"] + side["press_ms"] + side["llm_prefill_ms"]
        assert side["total_ms"] == pytest.approx(stages)
    assert pipeline["clips"] == 4 and pipeline["clips_retrieved"] == 1 and pipeline["index_ms"] > 0
    assert len(pipeline["prefill_speedups"]) == 1 and pipeline["setup"]["load_average"]


def test_profile_pipeline_refuses_a_press_inside_the_llm(tiny_model):
    from vidpress.evaluation.profiler import profile_pipeline

    model, processor = tiny_model("qwen2_5_vl", "sdpa")
    with pytest.raises(ValueError, match="fastv acts inside the LLM"):
        profile_pipeline(model, processor, retriever=None, press=presses.get("fastv", retention=0.5),
                         frames=tiny_video(8, 56, 56), question="What?", retention=0.5)


def test_profile_stream_times_each_stage_of_each_chunk(tmp_path, capsys):
    """--stream 3: three timed chunks of 2 frames (1 group of 4 tokens each, 2 kept by STC at 0.5) with a cap of 5
    visual tokens, so the third chunk evicts."""
    path = tmp_path / "stream.json"
    argv = ["profile", "--stream", "3", "--resolution", "56", "--frames", "2", "--press", "stc", "--retention", "0.5",
            "--memory-tokens", "5", "--decode-tokens", "2", "--json", str(path), "--quiet"]
    assert main(argv) == 0
    assert "prefill-append" in capsys.readouterr().out
    stream = json.loads(path.read_text())["stream"]
    assert stream["chunks"] == 3 and stream["chunk_frames"] == 2
    assert (stream["visual_tokens_per_chunk"], stream["kept_tokens_per_chunk"]) == (4, 2)
    assert all(len(stream["stage_ms"][stage]) == 3 for stage in ("encode", "press", "evict", "prefill", "ask"))
    assert all(ms > 0 for stage in ("encode", "press", "prefill", "ask") for ms in stream["stage_ms"][stage])
    assert stream["visual_tokens_in_memory"] <= 5
    assert stream["kv_cache_mb"] == pytest.approx(stream["kv_cache_mb_per_layer"] * stream["layers"])
    assert stream["chunk_ms"] == pytest.approx(sum(stream["stage_ms_median"][s]
                                                   for s in ("encode", "press", "evict", "prefill")))


@pytest.mark.parametrize("argv, message", [
    (["--pipeline"], "--pipeline profiles retrieve-then-press: pass --retrieve K too"),
    (["--stream", "2", "--retrieve", "1"], "it does not take --retrieve or --video"),
    (["--stream", "0"], "--stream must be a positive integer"),
    (["--stream", "2", "--memory-tokens", "0"], "--memory-tokens must be a positive integer"),
])
def test_profile_pipeline_and_stream_bad_options(argv, message, capsys):
    assert main(["profile", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
