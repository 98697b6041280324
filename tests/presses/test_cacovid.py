"""CaCoVID: the policy and the press (its training is tests/training/test_cacovid_training.py)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import vidpress.synthetic
from vidpress import presses
from vidpress.models import get_adapter
from vidpress.presses.cacovid import CaCoVIDPolicy, CaCoVIDPress, released_allocation
from vidpress.testing import FAMILIES, make_inputs, tiny_video
from vidpress.types import Query, VideoTokens


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
    return (VideoTokens(torch.randn(T, M, D, generator=g), (T, side, side)),
            Query(torch.arange(L), torch.randn(L, D, generator=g)))


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
    batched_scores, batched_frames, modes = policy([tokens.features, short.features], [tokens.grid, short.grid],
                                                   [query, short_query])
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
    with pytest.raises(ValueError,
                       match=r"missing \(1\): norm.weight.*mis-shaped \(1\): token_head.4.weight: \(3, 3\)"):
        CaCoVIDPolicy.from_pretrained(tmp_path)
    config = {**CaCoVIDPolicy.from_vlm(model).config, "head_hidden_size": 64}
    (tmp_path / "cacovid_config.json").write_text(json.dumps(config, default=str))
    with pytest.raises(ValueError, match="earlier head layout"):
        CaCoVIDPolicy.from_pretrained(tmp_path)


SHIPPED_POLICY = Path(vidpress.synthetic.__file__).parent / "cacovid_reference"


@pytest.mark.parametrize("edit,message", [
    (lambda c: json.dumps({k: v for k, v in c.items() if k != "hidden_size"}), r"missing field\(s\) hidden_size"),
    (lambda c: json.dumps({**c, "hidden_size": "128"}), "hidden_size must be an integer"),
    (lambda c: json.dumps({**c, "text_config": 5}), "cannot build a CaCoVID policy from this config"),
    (lambda c: json.dumps({**c, "layer_class": "os:system"}), "only transformers classes are accepted"),
    (lambda c: json.dumps([c]), "must be a JSON object"),
    (lambda c: json.dumps(c)[:-9], "not valid JSON"),
    (lambda c: "", "is empty"),
])
def test_a_broken_policy_config_names_the_file(tmp_path, edit, message):
    shutil.copytree(SHIPPED_POLICY, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "cacovid_config.json"
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(ValueError, match=message) as caught:
        CaCoVIDPolicy.from_pretrained(tmp_path)
    assert str(path) in str(caught.value)


def test_truncated_policy_weights_name_the_file(tmp_path):
    shutil.copytree(SHIPPED_POLICY, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a complete safetensors file") as caught:
        CaCoVIDPolicy.from_pretrained(tmp_path)
    assert str(path) in str(caught.value)


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
    after = offset + tokens.num_tokens
    assert torch.allclose(x[:offset], embeddings[:offset]) and torch.allclose(x[after:], embeddings[used][after:])
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
def test_press_keeps_the_released_total_or_the_exact_one(tiny_model, R):
    policy = random_policy(tiny_model("qwen2_5_vl")[0])
    tokens, query = video_and_query(policy.hidden_size, T=8, M=16)
    for budget, total in (("released", max(1, math.floor(R * 128 + 1e-9))), ("exact", round(R * 128))):
        selection = CaCoVIDPress(policy=policy, retention=R, budget=budget).select(tokens, query)
        assert selection.num_kept == total, budget
        assert int(selection.frame_budgets.sum()) == selection.num_kept and int(selection.frame_budgets.max()) <= 16
        assert torch.equal(torch.bincount(selection.keep_indices // 16, minlength=8), selection.frame_budgets)
    with pytest.raises(ValueError, match="budget must be 'released'"):
        CaCoVIDPress(policy=policy, budget="floor")


def kept(keep):
    return keep.flatten().nonzero().squeeze(1).tolist()


def test_released_allocation_frame_blind_fill_crosses_frames():
    """T=2, M=8, R=0.5: total floor(0.5 * 16) = 8, top part 4. Frame logits [1, -1] -> rescaled [3, -3] -> softmax
    [0.9975, 0.0025] -> clipped to [0.25, 0.75] -> shares [0.75, 0.25] -> round([3, 1]) (cap int(0.5 * 8 * 1.5 * 0.5)
    = 3). The 12 other tokens in raster order get linspace(0, 11, 4).round() = [0, 4, 7, 11] -> tokens 0, 4, 10, 14:
    the fill takes two tokens of frame 0 and one of frame 1, ignoring frames."""
    token_scores = torch.arange(16.0).view(2, 8)  # best tokens: 7, 6, 5 in frame 0 and 15 in frame 1
    keep = released_allocation(token_scores, torch.tensor([1.0, -1.0]), retention=0.5)
    assert kept(keep) == [0, 4, 5, 6, 7, 10, 14, 15]
    assert keep.sum(1).tolist() == [5, 3]
    # the logits are rescaled to max |f| = 3: their scale does not matter
    assert torch.equal(released_allocation(token_scores, torch.tensor([100.0, -100.0]), 0.5), keep)


def test_released_allocation_cap_is_relative_to_the_retention():
    """T=4, M=16, R=0.5: top part round(0.5 * 0.5 * 64) = 16. Frame logits [3, -3, -3, -3]: softmax [0.9926, 0.0025 x 3]
    -> clipped to [0.375, 0.125 x 3] -> renormalised [0.5, 1/6 x 3] -> round([8, 2.67 x 3]) = [8, 3, 3, 3] -> cap
    int(0.5 * 16 * 1.5 * 0.5) = 6 (relative to 1 it would be 12 and not bind) -> [6, 3, 3, 3], sum 15 < 16: the FIRST
    frame with the smallest count takes one -> [6, 4, 3, 3]. With token score -m, frame t keeps its first c_t tokens;
    the fill puts floor(0.5 * 64) - 16 = 16 tokens at linspace(0, 47, 16).round() of the 48 others."""
    token_scores = -torch.arange(16.0).expand(4, 16)
    keep = released_allocation(token_scores, torch.tensor([3.0, -3.0, -3.0, -3.0]), retention=0.5)
    top = [0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 32, 33, 34, 48, 49, 50]
    others = [i for i in range(64) if i not in top]
    fill = [others[round(j * 47 / 15)] for j in range(16)]  # linspace(0, 47, 16): no .5 ties here
    assert kept(keep) == sorted(top + fill)
    # relative to 1 (vidpress before): cap 12, [8, 3, 3, 3] then one taken from the largest -> 7 in frame 0
    loose = released_allocation(token_scores, torch.tensor([3.0, -3.0, -3.0, -3.0]), retention=0.5, max_ratio=3.0)
    assert kept(loose)[:7] == list(range(7))


def test_released_allocation_round_then_fix_takes_from_the_first_largest():
    """T=3, M=10, R=0.5: 0.5 * 0.5 * 30 = 7.5, round (half to even) 8, target floor 7. Equal frame logits -> shares 1/3
    -> round(8 / 3) = 3 each (cap int(0.5 * 10 * 0.75) = 3) -> sum 9 > 7: the FIRST frame with the largest count gives
    one, twice -> [2, 2, 3]. Token score -m: frames keep tokens 0, 1 | 10, 11 | 20, 21, 22. The fill puts
    floor(15) - 7 = 8 tokens at linspace(0, 22, 8).round() = [0, 3, 6, 9, 13, 16, 19, 22] of the 23 others
    (2..9, 12..19, 23..29): tokens 2, 5, 8, 13, 17, 23, 26, 29."""
    token_scores = -torch.arange(10.0).expand(3, 10)
    keep = released_allocation(token_scores, torch.zeros(3), retention=0.5)
    assert kept(keep) == [0, 1, 2, 5, 8, 10, 11, 13, 17, 20, 21, 22, 23, 26, 29]
    assert keep.sum(1).tolist() == [5, 4, 6]
    # the exact total round(R * N): R = 0.25 of 30 = 7.5 -> 8 (released: floor, 7), one more fill token
    assert released_allocation(token_scores, torch.zeros(3), retention=0.25).sum() == 7
    assert released_allocation(token_scores, torch.zeros(3), retention=0.25, budget=8).sum() == 8


def test_released_allocation_small_budgets_and_flat_logits():
    # R = 0.05 of 8 x 16: total floor(6.4) = 6; top part round(3.2) = 3 shares; the cap int(0.5 * 16 * 0.075) = 0 wins
    # over the lower bound 1 (torch.clamp order) -> all 0, then the 3 smallest-first additions go to frames 0, 1, 2
    scores = torch.zeros(8, 16)
    scores[torch.arange(8), torch.arange(8) + 3] = 1.0  # each frame's best token: 3, 4, ..., 10
    small = released_allocation(scores, torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), retention=0.05)
    assert small.sum() == 6 and small[0, 3] and small[1, 4] and small[2, 5]
    flat = released_allocation(torch.zeros(4, 4), torch.zeros(4), retention=0.5)
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
    assert selection.num_kept == math.floor(0.25 * selection.num_tokens)
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
