"""Spatial downsampling: the control every token-compression table needs (VTC-Bench, arXiv 2510.07143, found plain
downsampling ahead of many published methods). Not a method of its own: each frame's token grid is pooled to a
coarser grid before the LLM, the same for every frame and every video, whatever the content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vidpress.presses.base import ScorePress, register
from vidpress.types import Query, Selection, VideoTokens

# How close 1 / sqrt(R) must be to a whole number to count as an integer pooling factor (R = 0.25 -> 2 exactly).
_INTEGER_TOLERANCE = 1e-6


@register("downsample")
@dataclass
class DownsamplePress(ScorePress):
    """Average-pool every frame's h x w token grid to a coarser grid (a control, not a compression method).

    Rule, per frame (scale s = sqrt(R) on each axis, factor f = 1 / s):
      - f a whole number k (R = 1/4, 1/9, 1/16, ...): k x k average pooling, grid (ceil(h / k), ceil(w / k)); a
        window at the right or bottom edge that the grid does not fill averages the cells it covers, so no token is
        lost. R = 0.25 is the usual 2 x 2 pooling.
      - otherwise: bilinear resize (`torch.nn.functional.interpolate`, align_corners=False, no antialias, as
        LLaVA-OneVision pools its video grid) to (max(1, round(h * s)), max(1, round(w * s))).
    Kept per frame: h' * w' tokens, the same for every frame; effective retention h' w' / (h w) (per axis within one
    cell of s * h, s * w; at least one token per frame). Computed in float32, returned in the features' dtype.

    Positions. The LLM input can only carry a pooled token at the position of one of the original tokens (the
    adapter slices the full sequence's positions with the kept indices). Each pooled cell's token takes the position
    of its representative: the original token nearest the cell's centre, ties to the upper-left (for 2 x 2 pooling
    the window's top-left token; for 3 x 3 its centre). With M-RoPE (Qwen) a pooled token at cell (i, j) of frame t
    thus sits at (t, row, col) of its representative, so the pooled grid keeps the video's spatial extent (cells
    f apart) instead of being renumbered 0..h'-1; with 1-D positions (LLaVA) it sits at the representative's index in
    the unpressed sequence. Text after the video keeps its unpressed positions, as for every press.

    Scores (used only to fit an exact count, e.g. vLLM's): a representative scores its cell's mean squared
    deviation from the pooled feature (how much pooling lost there), every other token its own squared deviation
    from its cell's pooled feature; so a count below the pooled grid drops the most uniform cells first and a count
    above it adds back the tokens pooling blurred most.

    Args:
        retention: R, the share of each frame's tokens kept (0.25: 2 x 2 pooling).
    """

    supports_frame_budgets = False
    no_frame_budgets_because = ("it pools every frame's grid by one factor (a control); per-frame budgets would "
                                "need a pooling factor per frame")

    def grid(self, h: int, w: int) -> tuple[int, int, int | None]:
        """The pooled grid (h', w') of an h x w frame and the integer pooling factor (None: bilinear)."""
        factor = 1 / math.sqrt(self.retention)
        whole = round(factor)
        if abs(factor - whole) < _INTEGER_TOLERANCE:
            return -(-h // whole), -(-w // whole), whole
        scale = math.sqrt(self.retention)
        return max(1, round(h * scale)), max(1, round(w * scale)), None

    def representatives(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Original row [h'] and column [w'] of each pooled cell's representative (nearest its centre, ties up/left)."""
        rows, cols, factor = self.grid(h, w)
        return _nearest_to_centres(h, rows, factor), _nearest_to_centres(w, cols, factor)

    def pool(self, tokens: VideoTokens) -> torch.Tensor:
        """Pooled features [T, h', w', D] (float32)."""
        T, h, w = tokens.grid
        rows, cols, factor = self.grid(h, w)
        x = tokens.features.float().reshape(T, h, w, -1).permute(0, 3, 1, 2)  # [T, D, h, w]
        if factor is not None:
            pooled = torch.nn.functional.avg_pool2d(x, factor, ceil_mode=True)
        else:
            pooled = torch.nn.functional.interpolate(x, size=(rows, cols), mode="bilinear", align_corners=False)
        return pooled.permute(0, 2, 3, 1)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, h, w = tokens.grid
        rows, cols = self.representatives(h, w)
        keep = self._kept_indices(T, h, w, rows, cols).to(tokens.features.device)
        features = self.pool(tokens).reshape(-1, tokens.features.shape[-1]).to(tokens.features.dtype)
        budgets = torch.full((T,), rows.numel() * cols.numel(), dtype=torch.long)
        return Selection(keep, tokens.num_tokens, features=features, frame_budgets=budgets)

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, None]:
        """Scores [T, M] for fitting an exact count (see the class docstring)."""
        T, h, w = tokens.grid
        pooled = self.pool(tokens)  # [T, h', w', D]
        rows, cols = self.representatives(h, w)
        factor = self.grid(h, w)[2]
        cell_row, cell_col = _cell_of(h, rows.numel(), factor), _cell_of(w, cols.numel(), factor)  # [h], [w]
        x = tokens.features.float().reshape(T, h, w, -1)
        target = pooled[:, cell_row][:, :, cell_col]  # [T, h, w, D]: each token's cell's pooled feature
        deviation = (x - target).pow(2).mean(-1)  # [T, h, w]
        cell = cell_row[:, None] * cols.numel() + cell_col[None, :]  # [h, w] flat pooled cell of each token
        cells = rows.numel() * cols.numel()
        deviation = deviation.reshape(T, -1).cpu()
        spread = torch.zeros(T, cells).index_add_(1, cell.flatten(), deviation)
        spread /= torch.bincount(cell.flatten(), minlength=cells).float()  # every cell has a member: cells <= h * w
        scores = deviation.clone()
        scores[:, (rows[:, None] * w + cols[None, :]).flatten()] = spread  # cell (i, j) -> its representative
        return scores.to(tokens.features.device), None

    @staticmethod
    def _kept_indices(T: int, h: int, w: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Sorted flat indices [T * h' * w'] of the representatives, frame by frame in raster order."""
        frame = (rows[:, None] * w + cols[None, :]).flatten()
        return (torch.arange(T)[:, None] * (h * w) + frame[None, :]).flatten()


def _nearest_to_centres(size: int, cells: int, factor: int | None) -> torch.Tensor:
    """For `cells` pooled cells along an axis of `size` original cells: the original cell nearest each pooled cell's
    centre, ties to the lower index. LongTensor [cells], strictly increasing."""
    i = torch.arange(cells, dtype=torch.float64)
    if factor is not None:  # window [i k, min(i k + k, size)): its middle cell
        start = i * factor
        centre = start + ((torch.clamp(start + factor, max=size) - start) - 1) / 2
    else:  # bilinear, align_corners=False: output centre i + 1/2 maps to (i + 1/2) size / cells - 1/2
        centre = (i + 0.5) * size / cells - 0.5
    return torch.ceil(centre - 0.5).long().clamp(0, size - 1)


def _cell_of(size: int, cells: int, factor: int | None) -> torch.Tensor:
    """The pooled cell [size] each original cell belongs to: its window (integer factor) or the pooled cell whose
    span (size / cells original cells) covers it (bilinear)."""
    index = torch.arange(size)
    if factor is not None:
        return index // factor
    return torch.clamp((index * cells) // size, max=cells - 1)
