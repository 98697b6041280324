"""The adapters on every model family: batched == per-sample, model restored after use, several videos and images,
labels, beam search. (Every press at retention 1 on every family: tests/presses/test_contract.py.)"""

import logging

import pytest
import torch

from vidpress import RandomPress, VidCom2Press
from vidpress.models import get_adapter
from vidpress.testing import FAMILIES, make_inputs, tiny_image, tiny_video

ATTENTION = ("eager", "sdpa")
GENERATE = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)


@pytest.fixture
def tiny(tiny_model):
    return tiny_model


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_per_sample(tiny, family, attn):
    model, processor = tiny(family, attn)
    # LLaVA processors stack videos into one tensor, so their frame counts must match
    frames = (8, 8) if family.startswith("llava") else (8, 12)
    videos = [tiny_video(frames[0], seed=1), tiny_video(frames[1], seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    press = VidCom2Press(retention=0.3)
    with torch.no_grad(), press(model) as pressed:
        singles, kept = [], []
        for video, question in zip(videos, questions):
            singles.append(model.generate(**make_inputs(processor, [video], question), **GENERATE))
            kept.append(pressed.last_report.visual_tokens_after)
        batch_inputs = make_inputs(processor, videos, questions)
        assert (batch_inputs["attention_mask"][:, 0] == 0).any()  # left padding is exercised
        batched = model.generate(**batch_inputs, **GENERATE)
        assert [s.num_kept for s in pressed.last_report.selections] == kept
    if family.startswith("qwen"):
        assert kept[0] != kept[1]  # different keep counts are exercised
    for i, single in enumerate(singles):
        assert torch.equal(single.sequences[0, -4:], batched.sequences[i, -4:])
        for a, b in zip(single.logits, batched.logits):
            assert torch.allclose(a[0], b[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_restored_after_exit_and_exception(tiny, family):
    model, processor = tiny(family)
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad():
        ref = model(**inputs).logits
        with VidCom2Press(retention=0.25)(model):
            pressed = model(**inputs).logits
        assert pressed.shape[1] < ref.shape[1]
        assert torch.equal(model(**inputs).logits, ref)
        with pytest.raises(RuntimeError, match="boom"):
            with VidCom2Press(retention=0.25)(model):
                model(**inputs)
                raise RuntimeError("boom")
        assert torch.equal(model(**inputs).logits, ref)
        assert "generate" not in vars(model) and not model._forward_pre_hooks
        assert torch.equal(
            model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, : inputs["input_ids"].shape[1]],
            inputs["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_pressed_generate_keeps_the_callers_prompt(tiny, family):
    model, processor = tiny(family)
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad(), VidCom2Press(retention=0.25)(model) as pressed:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    L = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :L], inputs["input_ids"]) and out.shape[1] == L + 3
    report = pressed.last_report
    assert report.visual_tokens_after < report.visual_tokens_before
    assert report.sequence_length[1] == L - (report.visual_tokens_before - report.visual_tokens_after)


@pytest.mark.parametrize("family", FAMILIES)
def test_several_videos_and_an_image_in_one_prompt(tiny, family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    inputs = make_inputs(processor, [[tiny_video(8, seed=1), tiny_video(8, seed=2)]], "Compare the videos.",
                         images=[[tiny_image()]])
    ids = inputs["input_ids"]
    pressed, report = adapter.press_inputs(VidCom2Press(retention=0.25), dict(inputs), for_generate=True)
    assert len(report.selections) == 2
    new_ids = pressed["input_ids"]
    image_id, video_id = model.config.image_token_id, model.config.video_token_id
    assert (new_ids == image_id).sum() == (ids == image_id).sum()  # images untouched
    extra = 1 if family == "llava_onevision" else 0  # its newline token per video is always kept
    assert (new_ids == video_id).sum() == report.visual_tokens_after + 2 * extra
    # text tokens are all there, in order
    def text(x):
        return x[(x != image_id) & (x != video_id)]

    assert torch.equal(text(new_ids[0]), text(ids[0]))
    with torch.no_grad():
        ref = model(**inputs).logits
        with VidCom2Press(retention=1.0)(model):
            assert torch.equal(model(**inputs).logits, ref)
        with VidCom2Press(retention=0.25)(model):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_no_video_is_a_logged_no_op(tiny, caplog):
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, [], "Say hello.", images=[tiny_image()])
    with torch.no_grad():
        ref = model(**inputs).logits
        with caplog.at_level(logging.WARNING, logger="vidpress"), VidCom2Press(retention=0.25)(model):
            out = model(**inputs).logits
            model(**inputs)
        assert torch.equal(out, ref)
    assert sum("no video" in r.message for r in caplog.records) == 1


def test_unsupported_model_lists_the_families():
    class Config:
        model_type = "llama"

    class NotAVideoModel(torch.nn.Module):
        config = Config()

    with pytest.raises(ValueError, match="supported families: Qwen2-VL.*LLaVA-OneVision.*LLaVA-NeXT-Video"):
        RandomPress(retention=0.5)(NotAVideoModel()).__enter__()


def test_labels_are_cut_with_the_tokens(tiny):
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.video_token_id, -100)
    with torch.no_grad():
        ref = model(**inputs, labels=labels).loss
        with VidCom2Press(retention=1.0)(model):
            assert torch.equal(model(**inputs, labels=labels).loss, ref)
        with VidCom2Press(retention=0.25)(model):
            # every text label is still there, so the loss is over the same targets
            loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss)


def test_beam_search_returns_the_callers_prompt_per_sequence(tiny):
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(12, seed=2)], ["What happens?", "Why?"])
    with torch.no_grad(), VidCom2Press(retention=0.25)(model):
        out = model.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    L = inputs["input_ids"].shape[1]
    assert out.shape == (4, L + 3)
    assert torch.equal(out[:, :L], inputs["input_ids"].repeat_interleave(2, dim=0))
