"""What the family adapters know so that no code outside vidpress/models has to: M-RoPE, DeepStack, splitting and
packing encoder outputs, inputs from pre-computed video features, placeholder ids, and the Qwen pixel layout."""

import numpy as np
import pytest
import torch

from vidpress.models import adapter_class, get_adapter
from vidpress.presses.cacovid import CaCoVIDPolicy
from vidpress.testing import FAMILIES, make_inputs, tiny_video

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def two_videos(processor):
    return make_inputs(processor, [tiny_video(8, seed=1), tiny_video(8, seed=2)], ["What happens?", "Which square?"])


def without_pixels(inputs) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "pixel_values")}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_facts(tiny_model, family):
    model, _ = tiny_model(family)
    adapter = get_adapter(model)
    assert type(adapter) is adapter_class(family) and adapter_class("llama") is None
    assert adapter.mrope == family.startswith("qwen")
    assert adapter.deepstack == (family == "qwen3_vl")
    assert adapter.placeholder_token_ids == [model.config.video_token_id, model.config.image_token_id]
    # the CaCoVID policy numbers its context as the model does, and keeps the saved key "mrope"
    assert CaCoVIDPolicy.from_vlm(model).config["mrope"] is adapter.mrope


@pytest.mark.parametrize("family", FAMILIES)
def test_split_then_pack_is_the_encoder_output(tiny_model, family):
    model, processor = tiny_model(family)
    adapter = get_adapter(model)
    inputs = two_videos(processor)
    output = adapter.encode("video", dict(inputs))
    entries = adapter.split_video_output(output)
    assert len(entries) == 2 and ("deepstack_features" in entries[0]) == adapter.deepstack
    packed = adapter.pack_video_output(output, entries)
    assert type(packed) is type(output) and "last_hidden_state" not in packed
    for key in packed:
        a, b = packed[key], output[key]
        if key == "deepstack_features":  # per level, per video
            assert all(torch.equal(x, y) for level_a, level_b in zip(a, b) for x, y in zip(level_a, level_b))
        else:
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    with torch.no_grad():
        ref = model(**inputs).logits
        out = model(**without_pixels(inputs), mm_encoder_outputs={"video": packed}).logits
    assert torch.equal(out, ref)
    # one video alone, as CaCoVID's reward batches each sample's own entries
    single = make_inputs(processor, [tiny_video(8, seed=2)], "Which square?")
    with torch.no_grad():
        alone = adapter.pack_video_output(output, entries[1:])
        assert torch.equal(model(**without_pixels(single), mm_encoder_outputs={"video": alone}).logits,
                           model(**single).logits)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_precomputed_video_inputs_are_the_pixel_inputs(tiny_model, family):
    model, processor = tiny_model(family)
    adapter = get_adapter(model)
    inputs = two_videos(processor)
    features = list(adapter.encode("video", dict(inputs)).pooler_output)
    seconds = inputs.get("second_per_grid_ts")
    built = adapter.precomputed_video_inputs(features, inputs["video_grid_thw"], seconds, inputs["input_ids"])
    expected = {"video_grid_thw", "mm_token_type_ids", "mm_encoder_outputs"}
    assert set(built) == expected | ({"second_per_grid_ts"} if seconds is not None else set())
    text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        assert torch.equal(model(**text, **built).logits, model(**inputs).logits)


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_onevision", "llava_next_video"])
def test_precomputed_video_inputs_elsewhere_name_the_families_that_have_them(tiny_model, family):
    model, _ = tiny_model(family)
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match=rf"Qwen2-VL / Qwen2.5-VL \(qwen2_vl/qwen2_5_vl\).*\({family}\)"):
        adapter.precomputed_video_inputs([torch.zeros(4, 8)], torch.tensor([[1, 2, 2]]), None, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="C-GRPO training"):
        adapter.check_precomputed_videos("C-GRPO training")


def normalised(video: np.ndarray, processor) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> [1, F, 3, H, W], rescaled and normalised as the video processor does."""
    vp = processor.video_processor
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()[None] / 255.0
    return (x - torch.tensor(vp.image_mean).view(1, 1, 3, 1, 1)) / torch.tensor(vp.image_std).view(1, 1, 3, 1, 1)


@pytest.mark.parametrize("family", QWEN)
def test_patchify_lays_out_pixels_as_the_video_processor(tiny_model, family):
    model, processor = tiny_model(family)
    adapter = get_adapter(model)
    videos = [tiny_video(8, seed=1), tiny_video(7, seed=2)]  # 7 frames: padded with the last one, as the processor does
    inputs = make_inputs(processor, videos, ["What happens?", "Which square?"])
    laid_out = [adapter.patchify(normalised(v, processor)) for v in videos]
    torch.testing.assert_close(torch.cat([p for p, _ in laid_out]), inputs["pixel_values_videos"], atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([g for _, g in laid_out]), inputs["video_grid_thw"])
    with pytest.raises(ValueError, match="multiples of"):
        adapter.patchify(torch.zeros(1, 2, 3, 30, 56))
    with pytest.raises(ValueError, match=r"\[B, F, C=3, H, W\]"):
        adapter.patchify(torch.zeros(2, 56, 56, 3))


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next_video"])
def test_patchify_elsewhere_is_a_clear_error(tiny_model, family):
    model, _ = tiny_model(family)
    with pytest.raises(ValueError, match="processor"):
        get_adapter(model).patchify(torch.zeros(1, 2, 3, 56, 56))


def test_patchify_on_the_reference_model_is_the_fast_path_and_the_processor():
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import example_inputs, load_reference
    from vidpress.training.reference import fast_pixels

    model, processor = load_reference(attn_implementation="eager")
    batch = make_split("val", 3)
    frames = np.stack([e.video for e in batch])  # [B, F, H, W, 3] uint8, at the processor's size
    pixels, grid = get_adapter(model).patchify(torch.cat([normalised(v, processor) for v in frames]))
    assert torch.equal(pixels, fast_pixels(model, frames)[0])
    inputs = example_inputs(processor, batch)
    torch.testing.assert_close(pixels, inputs["pixel_values_videos"], atol=1e-5, rtol=0)
    assert torch.equal(grid, inputs["video_grid_thw"])
