"""FastVID (Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models", NeurIPS 2025,
arXiv 2503.11187).

The video is cut into segments where adjacent frames differ (DySeg); inside each segment a share of the budget keeps
salient tokens and the rest keeps density peaks (DPC-kNN) of the anchor frames, and every other token is averaged into
its nearest kept token (STPrune). Acts on the projector output, before the LLM; needs no attention weights (the
paper's [CLS]-attention saliency is replaced by an attention-free proxy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import Press, apportion, average_into_kept, token_budget
from vidpress.types import Query, Selection, VideoTokens

# Entries per block in the pairwise passes (rows = this // columns): at most 64 MB of float32 at a time.
_BLOCK_ELEMENTS = 1 << 24


@dataclass
class FastVIDPress(Press):
    """FastVID: dynamic temporal segmentation + density-based spatiotemporal pruning with merging.

    Rule:
      1. DySeg. Frame feature f_t = mean of frame t's tokens; s_t = cos(f_t, f_{t+1}). Cut after frame t when s_t is
         among the `min_segments - 1` lowest (the paper's c: at least c segments) or s_t < `threshold` (tau). With
         more cuts than `max_segments - 1` (optional) or than the budget allows (one token per segment at least),
         the lowest-similarity cuts are kept.
      2. Budget: round(R * T * M) tokens, split over segments in proportion to their size (largest remainder, at
         least one each).
      3. Per segment with budget k: the round(`salient_ratio` * k) most salient tokens (attention-free proxy, see
         `saliency`), then k minus that many density peaks among the other tokens of the anchor frames (every
         `anchor_interval`-th frame of the segment, starting at its first; the interval shrinks when those frames
         hold too few tokens). Density peaks, DPC-kNN on unit-normalised features (d = Euclidean distance):
         rho_i = exp(-mean of d^2 to its `knn` nearest candidates); delta_i = distance to the nearest candidate of
         higher density (ties: the lower index counts as higher), or the largest distance for the densest one;
         keep the largest rho * delta.
      4. Every token not kept is averaged into its most cosine-similar kept token of the same segment (salient or
         peak); the merged token sits at the kept token's position. `Selection.features` holds the averages.
    Effective retention: exactly round(R * T * M) / (T * M).

    Choices where the paper leaves room or needs attention: saliency is the cosine distance to the segment's mean
    token ("distinct", default) or the token's L2 norm ("norm"), in place of [CLS] attention; merging goes to the
    nearest kept token of either kind (so a copy of a salient token merges into it rather than into background);
    merging is a plain mean.

    Args:
        retention: R, fraction of video tokens kept.
        min_segments: c, cuts at the c - 1 least similar transitions at least (8 in the paper).
        threshold: tau, also cut wherever adjacent-frame similarity < tau (0.9 in the paper).
        max_segments: optional cap on the number of segments (None: no cap).
        salient_ratio: d, share of each segment's budget for salient tokens (0.4 in the paper).
        anchor_interval: p, anchor-frame spacing for density peaks (4 in the paper).
        knn: neighbours for the local density (DPC-kNN).
        saliency: "distinct" or "norm".
    """

    min_segments: int = 8
    threshold: float = 0.9
    max_segments: int | None = None
    salient_ratio: float = 0.4
    anchor_interval: int = 4
    knn: int = 5
    saliency: str = "distinct"

    def __post_init__(self):
        super().__post_init__()
        for name in ("min_segments", "anchor_interval", "knn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if self.max_segments is not None and (
            isinstance(self.max_segments, bool) or not isinstance(self.max_segments, int) or self.max_segments < 1
        ):
            raise ValueError(f"max_segments must be None or an integer >= 1; got {self.max_segments!r}")
        if self.max_segments is not None and self.max_segments < self.min_segments:
            raise ValueError(f"max_segments ({self.max_segments}) must be >= min_segments ({self.min_segments})")
        try:
            threshold = float(self.threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a number in [-1, 1] (cosine similarity); got {self.threshold!r}") from None
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [-1, 1] (cosine similarity); got {self.threshold!r}")
        self.threshold = threshold
        if isinstance(self.salient_ratio, bool) or not isinstance(self.salient_ratio, (int, float)) or not 0.0 <= self.salient_ratio <= 1.0:
            raise ValueError(f"salient_ratio must be in [0, 1]; got {self.salient_ratio!r}")
        if self.saliency not in ("distinct", "norm"):
            raise ValueError(f"saliency must be 'distinct' or 'norm'; got {self.saliency!r}")

    # -- DySeg --------------------------------------------------------------------------------------------
    def segments(self, tokens: VideoTokens) -> list[tuple[int, int]]:
        """Temporal segments as (first frame, end frame) pairs, in order, covering all T frames."""
        return self._segments(tokens.features.float(), token_budget(self.retention, tokens.num_tokens))

    def _segments(self, x: torch.Tensor, budget: int) -> list[tuple[int, int]]:
        T = x.shape[0]
        if T == 1:
            return [(0, 1)]
        frames = x.mean(dim=1)  # [T, D]
        sim = torch.nn.functional.cosine_similarity(frames[:-1], frames[1:], dim=-1, eps=1e-12)  # [T - 1]
        order = torch.sort(sim, stable=True).indices  # least similar first, earlier transition on ties
        cut = sim < self.threshold
        cut[order[: self.min_segments - 1]] = True
        limit = min(budget, T if self.max_segments is None else self.max_segments) - 1
        if int(cut.sum()) > limit:
            ranked = order[cut[order]]  # the cuts, least similar first
            cut[:] = False
            cut[ranked[:limit]] = True
        bounds = [0] + [int(i) + 1 for i in cut.nonzero().squeeze(1)] + [T]
        return list(zip(bounds[:-1], bounds[1:]))

    # -- STPrune ------------------------------------------------------------------------------------------
    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        N = T * M
        budget = token_budget(self.retention, N)
        x = tokens.features.float()
        segments = self._segments(x, budget)
        budgets = apportion(budget, [(end - start) * M for start, end in segments])
        keep_parts, target = [], torch.arange(N, device=x.device)
        for (start, end), k in zip(segments, budgets):
            local_keep, local_target = self._segment(x[start:end].reshape(-1, x.shape[-1]), end - start, k)
            keep_parts.append(local_keep + start * M)
            target[start * M : end * M] = local_target + start * M
        keep = torch.cat(keep_parts)
        features = average_into_kept(tokens.features.reshape(N, -1), keep, target)
        frame_budgets = torch.bincount(keep.cpu() // M, minlength=T)
        return Selection(keep, N, features=features, frame_budgets=frame_budgets)

    def _segment(self, seg: torch.Tensor, num_frames: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment's tokens seg [n, D] (frame-major) with budget k -> (sorted kept local indices [k], target of
        every local token [n], a local kept index)."""
        n = seg.shape[0]
        M = n // num_frames
        unit = seg / torch.linalg.vector_norm(seg, dim=-1, keepdim=True).clamp_min(1e-12)
        num_salient = min(k, round(self.salient_ratio * k))
        num_peaks = k - num_salient

        if self.saliency == "norm":
            score = torch.linalg.vector_norm(seg, dim=-1)
        else:
            centre = seg.mean(dim=0)
            score = 1 - unit @ (centre / torch.linalg.vector_norm(centre).clamp_min(1e-12))
        salient = torch.sort(score, descending=True, stable=True).indices[:num_salient]
        is_salient = torch.zeros(n, dtype=torch.bool, device=seg.device)
        is_salient[salient] = True

        peaks = salient[:0]
        if num_peaks > 0:
            frame_of = torch.arange(n, device=seg.device) // M
            for interval in range(min(self.anchor_interval, num_frames), 0, -1):
                candidates = ((frame_of % interval == 0) & ~is_salient).nonzero().squeeze(1)
                if candidates.numel() >= num_peaks:
                    break
            peaks = candidates[density_peaks(unit[candidates], num_peaks, self.knn)]
        keep = torch.cat([salient, peaks]).sort().values

        target = torch.arange(n, device=seg.device)
        is_kept = torch.zeros(n, dtype=torch.bool, device=seg.device)
        is_kept[keep] = True
        rest = (~is_kept).nonzero().squeeze(1)
        if rest.numel():
            rows = max(1, _BLOCK_ELEMENTS // keep.numel())
            kept_unit_t = unit[keep].T
            nearest = torch.cat([(unit[r] @ kept_unit_t).argmax(dim=1) for r in rest.split(rows)])
            target[rest] = keep[nearest]  # first maximum: the lower kept index on ties
        return keep, target


def density_peaks(unit: torch.Tensor, count: int, knn: int) -> torch.Tensor:
    """DPC-kNN on unit rows [C, D]: indices of the `count` tokens with the largest rho * delta, sorted ascending.

    rho_i = exp(-mean squared distance to the knn nearest other rows); delta_i = distance to the nearest row of
    higher density (equal density: the lower index is higher), the largest distance for the top one. Pairwise
    distances are computed in blocks of rows (twice: once for rho, once for delta), never as one [C, C] matrix
    beyond 2^24 entries.
    """
    C = unit.shape[0]
    if count >= C:
        return torch.arange(C, device=unit.device)
    k = min(knn, C - 1)
    rows = max(1, _BLOCK_ELEMENTS // C)
    index = torch.arange(C, device=unit.device)

    def blocks():
        for a in range(0, C, rows):
            b = min(a + rows, C)
            sq = (2 - 2 * unit[a:b] @ unit.T).clamp_min(0)  # squared Euclidean distance of unit vectors
            sq[torch.arange(b - a, device=unit.device), index[a:b]] = float("inf")  # not its own neighbour
            yield a, b, sq

    single = list(blocks()) if rows >= C else None  # one block: compute it once for both passes
    rho = torch.ones(C, device=unit.device)
    if k > 0:
        for a, b, sq in single or blocks():
            rho[a:b] = torch.exp(-torch.topk(sq, k, dim=1, largest=False).values.mean(dim=1))
    delta = torch.zeros(C, device=unit.device)
    for a, b, sq in single or blocks():
        sq = sq.clone()
        sq[torch.arange(b - a, device=unit.device), index[a:b]] = 0.0
        r = rho[a:b, None]
        higher = (rho[None, :] > r) | ((rho[None, :] == r) & (index[None, :] < index[a:b, None]))
        dist = sq.sqrt()
        nearest_higher = dist.masked_fill(~higher, float("inf")).amin(dim=1)
        delta[a:b] = torch.where(higher.any(dim=1), nearest_higher, dist.amax(dim=1))
    score = rho * delta
    return torch.sort(score, descending=True, stable=True).indices[:count].sort().values
