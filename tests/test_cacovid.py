"""CaCoVID: the policy, the press, the combination sampler, the loss and the optimisation."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidpress import presses
from vidpress.models import get_adapter
from vidpress.presses.cacovid import CaCoVIDPolicy, CaCoVIDPress, released_allocation
from vidpress.testing import FAMILIES, make_inputs, tiny_video
from vidpress.training.cacovid import (
    CONTENT,
    FRAME,
    TOKEN,
    CaCoVIDSettings,
    PolicySample,
    balanced_weights,
    clipped_surrogate,
    density_peak_scores,
    frame_mode_sample,
    frame_surrogate,
    group_bounds,
    group_cap,
    grouped_token_sample,
    mode_advantages,
    next_rate,
    optimise_policy,
    rollout_combinations,
    water_fill,
)
from vidpress.types import Query, VideoTokens

ROOT = Path(__file__).resolve().parents[1]


def random_policy(model, seed=0):
    """A policy for `model` with random (not zero) output layers, so scores differ between tokens and frames."""
    torch.manual_seed(seed)
    policy = CaCoVIDPolicy.from_vlm(model)
    for head in (policy.token_head, policy.frame_head):
        torch.nn.init.normal_(head[-1].weight)
    return policy.eval()


def video_and_query(D, T=8, M=16, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = math.isqrt(M)
    return VideoTokens(torch.randn(T, M, D, generator=g), (T, side, side)), Query(torch.arange(L), torch.randn(L, D, generator=g))


# --- the policy --------------------------------------------------------------------------------------------

def test_policy_is_bidirectional_and_batched_equals_single(tiny_model):
    policy = random_policy(tiny_model("qwen2_5_vl")[0])
    tokens, query = video_and_query(policy.hidden_size)
    scores, frames = policy.score(tokens, query)
    assert scores.shape == (8, 16) and frames.shape == (8,)
    changed = Query(query.token_ids, query.embeddings.clone())
    changed.embeddings[-1] += 1.0
    # the video comes first in the sequence: only a bidirectional layer lets the last question token change it
    assert not torch.allclose(policy.score(tokens, changed)[0], scores)
    short, short_query = video_and_query(policy.hidden_size, T=4, L=3, seed=1)
    batched_scores, batched_frames, modes = policy([tokens.features, short.features], [tokens.grid, short.grid], [query, short_query])
    assert modes[0].shape == (2,)
    assert torch.allclose(batched_scores[0], scores, atol=1e-5) and torch.allclose(batched_frames[0], frames, atol=1e-5)
    assert torch.allclose(batched_scores[1], policy.score(short, short_query)[0], atol=1e-5)


def test_policy_save_load_round_trip(tiny_model, tmp_path):
    policy = random_policy(tiny_model("qwen3_vl")[0])
    tokens, query = video_and_query(policy.hidden_size)
    policy.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"cacovid_config.json", "model.safetensors"}
    loaded = CaCoVIDPolicy.from_pretrained(tmp_path)
    assert torch.equal(loaded.score(tokens, query)[0], policy.score(tokens, query)[0])
    with pytest.raises(FileNotFoundError, match="no CaCoVID policy"):
        CaCoVIDPolicy.from_pretrained(tmp_path / "missing")


def documented_state_dict(model, seed=0):
    """A state dict written only from CaCoVIDPolicy's documented names and shapes (as the released training code
    would save it): the LLM's first decoder layer under `layer.`, `norm.weight`, and three 5-layer heads."""
    g = torch.Generator().manual_seed(seed)
    D = model.config.get_text_config().hidden_size
    state = {f"layer.{k}": v.clone() for k, v in get_adapter(model).text_layers()[0].state_dict().items()}
    state["norm.weight"] = torch.rand(D, generator=g) + 0.5
    dims = [D, D // 2, D // 4, D // 8, D // 16, 2]
    for head in ("token_head", "frame_head", "mode_head"):
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            state[f"{head}.{2 * i}.weight"] = torch.randn(b, a, generator=g) / a**0.5
            state[f"{head}.{2 * i}.bias"] = torch.randn(b, generator=g) * 0.1
    return state


def test_a_state_dict_with_the_documented_names_loads(tiny_model, tmp_path):
    import json

    from safetensors.torch import save_file

    model = tiny_model("llava_onevision")[0]
    state = documented_state_dict(model)
    (tmp_path / "cacovid_config.json").write_text(json.dumps(CaCoVIDPolicy.from_vlm(model).config, default=str))
    save_file(state, tmp_path / "model.safetensors")
    policy = CaCoVIDPolicy.from_pretrained(tmp_path)
    loaded = policy.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    tokens, query = video_and_query(policy.hidden_size)
    scores, frames = policy.score(tokens, query)
    assert scores.std() > 0 and frames.std() > 0

    bad = dict(state)
    bad["token_head.4.weight"] = torch.zeros(3, 3)
    del bad["norm.weight"]
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \(1\): norm.weight.*mis-shaped \(1\): token_head.4.weight: \(3, 3\)"):
        CaCoVIDPolicy.from_pretrained(tmp_path)
    config = {**CaCoVIDPolicy.from_vlm(model).config, "head_hidden_size": 64}
    (tmp_path / "cacovid_config.json").write_text(json.dumps(config, default=str))
    with pytest.raises(ValueError, match="earlier head layout"):
        CaCoVIDPolicy.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_policy_sees_the_whole_prompt_with_the_vlm_positions(tiny_model, family, monkeypatch):
    """The press gets a Query carrying the VLM's own positions; the policy rebuilds the prompt in its original
    order (system text, video, question), so its positions are the model's for every real non-padding token."""
    model, processor = tiny_model(family)
    adapter = get_adapter(model)
    policy = random_policy(model)
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    seen = []
    original = policy.score
    monkeypatch.setattr(policy, "score", lambda tokens, query: seen.append((tokens, query)) or original(tokens, query))
    with torch.no_grad(), CaCoVIDPress(policy=policy, retention=0.25)(model):
        model(**inputs)
    tokens, query = seen[0]
    ids = inputs["input_ids"][0]
    video = (ids == adapter.video_token_id).nonzero().squeeze(1)[: tokens.num_tokens]
    full = adapter.full_position_ids(dict(inputs), inputs["attention_mask"], for_generate=False)[..., 0, :]
    assert query.video_offset == int(video[0]) > 0  # text (system prompt) comes before the video
    x, positions, offset = policy.context(tokens.features, tokens.grid, query)
    used = torch.ones_like(ids, dtype=torch.bool)
    used[(ids == adapter.video_token_id).nonzero().squeeze(1)[tokens.num_tokens :]] = False  # LLaVA-OV's newline row
    assert offset == query.video_offset and torch.equal(positions, full.reshape(-1, ids.numel())[:, used])
    embeddings = model.get_input_embeddings()(ids)
    assert torch.allclose(x[:offset], embeddings[:offset]) and torch.allclose(x[offset + tokens.num_tokens :], embeddings[used][offset + tokens.num_tokens :])
    # a text token before the video changes the scores: the policy reads the system text too
    changed = type(query)(query.token_ids, query.embeddings.clone(), position_ids=query.position_ids,
                          video_position_ids=query.video_position_ids, video_offset=query.video_offset)
    changed.embeddings[0] += 1.0
    assert not torch.allclose(original(tokens, changed)[0], original(tokens, query)[0])


def test_policy_does_not_change_the_model(tiny_model):
    model, _ = tiny_model("qwen2_5_vl")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = CaCoVIDPolicy.from_vlm(model)
    for p in policy.parameters():
        p.data.add_(1.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.config.get_text_config()._attn_implementation == "eager"


def test_width_mismatch_is_a_clear_error(tiny_model):
    policy = random_policy(tiny_model("qwen2_vl")[0])
    tokens, query = video_and_query(64)
    with pytest.raises(ValueError, match="width 128.*width 64"):
        CaCoVIDPress(policy=policy, retention=0.25).select(tokens, query)


def test_press_needs_a_policy_and_a_query(tiny_model):
    tokens, query = video_and_query(128)
    with pytest.raises(ValueError, match="needs a trained policy"):
        presses.get("cacovid", retention=0.25).select(tokens, query)
    policy = random_policy(tiny_model("qwen2_vl")[0])
    with pytest.raises(ValueError, match="query-aware"):
        CaCoVIDPress(policy=policy, retention=0.25).select(tokens, None)
    with pytest.raises(ValueError, match="imp_ratio"):
        CaCoVIDPress(policy=policy, imp_ratio=1.5)


# --- the press ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("R", [0.03, 0.05, 0.1, 0.15, 0.25, 0.5, 0.9])
def test_press_retention_is_exact(tiny_model, R):
    policy = random_policy(tiny_model("qwen2_5_vl")[0])
    tokens, query = video_and_query(policy.hidden_size, T=8, M=16)
    selection = CaCoVIDPress(policy=policy, retention=R).select(tokens, query)
    assert selection.num_kept == round(R * 128)
    assert int(selection.frame_budgets.sum()) == selection.num_kept and int(selection.frame_budgets.max()) <= 16
    assert torch.equal(torch.bincount(selection.keep_indices // 16, minlength=8), selection.frame_budgets)


def test_released_allocation_frame_blind_fill_crosses_frames():
    """T=2, M=8, R=0.5: budget 8, top part floor(0.5 * 0.5 * 16) = 4. Frame logits [1, -1] -> rescaled [3, -3] ->
    softmax [0.9975, 0.0025] -> clipped to [0.25, 0.75] -> shares [0.75, 0.25] -> [3, 1] top tokens (cap
    int(0.5 * 8 * 1.5 * 0.5) = 3). The 12 other tokens in raster order get linspace(0, 11, 4).round() = [0, 4, 7, 11]
    -> tokens 0, 4, 10, 14: the fill takes two tokens of frame 0 and one of frame 1, ignoring frames."""
    token_scores = torch.arange(16.0).view(2, 8)  # best tokens: 7, 6, 5 in frame 0 and 15 in frame 1
    keep = released_allocation(token_scores, torch.tensor([1.0, -1.0]), budget=8, retention=0.5)
    assert keep.flatten().nonzero().squeeze(1).tolist() == [0, 4, 5, 6, 7, 10, 14, 15]
    assert keep.sum(1).tolist() == [5, 3]
    # the logits are rescaled to max |f| = 3: their scale does not matter
    assert torch.equal(released_allocation(token_scores, torch.tensor([100.0, -100.0]), 8, 0.5), keep)


def test_released_allocation_split_by_largest_remainder():
    """T=4, M=4, R=0.5: budget 8, top part 4. Frame logits [3, 0, 0, 0]: softmax [0.870, 0.043 x 3] -> clipped to
    [0.375, 0.125 x 3] -> renormalised [0.5, 1/6 x 3] -> ideal [2, 2/3, 2/3, 2/3] -> largest remainder (ties to the
    earlier frame) [2, 1, 1, 0] (cap int(0.5 * 4 * 1.5) = 3). Top tokens: 2 and 0 (frame 0; ties to the lower index),
    4, 8. The fill puts the other 4 at linspace(0, 11, 4).round() = [0, 4, 7, 11] of the 12 remaining tokens:
    1, 7, 11, 15."""
    token_scores = torch.zeros(4, 4)
    token_scores[0, 2] = 1.0
    keep = released_allocation(token_scores, torch.tensor([3.0, 0.0, 0.0, 0.0]), budget=8, retention=0.5)
    assert keep.flatten().nonzero().squeeze(1).tolist() == [0, 1, 2, 4, 7, 8, 11, 15]
    # small budgets keep their top part: R = 0.05 of 8 x 16 tokens -> budget 6, top part floor(3.2) = 3 tokens
    scores = torch.zeros(8, 16)
    scores[torch.arange(8), torch.arange(8) + 3] = 1.0  # each frame's best token: 3, 4, ..., 10
    small = released_allocation(scores, torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), budget=6, retention=0.05)
    assert small.sum() == 6 and small[0, 3] and small[1, 4] and small[2, 5]
    flat = released_allocation(token_scores, torch.zeros(4), budget=8, retention=0.5)
    assert flat.sum() == 8  # all-zero frame logits: uniform shares, no division by zero
    with pytest.raises(ValueError, match="min_ratio"):
        CaCoVIDPress(max_ratio=0.9)


@pytest.mark.parametrize("family", FAMILIES)
def test_retention_one_is_identical_and_pressing_works(tiny_model, family):
    model, processor = tiny_model(family)
    policy = random_policy(model)
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad():
        reference = model(**inputs).logits
        with CaCoVIDPress(policy=policy, retention=1.0)(model) as pressed:
            assert torch.equal(model(**inputs).logits, reference)
        assert pressed.last_report.retention == 1.0
        with CaCoVIDPress(policy=policy, retention=0.25)(model) as pressed:
            model(**inputs)
    selection = pressed.last_report.selections[0]
    assert selection.num_kept == round(0.25 * selection.num_tokens)
    assert torch.equal(model(**inputs).logits, reference)  # the model is unchanged after the block


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_batched_equals_per_sample(tiny_model, family):
    model, processor = tiny_model(family)
    press = CaCoVIDPress(policy=random_policy(model), retention=0.3)
    videos = [tiny_video(8, seed=1), tiny_video(8, seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    with torch.no_grad(), press(model) as pressed:
        singles, kept = [], []
        for video, question in zip(videos, questions):
            singles.append(model(**make_inputs(processor, [video], question)).logits[0, -1])
            kept.append(pressed.last_report.selections[0].keep_indices)
        batched = model(**make_inputs(processor, videos, questions)).logits[:, -1]
        batched_kept = [s.keep_indices for s in pressed.last_report.selections]
    assert all(torch.equal(a, b) for a, b in zip(kept, batched_kept))
    assert torch.allclose(torch.stack(singles), batched, atol=1e-4)


# --- the combination sampler --------------------------------------------------------------------------------

def test_group_bounds():
    assert group_bounds(16, 4) == [0, 4, 8, 12, 16]
    assert group_bounds(16, 5) == [0, 4, 7, 10, 13, 16]
    assert group_bounds(7, 1) == [0, 7]


@pytest.mark.parametrize("rate", [0.05, 0.125, 0.25])
def test_grouped_sampling_keeps_k_tokens_inside_one_group_per_frame(rate):
    T, M, factor = 6, 16, 2.0
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(T, M, generator=g) * 3
    k = max(1, round(rate * M))
    n_groups = min(max(math.floor(1 / (rate * factor) + 1e-9), 1), M // k)
    bounds = group_bounds(M, n_groups)
    rank = torch.argsort(torch.sort(scores, dim=1, descending=True, stable=True).indices, dim=1)  # rank of each token
    for _ in range(20):
        keep = grouped_token_sample(scores, rate, g, group_factor=factor)
        assert keep.sum(1).tolist() == [k] * T
        for t in range(T):
            ranks = rank[t][keep[t]]
            group = [i for i in range(n_groups) if bounds[i] <= int(ranks.min()) < bounds[i + 1]][0]
            assert bool((ranks < bounds[group + 1]).all())  # all k in the same contiguous group of the ranking


def test_water_fill_caps_and_redistributes_recursively():
    p = water_fill(torch.tensor([0.7, 0.2, 0.1]), 0.5)
    assert torch.allclose(p, torch.tensor([0.5, 0.2 + 0.2 * 2 / 3, 0.1 + 0.2 / 3], dtype=torch.float64))
    # the first redistribution pushes the second entry over the cap: it is capped too, the rest goes to the third
    p = water_fill(torch.tensor([0.6, 0.35, 0.05]), 0.4)
    assert torch.allclose(p, torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64))
    assert torch.allclose(water_fill(torch.tensor([1.0, 0.0, 0.0]), 0.5), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert torch.equal(water_fill(torch.tensor([1.0]), 0.9), torch.tensor([1.0], dtype=torch.float64))
    assert [group_cap(n) for n in (1, 2, 4, 10, 25)] == [0.9, 0.9, 0.5, 0.2, 0.1]


def test_grouped_sampling_caps_the_best_group():
    T, M = 1, 16
    scores = torch.linspace(8, 0, M)[None]  # ranking = index order; group 0 (tokens 0-1) holds 0.66 of the mass
    g = torch.Generator().manual_seed(0)
    # rate 1/16: k = 1, n_g = 8 groups of 2, cap 2 / 8 = 0.25 on the best group
    first = sum(int(grouped_token_sample(scores, 1 / 16, g)[0, :2].any()) for _ in range(400))
    assert 70 < first < 130, first


def test_in_group_probabilities_are_clamped_relative_to_group_size():
    """One group (n_g = 1, e = 16), k = 1: token 0 holds ~all the softmax mass, but clamped to 2 / e = 1/8 against
    15 tokens at 1 / (2e) = 1/32 it is drawn with probability 0.125 / (0.125 + 15 / 32) = 0.21."""
    scores = torch.zeros(1, 16)
    scores[0, 0] = 10.0
    g = torch.Generator().manual_seed(0)
    hits = sum(int(grouped_token_sample(scores, 1 / 16, g, group_factor=20.0)[0, 0]) for _ in range(600))
    assert 0.16 < hits / 600 < 0.27, hits / 600


def test_rollout_round_composition_and_budget():
    T, M = 8, 16
    settings = CaCoVIDSettings(group=12, diversity_rollouts=1, frame_rollouts=3)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(T, M, 32, generator=g)
    scores, frame_scores = torch.randn(T, M, generator=g), torch.randn(T, generator=g)
    diversity = density_peak_scores(features)
    masks, modes, frames = rollout_combinations(scores, frame_scores, features, diversity, 0.125, settings, g)
    k = 2
    assert masks.shape == (12, T, M) and masks.flatten(1).sum(1).tolist() == [k * T] * 12
    assert modes.tolist() == [CONTENT] + [TOKEN] * 8 + [FRAME] * 3
    top = torch.topk(diversity.flatten(), k * T).indices
    assert masks[0].flatten()[top].all()  # content: diversity only
    topk = torch.zeros(T, M, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    assert torch.equal(masks[1], topk)
    assert (masks[1:9].sum(-1) == k).all()  # token mode: k per frame
    assert frames[:9].all() and (frames[9:].sum(1) == 1).all()  # frame mode: ceil(0.125 * 8) = 1 frame holds 16 tokens
    top_frames = frame_scores.topk(1).indices
    assert frames[9].nonzero().squeeze(1).tolist() == top_frames.tolist()  # frame-mode rollout 0: the top frames
    wide, _, wide_frames = rollout_combinations(scores, frame_scores, features, diversity, 0.25, settings, g)
    assert (wide_frames[9:].sum(1) == 2).all() and (wide[9:].flatten(1).sum(1) == 32).all()  # 32 tokens need 2 frames
    later, _, _ = rollout_combinations(scores, frame_scores, features, diversity, 0.125, settings, g)
    assert torch.equal(later[1], topk)  # the top-k rollout is in every round, not only the first


def test_frame_mode_samples_ceil_one_eighth_of_the_frames_and_fills_them_jointly():
    g = torch.Generator().manual_seed(0)
    T, M = 16, 8
    features = torch.randn(T, M, 12, generator=g)
    frame_scores = torch.zeros(T)
    frame_scores[3] = 20.0
    hits = 0
    for _ in range(200):
        keep, picked = frame_mode_sample(frame_scores, features, 6, g)
        assert picked.sum() == 2 and keep.sum() == 6 and not keep[~picked].any()  # ceil(0.125 * 16) = 2 frames
        chosen = picked.nonzero().squeeze(1)
        joint = density_peak_scores(features[chosen]).flatten().topk(6).indices
        assert set((chosen[joint // M] * M + joint % M).tolist()) == set(keep.flatten().nonzero().squeeze(1).tolist())
        hits += int(picked[3])
    # frame 3 holds ~all the softmax mass, but its probability is capped at 3 / T before drawing without replacement
    assert 0.15 < hits / 200 < 0.6, hits / 200


def test_density_peak_scores_prefer_cluster_centres():
    centres = torch.eye(4, 16) * 10
    g = torch.Generator().manual_seed(0)
    x = torch.cat([centres[i] + 0.3 * torch.randn(4, 16, generator=g) for i in range(4)])  # 4 clusters of 4 tokens
    scores = density_peak_scores(x.view(1, 16, 16), neighbours=3).view(16)
    top4 = set((torch.topk(scores, 4).indices // 4).tolist())
    assert top4 == {0, 1, 2, 3}  # one representative per cluster


# --- the loss -----------------------------------------------------------------------------------------------

def test_balanced_weights_give_kept_and_dropped_equal_shares():
    keep = torch.zeros(3, 10, dtype=torch.bool)
    keep[0, :1] = True
    keep[1, :7] = True
    keep[2, :] = True
    w = balanced_weights(keep)
    assert torch.allclose((w * keep).sum(1)[:2], torch.tensor([0.5, 0.5]))
    assert torch.allclose((w * ~keep).sum(1)[:2], torch.tensor([0.5, 0.5]))
    assert torch.allclose(w[0, 0], torch.tensor(0.5)) and torch.allclose(w[0, 1], torch.tensor(0.5 / 9))
    assert torch.allclose(w[2].sum(), torch.tensor(1.0))  # nothing dropped: the kept side takes all


def test_clipped_surrogate_clips_asymmetrically():
    old = torch.zeros(2, 1)
    new = torch.log(torch.tensor([[2.0], [0.5]])).requires_grad_()
    weights = torch.ones(2, 1)
    up = clipped_surrogate(new, old, torch.tensor([1.0, 1.0]), weights)
    assert torch.isclose(up, torch.tensor((1.28 + 0.5) / 2))  # ratio 2 clipped at 1 + 0.28; ratio 0.5 unclipped
    down = clipped_surrogate(new, old, torch.tensor([-1.0, -1.0]), weights)
    assert torch.isclose(down, torch.tensor((-2.0 - 0.8) / 2))  # pessimistic: 2 kept, 0.5 clipped at 1 - 0.2
    up.backward()
    assert new.grad[0, 0] == 0 and new.grad[1, 0] != 0


def test_advantages_are_z_scored_per_mode():
    modes = torch.tensor([CONTENT, TOKEN, TOKEN, TOKEN, FRAME, FRAME, FRAME, FRAME])
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    adv = mode_advantages(rewards, modes)
    token, frame = rewards[1:4], rewards[4:]
    assert adv[0] == 0  # the content rollout enters no loss
    assert torch.allclose(adv[1:4], (token - token.mean()) / (token.std(unbiased=True) + 1e-4))
    assert torch.allclose(adv[4:], (frame - frame.mean()) / (frame.std(unbiased=True) + 1e-4))
    other = rewards.clone()
    other[4:] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert torch.equal(mode_advantages(other, modes)[1:4], adv[1:4])  # frame rewards do not move token advantages
    assert torch.equal(mode_advantages(torch.ones(3), torch.tensor([TOKEN] * 3)), torch.zeros(3))


def test_frame_surrogate_is_an_unweighted_mean_over_sampled_frames():
    scores = torch.zeros(3, requires_grad=True)
    picked = torch.tensor([[True, False, True], [False, True, False]])
    value = frame_surrogate(scores, scores.detach(), picked, torch.tensor([1.0, -4.0]))
    assert torch.isclose(value, torch.tensor((1 + 1 - 4) / 3))  # per rollout it would be (1 - 4) / 2


def test_rate_schedule():
    s = CaCoVIDSettings()
    assert s.rate_start == 0.02 and s.rate_range == (0.01, 0.12) and (s.easy, s.hard) == (0.875, 0.125)
    assert next_rate(0.02, 0.875, s) == 0.01 and next_rate(0.01, 1.0, s) == 0.01
    assert next_rate(0.02, 0.125, s) == 0.04 and next_rate(0.08, 0.0, s) == 0.12
    assert next_rate(0.02, 0.5, s) == 0.02


@pytest.mark.parametrize("value, rate", [(1.0, 0.01), (0.0, 0.08)])
def test_rate_follows_accumulated_token_mode_accuracy_in_training(tiny_model, value, rate):
    """Always right: 0.02 -> 0.01 (the floor); always wrong: doubled after each of 2 rounds, 0.02 -> 0.08."""
    policy = CaCoVIDPolicy.from_vlm(tiny_model("qwen2_5_vl")[0])
    samples = one_token_task(policy.hidden_size, 2, seed=5)
    settings = CaCoVIDSettings(group=6, diversity_rollouts=1, frame_rollouts=2, rounds=2, batch_size=2, lr=1e-3)
    history = optimise_policy(policy, samples, lambda batch, masks: [torch.full((m.shape[0],), value) for m in masks],
                              settings, progress=False)
    assert history[0]["rate"] == pytest.approx(rate)


def test_settings_defaults_are_the_released_ones():
    s = CaCoVIDSettings()
    assert (s.group, s.diversity_rollouts, s.frame_rollouts, s.rounds) == (32, 1, 8, 5)
    assert (s.frame_fraction, s.frame_prob_cap, s.clip_low, s.clip_high, s.lr, s.grad_clip) == (0.125, 3.0, 0.2, 0.28, 1e-6, 5.0)


# --- the optimisation ---------------------------------------------------------------------------------------

def one_token_task(D, n, seed):
    """Videos where one random token carries the answer (a fixed direction added to it): the reward is 1 when a
    combination keeps that token."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(123)), dim=0) * 6
    samples = []
    for _ in range(n):
        features = torch.randn(4, 16, D, generator=g)
        answer = int(torch.randint(64, (), generator=g))
        features.view(64, D)[answer] += direction
        samples.append(PolicySample(VideoTokens(features, (4, 4, 4)), Query(torch.arange(5), torch.randn(5, D, generator=g)),
                                    data={"answer_token": answer}))
    return samples


def keeps_answer(batch, masks):
    return [m[:, s.data["answer_token"]].float() for s, m in zip(batch, masks)]


def top1_accuracy(policy, samples):
    with torch.no_grad():
        scores, _, _ = policy([s.tokens.features for s in samples], [s.tokens.grid for s in samples], [s.query for s in samples])
    return sum(int(sc.flatten().argmax()) == s.data["answer_token"] for sc, s in zip(scores, samples)) / len(samples)


def test_training_improves_reward_on_a_one_token_task(tiny_model):
    torch.manual_seed(0)
    policy = CaCoVIDPolicy.from_vlm(tiny_model("qwen2_5_vl")[0])
    train, held_out = one_token_task(policy.hidden_size, 48, seed=1), one_token_task(policy.hidden_size, 32, seed=2)
    before = top1_accuracy(policy.eval(), held_out)
    settings = CaCoVIDSettings(group=8, diversity_rollouts=1, frame_rollouts=2, rounds=2, rate_start=0.125,
                               rate_range=(0.125, 0.125), batch_size=4, lr=2e-3, epochs=2, seed=0)
    history = optimise_policy(policy, train, keeps_answer, settings, progress=False)
    after = top1_accuracy(policy.eval(), held_out)
    first, last = history[:4], history[-4:]
    assert sum(r["reward"] for r in last) / 4 > sum(r["reward"] for r in first) / 4 + 0.2
    assert before < 0.1 and after > 0.8, (before, after)


def test_training_is_reproducible(tiny_model):
    model = tiny_model("qwen2_vl")[0]
    settings = CaCoVIDSettings(group=4, diversity_rollouts=1, frame_rollouts=1, rounds=2, rate_start=0.1, rate_range=(0.05, 0.25),
                               batch_size=2, lr=1e-3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        policy = CaCoVIDPolicy.from_vlm(model)
        history = optimise_policy(policy, one_token_task(policy.hidden_size, 8, seed=3), keeps_answer, settings, progress=False)
        runs.append((history, policy.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_settings_validate():
    with pytest.raises(ValueError, match="token-mode"):
        CaCoVIDSettings(group=9, diversity_rollouts=1, frame_rollouts=8)
    with pytest.raises(ValueError, match="rate_range"):
        CaCoVIDSettings(rate_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="rate_start"):
        CaCoVIDSettings(rate_start=0.5)


def test_vlm_reward_matches_the_pressed_model():
    """The trainer's batched reward (all combinations of several samples in one forward) gives the answers the model
    gives under a press keeping the same tokens, one sample at a time."""
    from vidpress.presses import PlannedPress
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import example_inputs, letter_token_ids, load_reference
    from vidpress.training.cacovid import VLMReward, encode_samples

    model, processor = load_reference()
    examples = make_split("train", 3)
    samples = encode_samples(model, processor, examples, progress=False)
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(4, 128, generator=g) < 0.2 for _ in samples]
    for m in masks:
        m[:, 0] = True
    letters = letter_token_ids(processor)
    rewards = VLMReward(model, letters)(samples, masks)
    for example, m, r in zip(examples, masks, rewards):
        for keep, value in zip(m, r):
            inputs = example_inputs(processor, [example])
            with torch.no_grad(), PlannedPress(retention=0.5, plans=[keep.nonzero().squeeze(1)])(model):
                answer = int(model(**inputs).logits[0, -1, letters].argmax())
            assert float(answer == example.answer) == float(value)


def test_accelerate_two_processes_train(tmp_path):
    """Two data-parallel CPU processes (accelerate's torchrun launcher; on a machine without GPUs accelerate falls
    back to gloo on CPU. `--cpu` alone would start one process unless an MPI hostfile is given) run a tiny training
    and save one policy."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vidpress",
               "train", "cacovid", "--out", str(tmp_path / "policy"), "--train-examples", "4", "--group", "4",
               "--frame-rollouts", "1", "--rounds", "2", "--batch-size", "1", "--val-examples", "0", "--threads", "1", "--quiet"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    policy = CaCoVIDPolicy.from_pretrained(tmp_path / "policy")
    assert policy.config["model_type"] == "qwen2_5_vl"
    import json

    metrics = json.loads((tmp_path / "policy" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2


def test_bench_row_runs_the_shipped_reference_policy():
    from vidpress.evaluation.bench import bench_names, build_row, run_bench
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import load_reference

    model, processor = load_reference()
    press, row_model = build_row("cacovid", 0.1, model)
    assert "cacovid" in bench_names() and isinstance(press, CaCoVIDPress) and row_model is model
    assert press.policy.config["model_type"] == "qwen2_5_vl" and press.policy.hidden_size == 128
    rows = run_bench(model, processor, make_split("test", 4), ["cacovid"], [0.1], progress=False)
    assert rows[1]["press"] == "cacovid" and rows[1]["effective_retention"] == round(0.1 * 128) / 128


def test_clipped_surrogate_stays_finite_for_saturated_probabilities():
    old = torch.tensor([[-600.0]])
    new = torch.tensor([[-1.0]], requires_grad=True)
    objective = clipped_surrogate(new, old, torch.tensor([-1.0]), torch.ones(1, 1))
    objective.backward()
    assert torch.isfinite(objective) and torch.isfinite(new.grad).all()


def score_scale(policy, samples):
    with torch.no_grad():
        tokens, frames, _ = policy([s.tokens.features for s in samples], [s.tokens.grid for s in samples], [s.query for s in samples])
    return float(torch.cat([t.flatten() for t in tokens]).pow(2).mean() + torch.cat([f.flatten() for f in frames]).pow(2).mean())


def test_score_l2_keeps_the_logits_small_and_is_off_by_default(tiny_model):
    assert CaCoVIDSettings().score_l2 == 0.0
    with pytest.raises(ValueError, match="score_l2"):
        CaCoVIDSettings(score_l2=-1.0)
    model = tiny_model("qwen2_5_vl")[0]
    held_out = one_token_task(CaCoVIDPolicy.from_vlm(model).hidden_size, 16, seed=2)
    scales, accuracies = [], []
    for weight in (0.0, 0.05):
        torch.manual_seed(0)
        policy = CaCoVIDPolicy.from_vlm(model)
        settings = CaCoVIDSettings(group=8, diversity_rollouts=1, frame_rollouts=2, rounds=2, rate_start=0.125,
                                   rate_range=(0.125, 0.125), batch_size=4, lr=2e-3, epochs=2, seed=0, score_l2=weight)
        optimise_policy(policy, one_token_task(policy.hidden_size, 48, seed=1), keeps_answer, settings, progress=False)
        scales.append(score_scale(policy.eval(), held_out))
        accuracies.append(top1_accuracy(policy, held_out))
    assert scales[1] < 0.5 * scales[0], scales
    assert accuracies[1] > 0.5, accuracies  # the penalty shrinks the scores, not the ranking


def test_cli_score_l2_flag():
    import argparse

    from vidpress.cli.train import add_train_cacovid_parser

    sub = argparse.ArgumentParser().add_subparsers()
    parser = add_train_cacovid_parser(sub)
    assert parser.parse_args(["--out", "x"]).score_l2 == 0.0
    assert parser.parse_args(["--out", "x", "--score-l2", "1e-4"]).score_l2 == 1e-4
