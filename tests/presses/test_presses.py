import math

import pytest
import torch
from reference import vidcom2_loop

from vidpress import RandomPress, Selection, UniformPress, VidCom2Press, VideoTokens, presses
from vidpress.presses.base import keep_top_per_frame


def video(T=8, M=16, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return VideoTokens(torch.randn(T, M, D, generator=g), (T, int(math.isqrt(M)), int(math.isqrt(M))))


# --- VidCom2: the rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("R", [0.05, 0.1, 0.25, 0.5, 0.9])
def test_vidcom2_budgets_average_to_R_before_clamping(R):
    press = VidCom2Press(retention=R)
    r = press.frame_retention(video())
    assert r.mean().item() == pytest.approx(R, abs=1e-6)


def test_vidcom2_keeps_at_least_one_token_per_frame():
    tokens = video(T=16, M=16)
    sel = VidCom2Press(retention=0.01).select(tokens)
    per_frame = torch.bincount(sel.keep_indices // 16, minlength=16)
    assert (per_frame >= 1).all()
    assert torch.equal(per_frame, sel.frame_budgets)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("R", [0.1, 0.25, 0.5])
def test_vidcom2_matches_per_frame_loop(seed, R):
    tokens = video(T=6, M=9, D=24, seed=seed)
    sel = VidCom2Press(retention=R).select(tokens)
    assert sel.keep_indices.tolist() == vidcom2_loop(tokens.features, R)
    assert torch.equal(sel.keep_indices, sel.keep_indices.sort().values)


@pytest.mark.parametrize("seed", range(2))
def test_vidcom2_matches_per_frame_loop_across_row_chunks(seed):
    # 2304 tokens: the variance and norm passes run over more than one 2048-row chunk
    tokens = video(T=9, M=256, D=20, seed=seed)
    assert VidCom2Press(retention=0.2).select(tokens).keep_indices.tolist() == vidcom2_loop(tokens.features, 0.2)


def test_vidcom2_hand_case_keeps_the_odd_token_out():
    # one frame: three copies of (1, 0) and one (0, 1); the distinct token is kept first
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    sel = VidCom2Press(retention=0.25, channel_ratio=1.0).select(VideoTokens(x, (1, 2, 2)))
    assert sel.keep_indices.tolist() == [3]


def test_vidcom2_hand_case_unique_frame_gets_the_budget():
    # frames 0, 1, 3 identical, frame 2 different: p ~ one-hot on frame 2, so
    # r = 0.5 * (1 + 1 - 1/4) = 0.875 -> 7 of 8 tokens for frame 2, 0.5 * 0.75 * 8 = 3 for the others
    x = torch.zeros(4, 8, 2)
    x[..., 0] = 1.0
    x[2] = torch.tensor([0.0, 1.0])
    sel = VidCom2Press(retention=0.5, channel_ratio=1.0).select(VideoTokens(x, (4, 2, 4)))
    assert sel.frame_budgets.tolist() == [3, 3, 7, 3]
    # identical tokens tie; the lower index goes first
    assert sel.keep_indices.tolist() == [0, 1, 2, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 24, 25, 26]


def test_vidcom2_uses_low_variance_channels():
    # channels 0-1: loud noise; channels 2-3: quiet, and only token 5 differs there
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 8, 4)
    x[..., :2] = 100 * torch.randn(1, 8, 2, generator=g)
    x[..., 2:] = torch.tensor([1.0, 0.0])
    x[0, 5, 2:] = torch.tensor([0.0, 1.0])
    sel = VidCom2Press(retention=0.125).select(VideoTokens(x, (1, 2, 4)))
    assert sel.keep_indices.tolist() == [5]


def test_vidcom2_cosine_variant_differs_and_is_valid():
    tokens = video(T=8, M=16, D=32, seed=3)
    cos = VidCom2Press(retention=0.25, similarity="cosine").select(tokens)
    assert cos.keep_indices.numel() >= 8 and torch.equal(cos.keep_indices, cos.keep_indices.sort().values)
    assert (VidCom2Press(retention=0.25, similarity="cosine").frame_retention(tokens).mean().item()
            == pytest.approx(0.25))


@pytest.mark.parametrize(
    "knobs, name",
    [
        ({"retention": 0.0}, "retention"),
        ({"retention": -0.5}, "retention"),
        ({"retention": 1.5}, "retention"),
        ({"retention": float("nan")}, "retention"),
        ({"retention": "a lot"}, "retention"),
        ({"tau": 0.0}, "tau"),
        ({"alphas": ()}, "alphas"),
        ({"alphas": (1.0, -2.0)}, "alphas"),
        ({"channel_ratio": 0.0}, "channel_ratio"),
        ({"channel_ratio": 1.5}, "channel_ratio"),
        ({"similarity": "dot"}, "similarity"),
    ],
)
def test_vidcom2_bad_knobs_name_the_knob(knobs, name):
    with pytest.raises(ValueError, match=name):
        VidCom2Press(**knobs)


def test_wrong_shapes_are_rejected():
    with pytest.raises(ValueError, match="features"):
        VideoTokens(torch.randn(4, 8), (4, 2, 4))
    with pytest.raises(ValueError, match="grid"):
        VideoTokens(torch.randn(4, 8, 3), (4, 3, 3))
    with pytest.raises(ValueError, match="features"):
        VideoTokens(torch.zeros(2, 4, 3, dtype=torch.long), (2, 2, 2))
    with pytest.raises(ValueError, match="VideoTokens"):
        VidCom2Press().select(torch.randn(2, 4, 8))


# --- registry and helpers (the contract every press keeps: tests/presses/test_contract.py) -------------------

def test_registry():
    assert {"vidcom2", "random", "uniform"} <= set(presses.available())
    press = presses.get("VidCom²", retention=0.25)
    assert isinstance(press, VidCom2Press) and press.retention == 0.25
    with pytest.raises(ValueError, match="available presses: .*vidcom2"):
        presses.get("nope")


def test_random_is_seeded_and_exact():
    tokens = video(T=8, M=16)
    a = RandomPress(retention=0.25, seed=1).select(tokens)
    b = RandomPress(retention=0.25, seed=1).select(tokens)
    c = RandomPress(retention=0.25, seed=2).select(tokens)
    assert torch.equal(a.keep_indices, b.keep_indices) and not torch.equal(a.keep_indices, c.keep_indices)
    assert a.num_kept == 32


def test_uniform_keeps_evenly_spaced_whole_frames():
    sel = UniformPress(retention=0.25).select(video(T=8, M=16))
    assert sel.frame_budgets.tolist() == [0, 0, 16, 0, 0, 0, 16, 0]  # centres of two 4-frame segments
    assert sel.retention == 0.25


def test_keep_top_per_frame_matches_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, generator=g)
    budgets = torch.tensor([1, 0, 7, 3, 2])
    expected = sorted(t * 7 + m for t in range(5)
                      for m in torch.argsort(-scores[t], stable=True)[: budgets[t]].tolist())
    assert keep_top_per_frame(scores, budgets).tolist() == expected


def test_selection_validates():
    with pytest.raises(ValueError, match="sorted"):
        Selection(torch.tensor([3, 1]), 4)
    with pytest.raises(ValueError, match="at least one"):
        Selection(torch.tensor([], dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        Selection(torch.tensor([1, 4]), 4)


def test_retention_true_is_refused():
    import numpy as np

    from vidpress.types import check_retention

    for flag in (True, False, np.bool_(True)):
        with pytest.raises(ValueError, match="bool"):
            check_retention(flag)
    with pytest.raises(ValueError, match="bool"):
        presses.get("vidcom2", retention=True)
    assert check_retention(1) == 1.0 and check_retention(np.float32(0.5)) == 0.5
