"""Presses inside the LLM (FastV, PDrop) in the situations where the pruning machinery once went wrong: a batch
without a cache, and prompts without video."""

import pytest
import torch

from vidpress.presses import FastVPress, PDropPress
from vidpress.testing import make_inputs, tiny_image, tiny_model_and_processor, tiny_video

NEW = 6
IN_LLM = {"fastv": lambda: FastVPress(0.6), "pdrop": lambda: PDropPress(0.6, stage_depths=(0.5, 0.75))}


@pytest.fixture(scope="module")
def qwen3():
    return tiny_model_and_processor("qwen3_vl", text_config={"num_hidden_layers": 4})


@pytest.fixture(scope="module")
def qwen25():
    return tiny_model_and_processor("qwen2_5_vl", text_config={"num_hidden_layers": 4})


def greedy(model, inputs, **options):
    # a random-weight model may emit a visual placeholder, which a no-cache step would then take for video
    suppress = [model.config.video_token_id, model.config.image_token_id]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, suppress_tokens=suppress,
                             output_logits=True, return_dict_in_generate=True, **options)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("name", ["pdrop", pytest.param("fastv", marks=pytest.mark.slow)])
def test_left_padded_batch_without_cache_equals_the_cached_run(qwen3, name):
    """Without a cache every step re-runs the prefill with the generated tokens appended; the ranking query (the
    last prompt token) must not see them, or later steps keep other tokens than the cached run (PDrop on Qwen3-VL
    once differed by 0.43 in the logits from the 3rd new token)."""
    model, processor = qwen3
    inputs = make_inputs(processor, [tiny_video(8, seed=12), tiny_video(12, seed=22)],
                         ["What happens here?", "Which square is red?"])
    assert (inputs["attention_mask"][:, 0] == 0).any()  # left padding is exercised
    with IN_LLM[name]()(model):
        cached, cached_logits = greedy(model, inputs)
        uncached, uncached_logits = greedy(model, inputs, use_cache=False)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=0)


def image_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=[text], images=[tiny_image(seed=1)], return_tensors="pt")


@pytest.mark.parametrize("name", ["fastv", pytest.param("pdrop", marks=pytest.mark.slow)])
def test_prompts_without_video_run_unchanged_also_after_a_video(qwen25, name):
    """Text-only and image-only prompts give the unpressed model's output, before and after a video call in the same
    block (they once crashed: the scoring attention ranked without a prefill's maps, or with the last video's)."""
    model, processor = qwen25
    text = processor(text=["What is a red square?"], return_tensors="pt")
    image = image_inputs(processor)
    video = make_inputs(processor, [tiny_video(8, seed=3)], "What happens?")
    with torch.no_grad():
        ref = {label: (greedy(model, inputs), model(**inputs).logits)
               for label, inputs in (("text", text), ("image", image))}
    with IN_LLM[name]()(model) as pressed, torch.no_grad():
        for label, inputs in [("text", text), ("image", image), ("video", video), ("text", text), ("image", image)]:
            generated, logits = greedy(model, inputs), model(**inputs).logits
            if label == "video":
                assert pressed.last_report.retention < 1
                continue
            (ref_sequences, ref_step_logits), ref_logits = ref[label]
            assert torch.equal(generated[0], ref_sequences)
            torch.testing.assert_close(generated[1], ref_step_logits, atol=0, rtol=0)
            assert torch.equal(logits, ref_logits)
            assert pressed.last_report.retention == 1.0
