"""The press side of the vLLM plugin (vidpress.serving.vllm): config parsing, refusals and the exact-count keep mask.
Runs without vLLM; the end-to-end tests inside vLLM are in test_vllm_plugin.py."""

import math

import pytest
import torch

from vidpress import VideoTokens, presses
from vidpress.serving.vllm import applicable_presses, check_qwen3_media, press_from_config, press_knobs, select_exact

# From the presses' declared flags: vLLM's pruning step runs after the vision encoder, without the question, before
# the LLM. A new press lands on its side by what it declares.
REFUSED = [name for name in presses.available()
           if presses.PRESSES[name].query_aware or presses.PRESSES[name].needs_vision_stats
           or presses.PRESSES[name].acts_in_llm]
WORKING = [name for name in presses.available() if name not in REFUSED]
# the working presses with their own per-token scores (`Press.token_scores`), by which a count is fitted
SCORED = [name for name in WORKING if presses.get(name).token_scores(VideoTokens(torch.zeros(2, 4, 8), (2, 2, 2)))
          is not None]


def video(T=8, M=16, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return VideoTokens(torch.randn(T, M, D, generator=g), (T, int(math.isqrt(M)), int(math.isqrt(M))))


def config(name, **knobs):
    return {"vidpress": {"press": name, **knobs}}


def test_applicable_presses():
    assert WORKING and REFUSED and SCORED  # both sides and the fitting by scores are exercised
    assert applicable_presses() == WORKING


@pytest.mark.parametrize("name", REFUSED)
def test_refused_press_names_the_working_ones(name):
    with pytest.raises(ValueError, match=f"press '{name}' cannot run in vLLM: .*" + ", ".join(WORKING)):
        press_from_config(config(name), "qwen2_5_vl", 0.5)


def test_unknown_press_and_bad_settings():
    with pytest.raises(ValueError, match="unknown press 'nope'; presses that run in vLLM: " + ", ".join(WORKING)):
        press_from_config(config("nope"), "qwen2_5_vl", 0.5)
    with pytest.raises(ValueError, match="additional-config"):
        press_from_config({}, "qwen2_5_vl", 0.5)
    with pytest.raises(ValueError, match="retention comes from --video-pruning-rate"):
        press_from_config(config(WORKING[0], retention=0.3), "qwen2_5_vl", 0.5)
    with pytest.raises(ValueError, match="needs --video-pruning-rate in"):
        press_from_config(config(WORKING[0]), "qwen2_5_vl", None)
    with pytest.raises(ValueError, match="score_deepstack applies to Qwen3-VL only"):
        press_from_config(config("vidcom2", score_deepstack=True), "qwen2_5_vl", 0.5)
    with pytest.raises(ValueError, match="tau must be > 0"):  # knobs reach the press
        press_from_config(config("vidcom2", tau=0), "qwen3_vl", 0.5)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_onevision", "llava_next_video"])
def test_family_without_hook(model_type):
    with pytest.raises(ValueError,
                       match=f"no video-pruning hook for model type '{model_type}' in vLLM.*qwen2_5_vl.*qwen3_vl"):
        press_from_config(config(WORKING[0]), model_type, 0.5)


def test_press_runs_at_one_minus_rate_with_knobs():
    serving = press_from_config(config("VidCom2", tau=0.05, score_deepstack=True), "qwen3_vl", 0.75)
    assert isinstance(serving.press, presses.VidCom2Press)
    assert serving.press.retention == pytest.approx(0.25) and serving.press.tau == 0.05
    assert serving.score_deepstack


@pytest.mark.parametrize("name", WORKING)
@pytest.mark.parametrize("count", [8, 16, 31, 40, 77, 127, 128])
def test_select_exact_keeps_the_contract_count(name, count):
    tokens = video()
    press = presses.get(name, retention=0.25)
    keep, features = select_exact(press, tokens, count)
    assert keep.numel() == count and features.shape == (count, 32)
    assert torch.equal(keep, keep.unique())  # sorted, no duplicates
    if count == 128:
        assert torch.equal(features, tokens.features.reshape(128, 32))


@pytest.mark.parametrize("name", WORKING)
def test_select_exact_is_the_press_choice_when_counts_agree(name):
    tokens = video()
    press = presses.get(name, retention=0.25)
    selection = press.select(tokens)
    keep, features = select_exact(press, tokens, selection.num_kept)
    assert torch.equal(keep, selection.keep_indices)
    expected = selection.features if selection.features is not None else tokens.features.reshape(128, 32)[keep]
    assert torch.equal(features, expected)


@pytest.mark.parametrize("name", SCORED)
def test_select_exact_fits_by_the_press_scores(name):
    tokens = video()
    press = presses.get(name, retention=0.25)
    scores = press.token_scores(tokens).flatten()
    base = press.select(tokens).keep_indices
    more, _ = select_exact(press, tokens, base.numel() + 5)
    fewer, _ = select_exact(press, tokens, base.numel() - 5)
    added = sorted(set(more.tolist()) - set(base.tolist()))
    dropped = sorted(set(base.tolist()) - set(fewer.tolist()))
    assert len(added) == 5 and set(base.tolist()) <= set(more.tolist())
    assert len(dropped) == 5 and set(fewer.tolist()) <= set(base.tolist())
    others = sorted(set(range(128)) - set(base.tolist()) - set(added))
    assert scores[added].min() >= scores[others].max()
    assert scores[dropped].max() <= scores[fewer].min()


def test_select_exact_merging_press_keeps_merged_rows_when_topping_up():
    tokens = video()
    press = presses.get("dycoke", retention=0.5, merge=True)  # the merging variant
    selection = press.select(tokens)
    keep, features = select_exact(press, tokens, selection.num_kept + 3)
    flat = tokens.features.reshape(128, 32)
    old = torch.isin(keep, selection.keep_indices)
    assert torch.equal(features[old], selection.features)  # merged rows stay merged
    assert torch.equal(features[~old], flat[keep[~old]])  # added tokens bring their own features


def test_select_exact_bad_count():
    with pytest.raises(ValueError, match="cannot keep 0 of 128"):
        select_exact(presses.get(WORKING[0]), video(), 0)


@pytest.mark.parametrize("name", presses.available())
def test_token_scores_are_declared_per_token_or_none(name):
    """`Press.token_scores`, by which select_exact fits a count: float [T, M] scores, or None for a press without."""
    tokens = video()
    scores = presses.get(name, retention=0.25).token_scores(tokens)
    if scores is not None:
        assert scores.shape == (8, 16) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", WORKING)
def test_unknown_knob_lists_the_press_knobs(name):
    knobs = press_knobs(presses.PRESSES[name])
    assert "retention" not in knobs
    with pytest.raises(ValueError, match=f"press '{name}' has no knob 'bogus'; its knobs: " + ", ".join(knobs)):
        press_from_config(config(name, bogus=1), "qwen2_5_vl", 0.5)
    for knob in knobs:  # every listed knob is accepted with its default
        press_from_config(config(name, **{knob: getattr(presses.get(name), knob)}), "qwen2_5_vl", 0.5)


@pytest.mark.parametrize(("counts", "refused"), [
    ({"video": 1}, False), ({"image": 3}, False), ({}, False), ({"video": 1, "image": 0}, False),
    ({"video": 2}, True), ({"video": 1, "image": 1}, True), ({"video": 3, "image": 2}, True)])
def test_qwen3_refuses_a_video_beside_other_media(counts, refused):
    if refused:
        with pytest.raises(ValueError, match="Qwen3-VL with video pruning serves one video per request"):
            check_qwen3_media(counts)
    else:
        check_qwen3_media(counts)
# --- the query architecture (VidpressQueryQwen2_5_VLForConditionalGeneration): query-aware presses get the question
QUERY_REFUSED = [name for name in presses.available() if presses.PRESSES[name].count_follows_content
                 or presses.PRESSES[name].needs_vision_stats or presses.PRESSES[name].acts_in_llm]
QUERY_AWARE = [name for name in presses.available() if presses.PRESSES[name].query_aware]


def test_query_aware_presses_name_the_query_architecture():
    assert QUERY_AWARE
    for name in QUERY_AWARE:
        if name in QUERY_REFUSED:
            continue
        with pytest.raises(ValueError, match="VidpressQueryQwen2_5_VLForConditionalGeneration"):
            press_from_config(config(name), "qwen2_5_vl", 0.5)


def test_query_architecture_serves_a_trained_policy():
    from vidpress.synthetic.reference import CACOVID_REFERENCE_DIR

    for name in QUERY_AWARE:
        if name in QUERY_REFUSED or not presses.PRESSES[name].needs_policy:
            continue
        serving = press_from_config(config(name, policy=str(CACOVID_REFERENCE_DIR)), "qwen2_5_vl", 0.75,
                                    with_query=True)
        assert serving.press.query_aware and serving.press.retention == pytest.approx(0.25)


@pytest.mark.parametrize("name", QUERY_REFUSED)
def test_query_architecture_still_refuses_what_cannot_run(name):
    with pytest.raises(ValueError, match=f"press '{name}' cannot run in vLLM"):
        press_from_config(config(name), "qwen2_5_vl", 0.5, with_query=True)
    if presses.PRESSES[name].count_follows_content:
        with pytest.raises(ValueError, match="content decides how many tokens"):
            press_from_config(config(name), "qwen2_5_vl", 0.5, with_query=True)
