"""downsample (vidpress/presses/downsample.py): the pooled grid, features and representatives on hand-built grids."""

import pytest
import torch

from vidpress.presses import DownsamplePress, get
from vidpress.serving.vllm import select_exact
from vidpress.types import VideoTokens


def grid_video(T: int, h: int, w: int, D: int = 6, seed: int = 0) -> VideoTokens:
    x = torch.randn(T, h * w, D, generator=torch.Generator().manual_seed(seed))
    return VideoTokens(x, (T, h, w))


def test_two_by_two_average_pooling_at_a_quarter():
    video = grid_video(3, 4, 6)
    sel = DownsamplePress(retention=0.25).select(video)
    x = video.features.reshape(3, 4, 6, -1)
    expected = x.reshape(3, 2, 2, 3, 2, -1).mean(dim=(2, 4)).reshape(-1, x.shape[-1])  # [T * 2 * 3, D]
    assert torch.allclose(sel.features, expected, atol=1e-6)
    # each pooled token sits at its window's top-left token: rows 0, 2, columns 0, 2, 4 of every frame
    frame = [r * 6 + c for r in (0, 2) for c in (0, 2, 4)]
    assert sel.keep_indices.tolist() == [t * 24 + m for t in range(3) for m in frame]
    assert sel.frame_budgets.tolist() == [6, 6, 6]


def test_odd_grid_keeps_the_edge_cells():
    video = grid_video(1, 5, 5)
    press = DownsamplePress(retention=0.25)
    assert press.grid(5, 5) == (3, 3, 2)
    sel = press.select(video)
    x = video.features.reshape(5, 5, -1)
    assert torch.allclose(sel.features[8], x[4, 4], atol=1e-6)  # the corner window holds one cell
    assert torch.allclose(sel.features[2], x[:2, 4].mean(0), atol=1e-6)  # the right edge window holds two
    assert sel.keep_indices.tolist() == [0, 2, 4, 10, 12, 14, 20, 22, 24]


def test_integer_factor_three_uses_window_centres():
    video = grid_video(2, 6, 6)
    sel = DownsamplePress(retention=1 / 9).select(video)
    assert sel.keep_indices.tolist() == [t * 36 + r * 6 + c for t in range(2) for r in (1, 4) for c in (1, 4)]
    assert torch.allclose(sel.features[0], video.features[0].reshape(6, 6, -1)[:3, :3].mean((0, 1)), atol=1e-6)


def test_non_integer_factor_is_bilinear():
    video = grid_video(2, 27, 27)
    press = DownsamplePress(retention=0.15)  # s = 0.387: round(27 * s) = 10
    assert press.grid(27, 27) == (10, 10, None)
    sel = press.select(video)
    x = video.features.reshape(2, 27, 27, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(sel.features, expected.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), atol=1e-6)
    rows, cols = press.representatives(27, 27)
    centres = (torch.arange(10) + 0.5) * 2.7 - 0.5  # output cell centres in input rows
    assert ((rows - centres).abs() <= 0.5).all() and torch.equal(rows, cols)
    assert sel.num_kept == 200 and abs(sel.retention - 100 / 729) < 1e-12


def test_constant_windows_pool_to_themselves_and_bf16_comes_back_as_bf16():
    x = torch.arange(4.0).repeat_interleave(2).reshape(2, 4).repeat_interleave(2, dim=0)  # 4 x 4 of 2 x 2 blocks
    video = VideoTokens(x.reshape(1, 16, 1).expand(1, 16, 3).bfloat16().contiguous(), (1, 4, 4))
    sel = get("downsample").select(video)
    assert sel.features.dtype == torch.bfloat16 and sel.features[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_exact_count_drops_the_most_uniform_cells_and_adds_the_most_blurred_tokens():
    video = grid_video(1, 4, 4)
    x = video.features.reshape(4, 4, -1)
    x[2:, :2] = x[2, 0]  # the bottom-left window is uniform: nothing is lost by pooling it
    x[0, 3] = 10.0  # pooling blurs this token the most
    press = DownsamplePress(retention=0.25)
    keep, _ = select_exact(press, video, 3)
    assert keep.tolist() == [0, 2, 10]  # the cell at 8 (bottom-left) dropped
    keep, features = select_exact(press, video, 5)
    assert keep.tolist() == [0, 2, 3, 8, 10] and torch.equal(features[2], video.features[0, 3])


@pytest.mark.parametrize(("R", "grid"), [(0.25, (2, 2)), (0.5, (3, 3)), (0.05, (1, 1)), (1 / 16, (1, 1))])
def test_grid_per_retention(R, grid):
    assert DownsamplePress(retention=R).grid(4, 4)[:2] == grid
