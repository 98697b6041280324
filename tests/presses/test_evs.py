"""EVS (vidpress/presses/evs.py) on hand-built features where the kept set is known. The kept set against vLLM's own
function is checked in tests/serving/test_evs_vllm.py (in the vLLM venv)."""

import pytest
import torch

from vidpress.presses import EVSPress, get
from vidpress.types import VideoTokens


def tokens(x: torch.Tensor, h: int, w: int, **side) -> VideoTokens:
    return VideoTokens(x, (x.shape[0], h, w), side_features=side)


def test_static_video_keeps_the_first_frame():
    frame = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))
    sel = EVSPress(retention=0.25).select(tokens(frame.repeat(4, 1, 1), 4, 4))
    assert sel.keep_indices.tolist() == list(range(16))
    assert sel.frame_budgets.tolist() == [16, 0, 0, 0]  # frames may keep nothing
    # below one frame's worth the first frame is still kept whole: the floor is 1 / T
    assert EVSPress(retention=0.05).select(tokens(frame.repeat(4, 1, 1), 4, 4)).num_kept == 16
    assert EVSPress().min_retention(4) == 0.25


def test_changed_tokens_rank_by_cosine_dissimilarity_to_the_previous_frame():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, generator=g).repeat(3, 1, 1)
    x[1:, 2] = -x[0, 2]  # dis = 2 (opposite) in frame 1, then unchanged
    x[2, 1] = x[1, 1] + 0.5 * torch.randn(8, generator=g)  # 0 < dis < 2
    x[2, 3] = 3 * x[1, 3]  # scaled: cosine 1, dis 0 -- EVS ignores the norm
    press = EVSPress(retention=0.5)  # N = 12 -> K = 6: frame 0, then (1, 2), then (2, 1)
    scores, _ = press.rank(tokens(x, 2, 2), None)
    assert scores[0].tolist() == [255.0] * 4
    assert scores[1, 2] == pytest.approx(2.0) and 0 < scores[2, 1] < 2 and scores[2, 3] == pytest.approx(0, abs=1e-6)
    assert press.select(tokens(x, 2, 2)).keep_indices.tolist() == [0, 1, 2, 3, 6, 9]


def test_ties_go_to_the_lower_index():
    x = torch.ones(3, 4, 2)
    x[1, :, 1] = -1  # frame 1 turns every token by 90 degrees, frame 2 turns them back: all 8 have dis = 1
    sel = EVSPress(retention=0.5).select(tokens(x, 2, 2))  # K = 6: frame 0, then the first two of 8 tied tokens
    assert sel.keep_indices.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(("T", "M", "R", "expected"), [
    (4, 16, 0.25, 16),
    (8, 16, 0.3, 38),  # int(128 * 0.30000000000000004) = 38
    (25, 4, 0.1, 9),  # vLLM's q = 0.9: int(100 * (1 - 0.9)) = int(9.999999999999998) = 9, not round(10.0)
    (10, 10, 0.5, 50),
    (3, 49, 0.2, 49),  # int(29.4) = 29 < M: one frame's worth
])
def test_count_is_vllms(T, M, R, expected):
    press = EVSPress(retention=R)
    assert press.retained_count(T, M) == expected
    x = torch.randn(T, M, 4, generator=torch.Generator().manual_seed(T * M))
    assert press.select(tokens(x, 1, M)).num_kept == expected


def test_deepstack_features_join_the_score():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, generator=g).repeat(2, 1, 1)  # main features static
    side = torch.randn(1, 4, 8, generator=g).repeat(2, 1, 1)
    side[1, 3] = -side[0, 3]  # only the DeepStack features of (1, 3) change
    video = tokens(x, 2, 2, **{"deepstack.0": side, "deepstack.1": side.clone()})
    assert get("evs", retention=5 / 8).select(video).keep_indices.tolist() == [0, 1, 2, 3, 7]
    assert get("evs", retention=5 / 8, deepstack=False).select(video).keep_indices.tolist() == [0, 1, 2, 3, 4]


def test_model_dtype_scores_in_the_features_dtype():
    x = torch.randn(4, 9, 16, generator=torch.Generator().manual_seed(3)).bfloat16()
    assert EVSPress(compute_dtype="model").rank(tokens(x, 3, 3), None)[0].dtype == torch.bfloat16
    assert EVSPress().rank(tokens(x, 3, 3), None)[0].dtype == torch.float32


@pytest.mark.parametrize(("knobs", "message"), [
    ({"deepstack": "yes"}, "deepstack must be True or False"),
    ({"compute_dtype": "half"}, "compute_dtype must be one of"),
    ({"retention": 0.0}, "retention must be in"),
])
def test_bad_knobs(knobs, message):
    with pytest.raises(ValueError, match=message):
        EVSPress(**knobs)
