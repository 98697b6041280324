"""Tiny offline models, processors and inputs from vidpress.tiny (re-exported by vidpress.testing)."""

import importlib

import numpy as np
import pytest
import torch
import transformers

from vidpress.testing import (
    CHAT_TEMPLATES,
    FAMILIES,
    MODEL_CLASSES,
    build_tiny_model,
    load_tiny,
    make_inputs,
    tiny_image,
    tiny_video,
    train_tokenizer,
)

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# <video> placeholders for one 56x56, 8-frame clip: 4 tokens per frame (per temporal pair for Qwen);
# LLaVA-OneVision adds one trailing newline token.
VIDEO_TOKENS = {"qwen2_vl": 16, "qwen2_5_vl": 16, "qwen3_vl": 16, "llava_onevision": 33, "llava_next_video": 32}
PROMPT_START = {
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|video_pad|><|vision_end|>What happens?",
    "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|video_pad|><|vision_end|>What happens?",
    "qwen3_vl": "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?",
    "llava_onevision": "<|im_start|>user <video>\nWhat happens?",
    "llava_next_video": "USER: <video>\nWhat happens?",
}
VIDEO_MESSAGE = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]


def n_video_tokens(model, inputs) -> list[int]:
    return (inputs["input_ids"] == model.config.video_token_id).sum(-1).tolist()


def test_tiny_video_and_image_are_deterministic_moving_squares():
    video = tiny_video(num_frames=6, height=40, width=48, seed=3)
    assert video.shape == (6, 40, 48, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, tiny_video(num_frames=6, height=40, width=48, seed=3))
    assert not np.array_equal(video, tiny_video(num_frames=6, height=40, width=48, seed=4))
    assert not np.array_equal(video[0], video[-1])  # squares move
    image = tiny_image(30, 20, seed=1)
    assert image.shape == (30, 20, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, tiny_image(30, 20, seed=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_table_comes_from_the_family_modules(family):
    spec = importlib.import_module(f"vidpress.tiny.{family}").FAMILY
    assert MODEL_CLASSES[family] == spec.model_class and hasattr(transformers, spec.model_class)
    assert CHAT_TEMPLATES[family] == spec.chat_template
    tokenizer = train_tokenizer(family)
    assert tokenizer.convert_tokens_to_ids(list(spec.specials)) == list(range(len(spec.specials)))


def test_unknown_family_names_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown family 'qwen9'.*llava_next_video"):
        train_tokenizer("qwen9")


def test_build_is_deterministic_given_seed(tmp_path):
    a = build_tiny_model("qwen2_5_vl", tmp_path / "a", seed=0)
    b = build_tiny_model("qwen2_5_vl", tmp_path / "b", seed=0)
    c = build_tiny_model("qwen2_5_vl", tmp_path / "c", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_load_tiny_builds_once_into_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPRESS_CACHE", str(tmp_path))
    load_tiny("llava_next_video")
    weights = tmp_path / "llava_next_video" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    model, processor = load_tiny("llava_next_video", attn_implementation="sdpa")
    assert weights.stat().st_mtime_ns == stamp
    assert not model.training and model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", FAMILIES)
def test_config_ids_match_tokenizer(tiny_model, family):
    model, processor = tiny_model(family)
    tok = processor.tokenizer
    assert model.config.video_token_id == tok.convert_tokens_to_ids(processor.video_token)
    assert model.config.image_token_id == tok.convert_tokens_to_ids(processor.image_token)
    if family in QWEN:
        assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert tok.pad_token_id is not None and model.generation_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok) <= 512


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_single_video_forward_and_generate(tiny_model, family, attn):
    model, processor = tiny_model(family, attn)
    prompt = processor.apply_chat_template(VIDEO_MESSAGE, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith(PROMPT_START[family])
    inputs = make_inputs(processor, [tiny_video()])
    assert n_video_tokens(model, inputs) == [VIDEO_TOKENS[family]]
    if family in QWEN:
        assert inputs["video_grid_thw"].tolist() == [[4, 4, 4]]
    else:
        assert tuple(inputs["pixel_values_videos"].shape) == (1, 8, 3, 56, 56)
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        other = model(**make_inputs(processor, [tiny_video(seed=1)])).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert not torch.allclose(logits[0, -1], other[0, -1])  # the video reaches the answer


def test_qwen3_prompt_has_frame_timestamps(tiny_model):
    model, processor = tiny_model("qwen3_vl")
    inputs = make_inputs(processor, [tiny_video()], fps=2.0)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    # One timestamp per temporal pair of frames: mean of frame times (0, 0.5), (1, 1.5), ...
    assert [f"<{t:.1f} seconds>" in text for t in (0.25, 1.25, 2.25, 3.25)] == [True] * 4


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch(tiny_model, family):
    model, processor = tiny_model(family, "sdpa")
    # LLaVA stacks videos into one tensor, so frame counts must agree there.
    frames = 4 if family in QWEN else 8
    videos = [tiny_video(8), tiny_video(frames, seed=1)]
    questions = ["What happens?", "Which square moves in the video?"]
    inputs = make_inputs(processor, videos, questions)
    mask = inputs["attention_mask"]
    assert mask.shape[0] == 2 and mask[:, -1].all() and not mask[:, 0].all()
    expected = VIDEO_TOKENS[family]
    assert n_video_tokens(model, inputs) == [expected, expected // 2 if family in QWEN else expected]
    with torch.no_grad():
        batched = model(**inputs).logits[:, -1]
        single = [model(**make_inputs(processor, [v], q)).logits[0, -1] for v, q in zip(videos, questions)]
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(batched, torch.stack(single), atol=1e-5, rtol=1e-5)  # padding is invisible
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next_video"])
def test_llava_rejects_mixed_frame_counts(tiny_model, family):
    _, processor = tiny_model(family)
    with pytest.raises(ValueError, match="same frame count"):
        make_inputs(processor, [tiny_video(8), tiny_video(4)], ["a?", "b?"])


@pytest.mark.parametrize("family", FAMILIES)
def test_several_videos_and_an_image_in_one_sample(tiny_model, family):
    model, processor = tiny_model(family)
    frames = 6 if family in QWEN else 8
    inputs = make_inputs(processor, [tiny_video(8), tiny_video(frames, seed=1)], images=[tiny_image()])
    per_video = VIDEO_TOKENS[family]
    assert n_video_tokens(model, inputs) == [per_video + (12 if family in QWEN else per_video)]
    assert (inputs["input_ids"] == model.config.image_token_id).sum() > 0
    batch = make_inputs(processor, [[tiny_video(8), tiny_video(8, seed=2)], tiny_video(8, seed=1)], ["a?", "b?"])
    assert n_video_tokens(model, batch) == [2 * per_video, per_video]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        model(**batch)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", QWEN)
def test_qwen_keeps_112px_frames(tiny_model, family):
    _, processor = tiny_model(family)
    inputs = make_inputs(processor, [tiny_video(8, 112, 112)])
    assert inputs["video_grid_thw"].tolist() == [[4, 8, 8]]  # 16 merged tokens per temporal pair
