"""Feature-level peer baselines: DivPrune, DyCoke (stage 1), FastVID (each press's docstring cites its paper).

Hand-built cases where the rule's answer is known, merged features as averages, and every press end to end on the
tiny models of every family (exact effective retention, valid selections: tests/presses/test_contract.py).
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from reference import divprune_loop

from vidpress import VideoTokens, presses
from vidpress.presses import DivPrunePress, DyCokePress, FastVIDPress, divprune
from vidpress.presses.base import apportion
from vidpress.presses.divprune import greedy_max_min
from vidpress.testing import FAMILIES, make_inputs, tiny_video

NAMES = ("divprune", "dycoke", "fastvid")


def video(T=8, M=16, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = math.isqrt(M)
    grid = (T, side, M // side) if side * side == M else (T, 1, M)
    return VideoTokens(torch.randn(T, M, D, generator=g), grid)


# --- every press ----------------------------------------------------------------------------------------------

def test_registry():
    assert set(NAMES) <= set(presses.available())
    assert isinstance(presses.get("divprune", retention=0.3), DivPrunePress)
    assert isinstance(presses.get("DyCoke", retention=0.3), DyCokePress)
    press = presses.get("fastvid", retention=0.3, min_segments=2)
    assert isinstance(press, FastVIDPress) and press.min_segments == 2 and press.retention == 0.3


@pytest.mark.parametrize(
    "cls, knobs, knob",
    [
        (DivPrunePress, {"retention": 0.0}, "retention"),
        (DyCokePress, {"retention": 1.5}, "retention"),
        (DyCokePress, {"window": 1}, "window"),
        (DyCokePress, {"window": 2.5}, "window"),
        (DyCokePress, {"merge": "yes"}, "merge"),
        (FastVIDPress, {"retention": float("nan")}, "retention"),
        (FastVIDPress, {"min_segments": 0}, "min_segments"),
        (FastVIDPress, {"threshold": 1.5}, "threshold"),
        (FastVIDPress, {"threshold": "high"}, "threshold"),
        (FastVIDPress, {"max_segments": 0}, "max_segments"),
        (FastVIDPress, {"max_segments": 2, "min_segments": 4}, "max_segments"),
        (FastVIDPress, {"context_ratio": 1.5}, "context_ratio"),
        (FastVIDPress, {"anchor_interval": 0}, "anchor_interval"),
        (FastVIDPress, {"knn": 0}, "knn"),
        (FastVIDPress, {"saliency": "attention"}, "saliency"),
    ],
)
def test_bad_knobs_name_the_knob(cls, knobs, knob):
    with pytest.raises(ValueError, match=knob):
        cls(**knobs)


# --- DivPrune -------------------------------------------------------------------------------------------------

def test_divprune_keeps_the_most_isolated_token_first():
    # a tight bundle around (1, 0, 0) and one token pointing elsewhere: the loner is the first (and only) pick
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [1.0, 0.0, 0.1],
                      [1.0, 0.1, 0.1], [0.0, 0.0, 1.0], [1.0, -0.1, 0.0]])
    tokens = VideoTokens(x.view(2, 3, 3), (2, 1, 3))
    assert DivPrunePress(retention=1 / 6).select(tokens).keep_indices.tolist() == [4]
    # next: the token farthest from the loner; tokens 0, 1 and 5 are all orthogonal to it, the lowest index wins
    assert DivPrunePress(retention=2 / 6).select(tokens).keep_indices.tolist() == [0, 4]


@pytest.mark.parametrize("D", [4, 48])
def test_divprune_matches_the_literal_loop(D):
    # crowded low-dimensional tokens (D = 4) and spread ones
    x = torch.randn(160, D, generator=torch.Generator().manual_seed(D))
    picks = divprune_loop(x, 80)
    assert greedy_max_min(F.normalize(x, dim=-1), 80).tolist() == picks
    tokens = VideoTokens(x.view(10, 16, D), (10, 4, 4))
    assert DivPrunePress(retention=0.5).select(tokens).keep_indices.tolist() == sorted(picks)


@pytest.mark.parametrize("seed", range(4))
def test_divprune_ties_go_to_the_lower_index_as_in_the_literal_loop(seed):
    # each token three times over, on a coarse grid: equal distances everywhere; the loop's argmax takes the first
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (20, 6), generator=g).float().repeat(3, 1)
    x[x.norm(dim=-1) == 0] = 1.0
    x = x[torch.randperm(60, generator=g)]
    for budget in (1, 7, 20, 45):
        assert greedy_max_min(F.normalize(x, dim=-1), budget).tolist() == divprune_loop(x, budget)


def test_divprune_batched_and_matrix_free_picks_equal_one_by_one():
    x = F.normalize(torch.randn(5, 40, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    batched = greedy_max_min(x, 25)
    assert batched.shape == (5, 25)
    for b in range(5):
        assert batched[b].tolist() == greedy_max_min(x[b], 25).tolist() == divprune_loop(x[b], 25)
    small = divprune._MAX_MATRIX_ELEMENTS
    divprune._MAX_MATRIX_ELEMENTS = 0  # too big to store: rows computed from the features per pick
    try:
        assert torch.equal(greedy_max_min(x, 25), batched)
    finally:
        divprune._MAX_MATRIX_ELEMENTS = small


def test_divprune_frame_budgets_equal_the_rule_frame_by_frame():
    tokens = video(T=6, M=16, D=24, seed=3)
    sel = DivPrunePress(retention=0.3, frame_budgets="vidcom2").select(tokens)
    expected = []
    for t, k in enumerate(sel.frame_budgets.tolist()):
        expected += [t * 16 + i for i in divprune_loop(tokens.features[t], k)]
    assert sel.keep_indices.tolist() == sorted(expected)


def test_divprune_budget_outside_the_tokens_is_refused():
    with pytest.raises(ValueError, match="budget"):
        greedy_max_min(torch.eye(4), 5)


def test_divprune_keeps_one_copy_of_duplicates():
    # 4 identical frames of 8 distinct tokens: 8 picks cover the 8 distinct tokens, each once
    frame = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    tokens = VideoTokens(frame.repeat(4, 1, 1), (4, 2, 4))
    keep = DivPrunePress(retention=0.25).select(tokens).keep_indices
    assert sorted((keep % 8).tolist()) == list(range(8))


# --- DyCoke ---------------------------------------------------------------------------------------------------

def test_dycoke_reference_frames_follow_the_paper():
    # odd offsets -> previous frame; even offsets -> the window's first frame; windows of 4
    assert DyCokePress().reference_frames(10).tolist() == [0, 0, 0, 2, 4, 4, 4, 6, 8, 8]


def test_dycoke_identical_frames_collapse_onto_the_reference_frames():
    frame = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    tokens = VideoTokens(frame.repeat(8, 1, 1), (8, 4, 4))
    sel = DyCokePress(retention=0.25, merge=True).select(tokens)
    assert sel.frame_budgets.tolist() == [16, 0, 0, 0, 16, 0, 0, 0]
    assert sel.keep_indices.tolist() == list(range(16)) + list(range(64, 80))
    assert torch.equal(sel.features, frame.repeat(2, 1))  # averages of identical tokens: exactly the originals


def test_dycoke_merged_features_are_averages_by_hand():
    # T = 4, M = 2; R = 5/8 keeps frame 0 whole and one token in each other frame (the least similar one)
    x = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # frame 0: reference, kept whole
            [[1.0, 0.1], [1.0, 1.0]],  # frame 1 vs 0: token 0 nearly a copy -> merged into (0, 0); token 1 kept
            [[1.0, 1.0], [0.1, 1.0]],  # frame 2 vs 0: token 0 kept; token 1 nearly a copy -> into (0, 1)
            [[-1.0, 1.0], [0.2, 1.0]],  # frame 3 vs 2: token 0 kept; token 1 ~ (2, 1), which went to (0, 1)
        ]
    )
    sel = DyCokePress(retention=5 / 8, merge=True).select(VideoTokens(x, (4, 1, 2)))
    assert sel.keep_indices.tolist() == [0, 1, 3, 4, 6]
    expected = torch.tensor([[1.0, 0.05], [0.1, 1.0], [1.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])
    assert torch.allclose(sel.features, expected, atol=1e-6)
    # the default (released, merge=False) drops the same tokens and keeps the original features
    plain = DyCokePress(retention=5 / 8).select(VideoTokens(x, (4, 1, 2)))
    assert torch.equal(plain.keep_indices, sel.keep_indices) and plain.features is None


def test_dycoke_below_the_floor_keeps_reference_frames_and_says_so(caplog):
    tokens = video(T=6, M=16)  # windows [0..3], [4, 5]: floor 2 / 6
    press = DyCokePress(retention=0.1)
    with caplog.at_level(logging.WARNING, logger="vidpress"):
        sel = press.select(tokens)
        press.select(tokens)
    assert press.min_retention(6) == pytest.approx(1 / 3)
    assert [press.min_retention(T) for T in (2, 8, 13)] == [1 / 2, 2 / 8, 4 / 13]  # ceil(T / 4) windows
    assert sel.frame_budgets.tolist() == [16, 0, 0, 0, 16, 0] and sel.retention == pytest.approx(1 / 3)
    assert sum("below what stage 1 reaches" in r.message for r in caplog.records) == 1  # once per press


def test_dycoke_short_video_and_budget_spread():
    # T < window: one window, floor 1/T; the extra budget is spread evenly over the other frames
    sel = DyCokePress(retention=0.5).select(video(T=3, M=16))
    assert sel.frame_budgets.tolist() == [16, 4, 4]
    sel = DyCokePress(retention=0.5).select(video(T=8, M=16))
    assert sel.frame_budgets.tolist() == [16, 5, 5, 6, 16, 5, 5, 6]
    assert sum(sel.frame_budgets.tolist()) == 64


# --- FastVID --------------------------------------------------------------------------------------------------

def two_scenes(M=16, D=32, noise=0.0, distinct=True):
    """8 frames: frames 0-3 repeat scene A, frames 4-7 scene B (optionally with a little noise)."""
    g = torch.Generator().manual_seed(0)
    if distinct:
        a, b = torch.randn(M, D, generator=g), torch.randn(M, D, generator=g)
    else:  # each scene has only two token values, 8 copies each
        a = torch.randn(2, D, generator=g).repeat_interleave(M // 2, dim=0)
        b = torch.randn(2, D, generator=g).repeat_interleave(M // 2, dim=0)
    x = torch.cat([a.repeat(4, 1, 1), b.repeat(4, 1, 1)])
    return x + noise * torch.randn(x.shape, generator=g)


def test_fastvid_cuts_at_the_scene_change():
    tokens = VideoTokens(two_scenes(noise=0.01), (8, 4, 4))
    assert FastVIDPress(retention=0.25, min_segments=1).segments(tokens) == [(0, 4), (4, 8)]
    # min_segments forces the least similar transitions as cuts as well (the paper's c)
    segments = FastVIDPress(retention=0.25, min_segments=3).segments(tokens)
    assert len(segments) == 3 and any(start == 4 for start, _ in segments)
    # every transition below the threshold is cut; max_segments keeps the least similar ones
    assert len(FastVIDPress(retention=0.25, min_segments=1, threshold=1.0).segments(tokens)) == 8
    assert (FastVIDPress(retention=0.25, min_segments=1, threshold=1.0, max_segments=2).segments(tokens)
            == [(0, 4), (4, 8)])
    # never more segments than tokens in the budget
    assert len(FastVIDPress(retention=1 / 128, min_segments=8).segments(tokens)) == 1


def test_fastvid_merges_duplicates_into_identical_kept_tokens():
    # each scene holds two token values; whatever is kept, every dropped token merges into an identical copy
    x = two_scenes(distinct=False)
    sel = FastVIDPress(retention=0.25, min_segments=1).select(VideoTokens(x, (8, 4, 4)))
    assert sel.num_kept == 32 and sel.frame_budgets[:4].sum() == 16 and sel.frame_budgets[4:].sum() == 16
    assert torch.equal(sel.features, x.reshape(-1, 32)[sel.keep_indices])


def test_fastvid_duplicated_frames_collapse_onto_the_anchor_frame():
    # no salient share: context tokens come from each segment's anchor frame (its LAST), which holds every distinct
    # token once; the three copies merge into it, so the merged features are the originals
    x = two_scenes()
    sel = FastVIDPress(retention=0.25, min_segments=1, context_ratio=1.0).select(VideoTokens(x, (8, 4, 4)))
    assert sel.frame_budgets.tolist() == [0, 0, 0, 16, 0, 0, 0, 16]
    assert torch.allclose(sel.features, x[[3, 7]].reshape(-1, 32), atol=1e-6)


def test_fastvid_budget_split_over_segments():
    assert apportion(10, [32, 32]) == [5, 5]
    assert apportion(7, [16, 48]) == [2, 5]  # 1.75 / 5.25: the larger remainder gets the extra token
    assert apportion(3, [16, 16, 16]) == [1, 1, 1]
    assert apportion(4, [1, 1, 100]) == [1, 1, 2]  # at least one each
    # a segment-heavy video at a tiny budget still spends exactly round(R * T * M) tokens
    sel = FastVIDPress(retention=0.05, min_segments=8).select(video(T=8, M=16))
    assert sel.num_kept == round(0.05 * 128)


# --- on the models --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_presses_on_every_family(tiny_model, family):
    model, processor = tiny_model(family)
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad():
        ref = model(**inputs).logits
        for name in NAMES:
            with presses.get(name, retention=1.0)(model) as pressed:
                assert torch.equal(model(**inputs).logits, ref), name
            assert pressed.last_report.retention == 1.0
            with presses.get(name, retention=0.25)(model) as pressed:
                out = model(**inputs).logits
            report = pressed.last_report
            assert out.shape[1] == ref.shape[1] - (report.visual_tokens_before - report.visual_tokens_after), name
            assert abs(report.retention - 0.25) <= 0.02, (name, report.retention)
            assert torch.isfinite(out).all()
        assert torch.equal(model(**inputs).logits, ref)  # the model is restored
