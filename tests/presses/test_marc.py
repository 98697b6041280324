"""MarcPress: the temporal merge against a plain loop written from the math, budgets, retrieval, and the press
through every model family."""

import math

import pytest
import torch

from vidpress.presses import MarcPress, get
from vidpress.retrieval.events import SimilarityDropDetector, clips_from_boundaries, segment
from vidpress.testing import FAMILIES, make_inputs, tiny_video
from vidpress.types import Query, VideoTokens


def video(T=8, M=16, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return VideoTokens(torch.randn(T, M, D, generator=g), (T, int(math.isqrt(M)), int(math.isqrt(M))))


def merge_loop(x: torch.Tensor, clips, frame_budget: int):
    """Reference from MARC's rule (arXiv 2510.07915; `MarcPress`'s docstring): groups are lists of original frames;
    a group's value is the plain mean of its frames, recomputed from scratch; merge the most similar adjacent pair
    (first on ties) per clip down to its share of the budget, then globally. Returns [(first frame, mean [M, D])]."""

    def value(group):
        return torch.stack([x[t] for t in group]).mean(0)

    def sim(a, b):
        va, vb = value(a), value(b)
        return sum(
            float(torch.dot(va[m], vb[m]) / (va[m].norm().clamp_min(1e-12) * vb[m].norm().clamp_min(1e-12)))
            for m in range(x.shape[1])
        ) / x.shape[1]

    def merge(groups, target):
        while len(groups) > target:
            scores = [sim(groups[i], groups[i + 1]) for i in range(len(groups) - 1)]
            best = max(scores)
            i = next(j for j, s in enumerate(scores) if s >= best - 1e-6)
            groups = groups[:i] + [groups[i] + groups[i + 1]] + groups[i + 2 :]
        return groups

    sizes = [b - a for a, b in clips]
    shares = ([max(1, round(frame_budget * s / sum(sizes))) for s in sizes] if len(clips) <= frame_budget
              else [1] * len(clips))
    groups = []
    for (a, b), share in zip(clips, shares):
        groups += merge([[t] for t in range(a, b)], share)
    groups = merge(groups, frame_budget)
    return [(g[0], value(g)) for g in groups]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("frames", [1, 2, 3, 5])
def test_merge_matches_reference_loop_without_retrieval(seed, frames):
    tokens = video(T=10, M=9, D=12, seed=seed)
    # slowly drifting frames, so neighbours are similar and the order of merges matters
    x = torch.cumsum(tokens.features, dim=0)
    tokens = VideoTokens(x, tokens.grid)
    press = MarcPress(budget_tokens=frames * 9, top_k=None)
    sel = press.select(tokens)
    # without retrieval the clips still come from event segmentation (the per-clip budgets use them)
    clips = clips_from_boundaries(segment(x.mean(1)), 10)
    expected = merge_loop(x, clips, frames)
    firsts = [f for f, _ in expected]
    assert sel.keep_indices.tolist() == [f * 9 + m for f in firsts for m in range(9)]
    torch.testing.assert_close(sel.features, torch.cat([v for _, v in expected]), rtol=1e-5, atol=1e-5)
    assert sel.frame_budgets.tolist() == [9 if t in firsts else 0 for t in range(10)]


def test_merge_per_clip_then_global_matches_reference_loop():
    # three events (frames 0-3, 4-7, 8-11) with one clear cut each; budget 2 frames < 3 clips -> global merge
    g = torch.Generator().manual_seed(3)
    base = torch.randn(3, 4, 8, generator=g) * 5
    x = torch.stack([base[t // 4] + 0.1 * torch.randn(4, 8, generator=g) for t in range(12)])
    tokens = VideoTokens(x, (12, 2, 2))
    detector = SimilarityDropDetector(min_clip_frames=2, threshold=0.5)
    for frames in (2, 3, 6):
        sel = MarcPress(budget_tokens=frames * 4, top_k=None, detector=detector).select(tokens)
        expected = merge_loop(x, [(0, 4), (4, 8), (8, 12)], frames)
        assert sel.keep_indices.tolist() == [f * 4 + m for f, _ in expected for m in range(4)]
        torch.testing.assert_close(sel.features, torch.cat([v for _, v in expected]), rtol=1e-5, atol=1e-5)


def test_merged_value_weights_by_frame_count():
    # frames 0, 1 identical (merged first), then their group merges with frame 2: mean of 3 frames, not of 2 means
    x = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.3]], [[-1.0, 5.0]]])
    sel = MarcPress(budget_tokens=2, top_k=None).select(VideoTokens(x, (4, 1, 1)))
    assert sel.keep_indices.tolist() == [0, 3]
    torch.testing.assert_close(sel.features[0], torch.tensor([1.0, 0.1]))


@pytest.mark.parametrize("budget,kept", [(None, 16), (16, 16), (40, 32), (64, 64), (5, 5), (1, 1)])
def test_budgets_and_effective_retention(budget, kept):
    tokens = video(T=8, M=16)
    sel = MarcPress(budget_tokens=budget, top_k=None).select(tokens)
    assert sel.num_kept == kept
    assert sel.retention == kept / 128
    assert int(sel.frame_budgets.sum()) == kept
    assert sel.features.shape == (kept, 32)


def test_retention_budget_and_nothing_dropped_at_full_budget():
    tokens = video(T=8, M=16)
    assert MarcPress(retention=0.25, top_k=None).select(tokens).num_kept == 32
    assert MarcPress(retention=0.05, top_k=None).select(tokens).num_kept == round(0.05 * 128)
    for press in (MarcPress(retention=1.0), MarcPress(budget_tokens=128), MarcPress(budget_tokens=10_000)):
        sel = press.select(tokens, Query(torch.arange(3), torch.randn(3, 32)))
        assert sel.keep_indices.tolist() == list(range(128)) and sel.features is None


def test_below_one_frame_keeps_the_most_distinctive_tokens():
    x = torch.zeros(2, 4, 2)
    x[..., 0] = 1.0
    x[:, 2] = torch.tensor([0.0, 1.0])  # position 2 is the odd one out in both frames
    sel = MarcPress(budget_tokens=1, top_k=None).select(VideoTokens(x, (2, 2, 2)))
    assert sel.keep_indices.tolist() == [2]


def test_bad_knobs_raise():
    with pytest.raises(ValueError, match="not both"):
        MarcPress(retention=0.1, budget_tokens=16)
    with pytest.raises(ValueError, match="budget_tokens"):
        MarcPress(budget_tokens=0)
    with pytest.raises(ValueError, match="top_k"):
        MarcPress(top_k=0)
    with pytest.raises(ValueError, match="retention"):
        MarcPress(retention=1.5)


def _events_video(D=16, seed=0):
    """Four 3-frame events, each a distinct direction; returns VideoTokens and the event directions [4, D]."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(4, D, generator=g), dim=-1) * 4
    x = torch.stack([directions[t // 3] + 0.05 * torch.randn(4, D, generator=g) for t in range(12)])
    return VideoTokens(x, (12, 2, 2)), directions


@pytest.mark.parametrize("event", range(4))
def test_retrieval_picks_the_clip_matching_the_query(event):
    tokens, directions = _events_video()
    press = MarcPress(budget_tokens=4, top_k=1, detector=SimilarityDropDetector(threshold=0.5))
    assert press.retrieve(tokens, None) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    query = Query(torch.arange(2), torch.stack([directions[event] * 0.5, directions[event] * 1.5]))
    assert press.retrieve(tokens, query) == [(3 * event, 3 * event + 3)]
    sel = press.select(tokens, query)
    assert 3 * event <= int(sel.keep_indices[0]) // 4 < 3 * event + 3


def test_retrieval_keeps_top_k_in_time_order():
    tokens, directions = _events_video(seed=1)
    press = MarcPress(budget_tokens=8, top_k=2, detector=SimilarityDropDetector(threshold=0.5))
    query = Query(torch.arange(2), torch.stack([directions[3], directions[0]]))
    clips = press.retrieve(tokens, query)
    assert len(clips) == 2 and clips == sorted(clips)
    assert {(0, 3), (9, 12)} == set(clips)


def test_registry_builds_marc():
    press = get("marc", retention=0.1)
    assert isinstance(press, MarcPress) and press.query_aware


@pytest.mark.parametrize("family", FAMILIES)
def test_through_press_all_families_batched_equals_per_sample(family, tiny_model):
    model, processor = tiny_model(family)
    videos = [tiny_video(num_frames=8, seed=s) for s in (0, 1)]
    questions = ["what moves?", "which colour is the big square here?"]
    press = MarcPress(budget_tokens=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        batch = make_inputs(processor, videos, questions)
        with press(model) as pressed:
            logits = model(**batch).logits[:, -1]
            report = pressed.last_report
        for i in range(2):
            single = make_inputs(processor, [videos[i]], [questions[i]])
            with press(model) as pressed:
                one = model(**single).logits[:, -1]
            torch.testing.assert_close(one[0], logits[i], rtol=1e-4, atol=1e-4)
            sel = pressed.last_report.selections[0]
            assert torch.equal(sel.keep_indices, report.selections[i].keep_indices)
    for sel, tokens in zip(report.selections, report.videos):
        assert sel.num_kept == tokens.tokens_per_frame  # one frame's tokens by default
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert "generate" not in vars(model)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_full_budget_is_identical_to_the_unpressed_model(family, tiny_model):
    model, processor = tiny_model(family)
    inputs = make_inputs(processor, [tiny_video(num_frames=8, seed=2)], ["what moves?"])
    with torch.no_grad():
        plain = model(**inputs).logits
        with MarcPress(budget_tokens=100_000)(model):
            pressed = model(**inputs).logits
    torch.testing.assert_close(pressed, plain, rtol=0, atol=0)


def test_generate_through_the_press(tiny_model):
    model, processor = tiny_model("qwen2_vl")
    inputs = make_inputs(processor, [tiny_video(num_frames=8, seed=0)], ["what moves?"])
    with MarcPress()(model) as pressed:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert pressed.last_report.retention < 1.0
