"""FlashVID and HoliTom: each rule step on hand-built features whose answer is known, DPC-kNN, and both presses on
every model family (budgets, batched == per sample, the model restored)."""

import math

import pytest
import torch

from vidpress.models import get_adapter
from vidpress.presses import FlashVIDPress, HoliTomPress
from vidpress.presses.dpc_knn import dpc_knn
from vidpress.testing import FAMILIES, make_inputs, tiny_model_and_processor, tiny_video
from vidpress.types import VideoTokens

GENERATE = dict(max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)


def tokens_of(features: torch.Tensor, attention: torch.Tensor | None = None) -> VideoTokens:
    T, M, _ = features.shape
    side = math.isqrt(M)
    attention = torch.full((T, M), 1.0 / M) if attention is None else attention
    return VideoTokens(features, (T, side, M // side), side_features={"vision_received": attention})


def one_hot_frames(T: int, M: int, scale: float = 3.0) -> torch.Tensor:
    """T identical frames whose M tokens are scaled basis vectors [T, M, M]: cosines are exactly 0 or 1."""
    return (scale * torch.eye(M)).expand(T, M, M).clone()


# --- DPC-kNN ------------------------------------------------------------------------------------------------------

def test_dpc_knn_finds_one_centre_per_blob_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    blobs = torch.cat([torch.randn(6, 4, generator=g) * 0.01 + 5, torch.randn(5, 4, generator=g) * 0.01 - 5])
    centres, assign = dpc_knn(blobs, 2, generator=torch.Generator().manual_seed(1))
    assert sorted(int(c) < 6 for c in centres) == [False, True]  # one centre in each blob
    assert assign[:6].unique().numel() == 1 and assign[6:].unique().numel() == 1 and assign[0] != assign[6]
    assert torch.equal(assign[centres], torch.arange(2))  # a centre joins itself
    again = dpc_knn(blobs, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], centres) and torch.equal(again[1], assign)
    ordered, _ = dpc_knn(blobs, 2, generator=torch.Generator().manual_seed(1), sort_centres=True)
    assert torch.equal(ordered, centres.sort().values)


def test_dpc_knn_densest_row_scores_by_the_largest_distance():
    # rows 0-2 coincide (densest, one of them by noise); row 3 is far: with 2 centres the far row is one of them
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    centres, assign = dpc_knn(x, 2, knn=2, generator=torch.Generator().manual_seed(0))
    assert 3 in centres.tolist() and assign.tolist().count(int(assign[3])) == 1
    with pytest.raises(ValueError, match="at least one centre"):
        dpc_knn(x, 0)


# --- FlashVID: rule steps -----------------------------------------------------------------------------------------

def test_a_cut_between_two_scenes_makes_a_segment_boundary():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    frames = torch.stack([a] * 4 + [b] * 4)[:, None, :] + 0.01 * torch.randn(8, 4, 16, generator=g)
    press = FlashVIDPress(min_segments=1)
    assert press.segments(tokens_of(frames)) == [(0, 4), (4, 8)]
    # fewer segments than min_segments: the smallest other similarities become cuts too
    sims = torch.nn.functional.cosine_similarity(frames.mean(1)[:-1], frames.mean(1)[1:], dim=-1)
    extra = sorted(torch.sort(torch.cat([sims[:3], sims[4:]])).indices[:2].tolist())
    extra = [t if t < 3 else t + 1 for t in extra]
    assert FlashVIDPress(min_segments=4).segments(tokens_of(frames)) == _segments_from_cuts(sorted(extra + [3]), 8)


def test_fewer_frames_than_min_segments_picks_a_cut_twice_and_skips_the_empty_segment():
    g = torch.Generator().manual_seed(0)
    frames = torch.stack([torch.randn(4, 8, generator=g) for _ in range(3)])
    # LLaVA default min_segments 8 on 3 frames: both transitions cut (the first also as a threshold cut)
    assert FlashVIDPress().segments(tokens_of(frames)) == [(0, 1), (1, 2), (2, 3)]


def _segments_from_cuts(cuts, T):
    bounds = [0] + [c + 1 for c in cuts] + [T]
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def test_budgets_as_released():
    assert FlashVIDPress(retention=0.25).frame_budget(196) == (62, 44, 18)
    assert FlashVIDPress(retention=0.10).frame_budget(196) == (25, 18, 7)


def test_adts_v1_is_attention_calibrated_max_min_diversity():
    # tokens e1, e1, e2, -e1: cosine distances 0 / 1 / 2
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    press = FlashVIDPress()
    uniform = press.adts_select(x, torch.full((1, 4), 0.25), 3, "v1")
    assert uniform[0].nonzero().squeeze(1).tolist() == [0, 2, 3]  # 2 first, then 0 (first max), then 3
    weighted = press.adts_select(x, torch.tensor([[0.1, 1.0, 0.1, 0.1]]), 3, "v1")
    assert weighted[0].nonzero().squeeze(1).tolist() == [1, 2, 3]  # the attended duplicate wins over token 0


def test_tree_of_identical_tokens_merges_as_released():
    v, u = torch.tensor([2.0, 0.0, 0.0, 0.0]), torch.eye(4)[1:]
    # frame t: token 0 = v (a chain through three frames), token 1 = a token unlike any other (never merges)
    x = torch.stack([torch.stack([v, u[t]]) for t in range(3)])
    adts = torch.zeros(3, 2, dtype=torch.bool)
    remaining, features = FlashVIDPress().tree_merge(x, adts, total=1)
    assert remaining.tolist() == [[True, True], [False, True], [False, True]]
    assert torch.allclose(features[0, 0], 1.5 * v)  # (v + v + v) / (1 + one direct child)
    remaining, features = FlashVIDPress(tree_mean=True).tree_merge(x, adts, total=1)
    assert torch.allclose(features[0, 0], v)
    # a root with two direct children and one grandchild: released 4v / 3, tree mean v
    y = torch.stack([torch.stack([v, u[0]]), torch.stack([v, v]), torch.stack([v, u[2]])])
    _, features = FlashVIDPress().tree_merge(y, adts, total=1)
    assert torch.allclose(features[0, 0], 4 * v / 3)
    _, features = FlashVIDPress(tree_mean=True).tree_merge(y, adts, total=1)
    assert torch.allclose(features[0, 0], v)


def test_tree_merging_keeps_at_least_the_segment_budget():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 32, generator=g)
    x = base + 0.05 * torch.randn(6, 16, 32, generator=g)  # everything above tau_t: the lower bound B decides
    adts = torch.zeros(6, 16, dtype=torch.bool)
    adts[:, :2] = True
    remaining, _ = FlashVIDPress().tree_merge(x, adts, total=5 * 6)
    assert int((remaining | adts).sum()) == 5 * 6 + 1  # the (L*M - B)-th largest sigma itself also stays


def test_static_video_keeps_its_released_minimum():
    # identical frames of one-hot tokens, one segment: every frame keeps its a ADTS tokens (the same positions);
    # every other token merges along its chain into frame 0 (T * a + M - a >= B = b * T stay), whose M - a roots
    # are clustered into s * T tokens: b * T in all, the segment's lower bound
    T, M, R = 8, 16, 0.25
    press = FlashVIDPress(retention=R, min_segments=1)
    selection = press.select(tokens_of(one_hot_frames(T, M)))
    b, a, s = press.frame_budget(M)
    assert (b, a, s) == (5, 4, 1)
    assert press.segments(tokens_of(one_hot_frames(T, M))) == [(0, T)]
    assert selection.frame_budgets.tolist() == [a + s * T] + [a] * (T - 1) and selection.num_kept == b * T


@pytest.mark.parametrize("pool", ["non_adts", "all"])
def test_single_frame_segments(pool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 36, 16, generator=g)
    press = FlashVIDPress(retention=0.25, single_frame_pool=pool)  # 3 frames < 8 segments: each frame alone
    selection = press.select(tokens_of(x, torch.rand(3, 36, generator=g)))
    b, _, _ = press.frame_budget(36)
    counts = selection.frame_budgets.tolist()
    if pool == "non_adts":
        assert counts == [b] * 3
    else:  # a cluster centred on an ADTS token is dropped (a Selection holds each index once)
        assert all(c <= b for c in counts)


def test_everything_fits_keeps_every_token_and_bad_knobs_are_clear():
    x = torch.randn(2, 4, 8)
    assert FlashVIDPress(retention=0.85).select(tokens_of(x)).num_kept == 8  # b = ceil(4 * 0.85 * 1.25) >= M
    for knobs, match in [({"adts": "v3"}, "adts"), ({"single_frame_pool": "x"}, "single_frame_pool"),
                         ({"llm_keep": 0.0}, "llm_keep"), ({"min_segments": 0}, "min_segments"),
                         ({"expansion": -1}, "expansion")]:
        with pytest.raises(ValueError, match=match):
            FlashVIDPress(**knobs)
    with pytest.raises(ValueError, match="vision_received"):
        FlashVIDPress().select(VideoTokens(x, (2, 2, 2)))


def test_llm_stage_reproduces_the_released_pairs_and_averages_to_r():
    press = FlashVIDPress(retention=0.25)
    assert press.schedule(28) == [(20, 0.3)]  # LLaVA-OV / LLaVA-Video / Qwen2.5-VL, 28 layers
    press._family = "qwen3"
    assert press.schedule(36) == [(28, 0.1)]  # Qwen3-VL-8B, 36 layers
    press._family = "llava"
    for layers in (4, 5, 16, 28, 40):
        (K, r), = press.schedule(layers)
        assert 1 <= K < layers and (K * 1.25 + (layers - K) * 1.25 * r) / layers == pytest.approx(1.0)
    assert FlashVIDPress(llm_stage=False).schedule(4)[0][1] == 1.0
    with pytest.raises(ValueError, match="llm_stage=False"):
        FlashVIDPress(llm_layer=4).schedule(4)


# --- HoliTom: rule steps ------------------------------------------------------------------------------------------

def test_dp_windows_on_a_crafted_static_map():
    static = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # transitions 0-1, 1-2, 2-3
    # frames 0-1 give 4; [0, 2] also gives 2 * 2 = 4 but does not beat it (strict), so frame 2 stays alone
    assert HoliTomPress().windows(static) == ([(0, 1), (2, 2), (3, 3)], 4)
    assert HoliTomPress(max_window=1).windows(static) == ([(0, 0), (1, 1), (2, 2), (3, 3)], 0)
    longer = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert HoliTomPress().windows(longer) == ([(0, 2), (3, 3)], 6)


def test_static_video_collapses_to_one_window_at_frame_zero():
    T, M = 8, 16
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(M, 32, generator=g).expand(T, M, 32).clone()
    press = HoliTomPress(retention=0.1)  # tau 0.65; R' = min(R * T * M / M, 1) = 0.8
    selection = press.select(tokens_of(frames))
    assert press.tau == 0.65 and HoliTomPress(retention=0.25).tau == 0.8
    assert selection.num_kept == round(M * 0.8) and selection.frame_budgets.tolist() == [13] + [0] * (T - 1)
    assert HoliTomPress(retention=0.25).select(tokens_of(frames)).num_kept == M  # R' = 1: every static token


def test_dynamic_tokens_keep_the_most_attended_per_frame():
    T, M = 4, 16
    g = torch.Generator().manual_seed(0)
    attention = torch.rand(T, M, generator=g)
    selection = HoliTomPress(retention=0.25).select(tokens_of(torch.randn(T, M, 32, generator=g), attention))
    expected = (attention.topk(4, dim=1).indices + torch.arange(T)[:, None] * M).flatten().sort().values
    assert torch.equal(selection.keep_indices, expected) and selection.features is not None


def test_static_cluster_is_centre_weighted():
    M = 4
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(M, 8, generator=g).expand(2, M, 8).clone()
    # one window of 2 frames, 4 static tokens, R' = min(0.125 * 8 / 4, 1) = 0.25: one cluster of all four
    selection = HoliTomPress(retention=0.125).select(tokens_of(frames))
    assert selection.num_kept == 1
    centre = int(selection.keep_indices[0])
    others = [m for m in range(M) if m != centre]
    expected = 0.6 * frames[0, centre] + 0.4 * frames[0, others].mean(0)
    assert torch.allclose(selection.features[0], expected, atol=1e-6)
    assert torch.allclose(HoliTomPress(retention=0.125, cluster_weight=1.0).select(tokens_of(frames)).features[0],
                          frames[0, centre])


def test_inner_merge_folds_by_sequential_pairwise_averages():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 6, 8, generator=g)
    hidden[0, 2] = 2 * hidden[0, 1] + 0.01  # rows 2 and 3 are most similar to kept row 1, row 5 to kept row 4
    hidden[0, 3] = 3 * hidden[0, 1] - 0.01
    hidden[0, 5] = -hidden[0, 4] * 0.5 + 0.001 * torch.randn(8, generator=g) + hidden[0, 4] * 1.5
    keep = torch.tensor([[True, True, False, False, True, False]])
    frame = torch.tensor([[False, True, True, True, True, True]])  # row 0 is text
    out = HoliTomPress().fold_pruned(hidden, keep, frame)
    h = hidden[0]
    assert torch.allclose(out[0, 1], ((h[1] + h[2]) / 2 + h[3]) / 2, atol=1e-6)  # later tokens weigh more
    assert torch.allclose(out[0, 4], (h[4] + h[5]) / 2, atol=1e-6)
    assert torch.equal(out[0, 0], h[0]) and torch.equal(out[0, 2:4], hidden[0, 2:4])  # text and dropped rows as-is


def test_inner_merge_layer_as_released():
    assert HoliTomPress().schedule(28) == [(18, 0.5)]
    assert HoliTomPress(llm_merge=False).schedule(28) == [(18, 1.0)]
    assert HoliTomPress().schedule(4) == [(2, 0.5)]
    with pytest.raises(ValueError, match="llm_merge=False"):
        HoliTomPress(llm_layer=4).schedule(4)
    with pytest.raises(ValueError, match="llm_merge_ratio"):
        HoliTomPress(llm_merge_ratio=1.0)


# --- on the models ------------------------------------------------------------------------------------------------

def family_model(family):
    # Qwen3-VL's tiny model has 2 LLM layers, both taking DeepStack features: one more for FlashVID's LLM stage
    return tiny_model_and_processor(family, text_config={"num_hidden_layers": 3} if family == "qwen3_vl" else None)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_and_is_restored(family):
    model, processor = family_model(family)
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad():
        ref = model(**inputs).logits
        for press in (FlashVIDPress(retention=0.25), HoliTomPress(retention=0.25)):
            with press(model) as pressed:
                gen = model.generate(**inputs, **GENERATE)
                report = pressed.last_report
            assert gen.sequences.shape[1] == inputs["input_ids"].shape[1] + 2
            assert 0 < report.retention < 1 and report.retention_before_llm >= report.retention
            if press.acts_in_llm:
                assert len(report.layer_tokens) == len(get_adapter(model).text_layers())
            assert torch.equal(model(**inputs).logits, ref)
    assert not model._forward_pre_hooks and "generate" not in vars(model)


@pytest.mark.parametrize("name", ["flashvid", "holitom"])
def test_batched_equals_per_sample(tiny_model, name):
    model, processor = tiny_model("qwen2_5_vl", "sdpa")
    videos = [tiny_video(8, seed=1), tiny_video(12, seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    press = FlashVIDPress(retention=0.3) if name == "flashvid" else HoliTomPress(retention=0.3)
    with torch.no_grad(), press(model) as pressed:
        singles, kept = [], []
        for video, question in zip(videos, questions):
            singles.append(model.generate(**make_inputs(processor, [video], question), **GENERATE))
            kept.append(pressed.last_report.selections[0])
        batched = model.generate(**make_inputs(processor, videos, questions), **GENERATE)
        for single, selection in zip(kept, pressed.last_report.selections):
            assert torch.equal(single.keep_indices, selection.keep_indices)
    for i, single in enumerate(singles):
        assert torch.equal(single.sequences[0, -2:], batched.sequences[i, -2:])
        for a, b in zip(single.logits, batched.logits):
            assert torch.allclose(a[0], b[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [FlashVIDPress, HoliTomPress])
def test_float32_default_keeps_the_same_tokens_on_bf16_features(cls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 36, 32, generator=g)
    x[2:6] = x[2] + 0.1 * torch.randn(4, 36, 32, generator=g)  # some static content for HoliTom's windows
    attention = torch.rand(8, 36, generator=g)
    half = tokens_of(x.bfloat16(), attention)
    full = tokens_of(x.bfloat16().float(), attention)
    a, b = cls(retention=0.25).select(half), cls(retention=0.25).select(full)
    assert torch.equal(a.keep_indices, b.keep_indices) and a.features.dtype == torch.bfloat16
    assert torch.allclose(a.features.float(), b.features, atol=0.05)
    assert cls(retention=0.25, compute_dtype="model").select(half).num_kept > 0
