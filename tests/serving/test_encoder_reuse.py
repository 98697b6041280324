"""Encoder reuse (vidpress.serving.encoder_reuse) without vLLM: the reuse rule, the settings knob, and the reuse
through transformers' Qwen2.5-VL vision tower (exact for encoded groups, copies for reused ones). The same code
inside vLLM's model class: test_encoder_reuse_vllm.py."""

import pytest
import torch

from vidpress.serving.encoder_reuse import REUSE_KEY, reuse_plan, reuse_threshold_from, transformers_video_features
from vidpress.serving.vllm import press_from_config
from vidpress.testing import make_inputs, tiny_model_and_processor, tiny_video


def test_plan_compares_with_the_reference_and_uses_the_largest_token_change():
    pixels = torch.zeros(5, 8, 3)  # 5 groups, 2 tokens of 4 rows
    pixels[1, :4] += 0.05  # small change of token 0: reused
    pixels[2, :4] += 0.2  # 0.2 from group 0 (the reference), though 0.15 from group 1: encoded
    pixels[3] = pixels[2]  # equal to the new reference
    pixels[4, 4:] += 1.0  # one token changed a lot: encoded
    assert reuse_plan(pixels, unit=4, threshold=0.1).tolist() == [0, 0, 2, 2, 4]
    assert reuse_plan(pixels, unit=4, threshold=0.0).tolist() == [0, 1, 2, 3, 4]  # 0 reuses nothing
    with pytest.raises(ValueError, match="do not form tokens of 3 rows"):
        reuse_plan(pixels, unit=3, threshold=0.1)


@pytest.mark.parametrize("value", [-0.1, "0.1", True, float("nan")])
def test_bad_threshold_is_refused_with_what_is_accepted(value):
    with pytest.raises(ValueError, match=f"{REUSE_KEY} must be a number >= 0"):
        reuse_threshold_from({REUSE_KEY: value})


def test_knob_reaches_the_serving_press_and_not_the_press():
    serving = press_from_config({"vidpress": {"press": "evs", REUSE_KEY: 0.1}}, "qwen2_5_vl", 0.75)
    assert serving.encoder_reuse_threshold == 0.1 and serving.press.retention == 0.25
    assert press_from_config({"vidpress": {"press": "evs"}}, "qwen2_5_vl", 0.75).encoder_reuse_threshold is None


def repeated_groups_video(seed=0):
    """16 frames of 112 px (8 temporal groups) whose groups 1-3 repeat group 0 and group 6 repeats group 5."""
    frames = tiny_video(16, 112, 112, seed=seed)
    frames[2:8] = torch.from_numpy(frames[0:2]).repeat(3, 1, 1, 1).numpy()
    frames[12:14] = frames[10:12]
    return frames


def test_transformers_reuse_is_exact_for_encoded_groups_and_copies_reused_ones():
    model, processor = tiny_model_and_processor("qwen2_5_vl")
    inputs = make_inputs(processor, [repeated_groups_video(), tiny_video(12, 112, 56, seed=3)], ["a", "b"])
    pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    with torch.no_grad():
        full = model.get_video_features(pixels, grid, return_dict=True).pooler_output
        plain, plans = transformers_video_features(model, pixels, grid, 0.0)
        reused, reuse_plans = transformers_video_features(model, pixels, grid, 1e-3)
    assert all(torch.equal(a, b) for a, b in zip(plain, full))  # nothing reused: the plain encoder's output
    assert [p.tolist() for p in plans] == [list(range(8)), list(range(6))]
    assert reuse_plans[0].tolist() == [0, 0, 0, 0, 4, 5, 5, 7]
    assert reuse_plans[1].tolist() == list(range(6))  # a moving clip: every group changed
    for features, reference, source, (t, h, w) in zip(reused, full, reuse_plans, grid.tolist()):
        features, reference = features.view(t, h * w // 4, -1), reference.view(t, h * w // 4, -1)
        encoded = source == torch.arange(t)
        torch.testing.assert_close(features[encoded], reference[encoded], rtol=0, atol=1e-5)
        assert all(torch.equal(features[g], features[source[g]]) for g in range(t))
