"""FastVID (Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models", NeurIPS 2025,
arXiv 2503.11187).

The video is cut into segments where adjacent frames differ (DySeg); inside each segment every frame keeps its most
salient tokens, and the anchor frames keep density peaks (DPC-kNN) of their other tokens as context tokens, into which
the segment's remaining tokens are merged (STPrune). Acts on the projector output, before the LLM; needs no attention
weights (the paper's [CLS]-attention saliency is replaced by an attention-free proxy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import (
    Press,
    apportion,
    check_compute_dtype,
    in_compute_dtype,
    keep_top_per_frame,
    register,
    token_budget,
)
from vidpress.types import Query, Selection, VideoTokens

# Entries per block in the token-to-context distance pass (rows = this // columns).
_BLOCK_ELEMENTS = 1 << 24

@register("fastvid")
@dataclass
class FastVIDPress(Press):
    """FastVID: dynamic temporal segmentation + density-based spatiotemporal pruning with merging.

    Rule (the released code's, apart from the saliency proxy, the budget split and tie-breaking, noted below):
      1. DySeg. Frame feature f_t = mean of frame t's tokens; s_t = cos(f_t, f_{t+1}). Cut after frame t when s_t is
         among the `min_segments - 1` lowest (the paper's c: at least c segments) or s_t < `threshold` (tau). With
         more cuts than `max_segments - 1` (optional) or than the budget allows (one token per segment at least),
         the lowest-similarity cuts are kept.
      2. Budget. `budget="exact"` (default): round(R * T * M) tokens, split over segments in proportion to their size
         (largest remainder, at least one each) and inside a segment evenly over its frames (b_f per frame).
         `budget="per_frame"` (released): b_f = int(R * M) for every frame.
      3. Salient tokens: every frame keeps its b_f - int(b_f * d) most salient tokens (d = `context_ratio`, 0.4:
         60% salient), ranked by the attention-free proxy `saliency`. They keep their features and take no merges.
      4. Context tokens: anchor frames are every p-th frame (p = `anchor_interval`) counted back from the segment's
         LAST frame. The segment's context budget, sum_f int(b_f * d), is split evenly over its anchor frames (an
         anchor frame with too few non-salient tokens passes the rest on; what no anchor frame can hold goes,
         spread evenly over the frames, to their next most salient tokens). With "per_frame", as released, each of
         the k anchor frames gets floor(L * int(b * d) / k) for a segment of L frames, and the remainder
         (L * int(b * d)) mod k is dropped. On each anchor frame, the density peaks
         (DPC-kNN) of its non-salient tokens on raw features: dist = Euclidean / sqrt(D); rho_i = exp(-mean dist^2 to
         its `knn` (4) nearest tokens, itself included); delta_i = dist to the nearest token of higher density, or the
         largest distance of the frame for the densest; keep the largest rho * delta.
      5. Merging, per anchor frame: every other non-salient token of the segment goes to the nearest (Euclidean)
         context token of that anchor frame; a context token c with n tokens assigned becomes
         (c + w * sum(assigned)) / (1 + n * w), w = clamp(1 / (n + 1), min=0.6), at c's position
         (`Selection.features`). A token thus feeds one context token of every anchor frame of its segment.
    Effective retention: exactly round(R * T * M) / (T * M) with `budget="exact"`; with "per_frame", per segment of
    L frames and k = ceil(L / p) anchor frames, L * (b - int(b * d)) + k * floor(L * int(b * d) / k) tokens,
    b = int(R * M) (at least one token per segment), as released: up to k - 1 fewer than L * b per segment.

    Differences from the released code: saliency is the cosine distance to the segment's mean token ("distinct",
    default) or the token's L2 norm ("norm"), in place of [CLS] attention; density ties go to the lower index where
    the released code adds random noise; the default budget is exact (the per-frame int() budget keeps fewer tokens
    than R, e.g. 0.22 at R = 0.25, M = 9); step 5 is vidpress's reading of the paper, not the release's: the released
    code assigns a token to the context token of highest cosine similarity, merges as w * c + (1 - w) * mean(assigned)
    and merges an anchor frame's own tokens within that frame.

    Args:
        retention: R, fraction of video tokens kept.
        min_segments: c, cuts at the c - 1 least similar transitions at least (8 in the paper).
        threshold: tau, also cut wherever adjacent-frame similarity < tau (0.9 in the paper).
        max_segments: optional cap on the number of segments (None: no cap).
        context_ratio: d, share int(b * d) of each frame's budget b that goes to context tokens (0.4 released).
        anchor_interval: p, anchor-frame spacing (4 in the paper), counted back from each segment's last frame.
        knn: k of DPC-kNN, neighbours for the local density, the token itself included (4 released).
        saliency: "distinct" or "norm".
        budget: "exact" (default) or "per_frame" (released: int(R * M) per frame).
        compute_dtype: "float32" (default) or "model": segmentation, saliency, densities and distances in the
            features' own dtype, as the released code (see `vidpress.presses.base.check_compute_dtype`).
    """

    min_segments: int = 8
    threshold: float = 0.9
    max_segments: int | None = None
    context_ratio: float = 0.4
    anchor_interval: int = 4
    knn: int = 4
    saliency: str = "distinct"
    budget: str = "exact"
    compute_dtype: str = "float32"

    no_frame_budgets_because = ("it splits the budget over its own temporal segments and merges each segment's "
                                "tokens into context tokens of its anchor frames, across frames")

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
            raise ValueError(
                f"threshold must be a number in [-1, 1] (cosine similarity); got {self.threshold!r}") from None
        if isinstance(self.threshold, bool) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [-1, 1] (cosine similarity); got {self.threshold!r}")
        self.threshold = threshold
        if (isinstance(self.context_ratio, bool) or not isinstance(self.context_ratio, (int, float))
                or not 0.0 <= self.context_ratio <= 1.0):
            raise ValueError(f"context_ratio must be in [0, 1]; got {self.context_ratio!r}")
        if self.saliency not in ("distinct", "norm"):
            raise ValueError(f"saliency must be 'distinct' or 'norm'; got {self.saliency!r}")
        if self.budget not in ("exact", "per_frame"):
            raise ValueError(f"budget must be 'exact' (round(R * T * M) in total) or 'per_frame' (released: int(R * M) "
                             f"per frame); got {self.budget!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    # -- DySeg --------------------------------------------------------------------------------------------
    def segments(self, tokens: VideoTokens) -> list[tuple[int, int]]:
        """Temporal segments as (first frame, end frame) pairs, in order, covering all T frames."""
        return self._segments(in_compute_dtype(tokens.features, self.compute_dtype),
                              self._total_budget(tokens.num_frames, tokens.tokens_per_frame))

    def _total_budget(self, T: int, M: int) -> int:
        """Tokens the video keeps (for "per_frame", the most segments that may hold one token each)."""
        return token_budget(self.retention, T * M) if self.budget == "exact" else T * M

    def _segments(self, x: torch.Tensor, budget: int) -> list[tuple[int, int]]:
        T = x.shape[0]
        if T == 1:
            return [(0, 1)]
        frames = x.mean(dim=1)  # [T, D]
        sim = torch.nn.functional.cosine_similarity(frames[:-1], frames[1:], dim=-1, eps=1e-12).float()  # [T - 1]
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
    def segment_budgets(self, segments: list[tuple[int, int]], M: int) -> list[list[int]]:
        """Per segment, the budget b_f of each of its frames (step 2)."""
        T = segments[-1][1]
        if self.budget == "per_frame":
            per_frame = int(self.retention * M)
            out = [[per_frame] * (end - start) for start, end in segments]
            for frames in out:
                if per_frame == 0:  # at least one token per segment, on its last frame
                    frames[-1] = 1
            return out
        totals = apportion(token_budget(self.retention, T * M), [(end - start) * M for start, end in segments])
        return [_spread(total, end - start) for (start, end), total in zip(segments, totals)]

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        N = T * M
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        segments = self._segments(x, self._total_budget(T, M))
        keep_parts, feature_parts = [], []
        for (start, end), budgets in zip(segments, self.segment_budgets(segments, M)):
            local_keep, local_features = self._segment(x[start:end], budgets)
            keep_parts.append(local_keep + start * M)
            feature_parts.append(local_features)
        keep = torch.cat(keep_parts)
        features = torch.cat(feature_parts).to(tokens.features.dtype)
        frame_budgets = torch.bincount(keep.cpu() // M, minlength=T)
        return Selection(keep, N, features=features, frame_budgets=frame_budgets)

    def _segment(self, seg: torch.Tensor, budgets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment's tokens seg [F, M, D] with per-frame budgets b_f -> (sorted kept local indices [k] into
        F * M, their features [k, D] after merging)."""
        F, M, D = seg.shape
        flat = seg.reshape(F * M, D)
        device = seg.device
        salient_counts = torch.tensor([b - int(b * self.context_ratio) for b in budgets])
        context_total = sum(budgets) - int(salient_counts.sum())

        if self.saliency == "norm":
            score = torch.linalg.vector_norm(flat, dim=-1)
        else:
            unit = flat / torch.linalg.vector_norm(flat, dim=-1, keepdim=True).clamp_min(1e-12)
            centre = flat.mean(dim=0)
            score = 1 - unit @ (centre / torch.linalg.vector_norm(centre).clamp_min(1e-12))
        score = score.float().view(F, M)

        anchors = list(range(F - 1, -1, -self.anchor_interval))[::-1]
        room = [M - int(salient_counts[a]) for a in anchors]
        if self.budget == "per_frame":
            # released count: every anchor frame gets floor(context budget / anchor frames); the remainder is dropped
            context_total -= context_total % len(anchors)
        context_counts = _fill(context_total, room)
        leftover = context_total - sum(context_counts)
        if leftover:  # the anchor frames cannot hold the context budget: the frames' next most salient tokens take it
            taken = salient_counts.clone()
            taken[anchors] += torch.tensor(context_counts)
            salient_counts += torch.tensor(_fill(leftover, [M - int(c) for c in taken]))
        salient = torch.zeros(F * M, dtype=torch.bool, device=device)
        salient[keep_top_per_frame(score, salient_counts)] = True

        keep_parts = [salient.nonzero().squeeze(1)]
        context_sets = []
        for a, count in zip(anchors, context_counts):
            if count == 0:
                continue
            candidates = a * M + (~salient[a * M : (a + 1) * M]).nonzero().squeeze(1)
            peaks = candidates[density_peaks(flat[candidates], count, self.knn)]
            context_sets.append(peaks)
            keep_parts.append(peaks)
        keep = torch.cat(keep_parts).sort().values
        features = flat[keep].float()

        # Step 5: per anchor frame, every other non-salient token of the segment joins its nearest context token there.
        is_context = torch.zeros(F * M, dtype=torch.bool, device=device)
        for peaks in context_sets:
            is_context[peaks] = True
        sources = (~salient & ~is_context).nonzero().squeeze(1)
        if sources.numel():
            slot = torch.full((F * M,), -1, dtype=torch.long, device=device)
            slot[keep] = torch.arange(keep.numel(), device=device)
            # gathered once for every anchor frame (each anchor frame takes all of them): [S, D] in the compute dtype
            # for the distances, in float32 for the merge
            src = flat[sources]
            src_float = src.float()
            for peaks in context_sets:
                targets = flat[peaks]
                target_sq = (targets * targets).sum(-1)[None, :]
                # nearest by Euclidean distance: argmin ||t||^2 - 2 x.t (first minimum: the lower index on ties)
                nearest = torch.cat([
                    (target_sq - 2 * (rows @ targets.T)).argmin(dim=1)  # x2 after the product: exact, [S, C] not [S, D]
                    for rows in src.split(max(1, _BLOCK_ELEMENTS // peaks.numel()))
                ])
                rows = slot[peaks]
                n = torch.bincount(nearest, minlength=peaks.numel()).float()
                w = (1 / (n + 1)).clamp(min=0.6)
                # (c + w * sum(a)) / (1 + n * w), written as c + w * sum(a - c) / (1 + n * w): copies merge exactly
                own = targets.float()
                deltas = torch.zeros(peaks.numel(), D, device=device).index_add_(0, nearest, src_float - own[nearest])
                features[rows] = features[rows] + (w / (1 + n * w))[:, None] * deltas
        return keep, features


def _spread(total: int, parts: int) -> list[int]:
    """`total` split over `parts` as evenly as possible, the remainder's +1s on evenly spaced parts."""
    base, extra = divmod(total, parts)
    return [base + (i + 1) * extra // parts - i * extra // parts for i in range(parts)]


def _fill(total: int, room: list[int]) -> list[int]:
    """`total` split evenly over parts of capacity `room`, passing what a full part cannot hold on to the others.
    Returns the counts; their sum is min(total, sum(room))."""
    counts = [0] * len(room)
    left = total
    while left > 0:
        open_parts = [i for i in range(len(room)) if counts[i] < room[i]]
        if not open_parts:
            break
        share = _spread(left, len(open_parts))
        for i, extra in zip(open_parts, share):
            add = min(extra, room[i] - counts[i])
            counts[i] += add
            left -= add
    return counts


def density_peaks(x: torch.Tensor, count: int, knn: int) -> torch.Tensor:
    """DPC-kNN on raw rows x [C, D] (released rule): indices of the `count` rows with the largest rho * delta, sorted.

    dist = Euclidean / sqrt(D); rho_i = exp(-mean of dist^2 to the knn nearest rows, row i itself included);
    delta_i = dist to the nearest row of higher density (equal density: the lower index is higher), or the largest
    distance between any two rows for the densest one. [C, C] distances: C is one frame's token count.
    """
    C, D = x.shape
    if count >= C:
        return torch.arange(C, device=x.device)
    sq_norm = (x * x).sum(-1)
    sq = ((sq_norm[:, None] + sq_norm[None, :] - 2 * (x @ x.T)).clamp_min(0) / D).float()
    sq.fill_diagonal_(0.0)
    k = min(knn, C)
    rho = torch.exp(-torch.topk(sq, k, dim=1, largest=False).values.mean(dim=1))
    index = torch.arange(C, device=x.device)
    higher = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & (index[None, :] < index[:, None]))
    dist = sq.sqrt()
    nearest_higher = dist.masked_fill(~higher, float("inf")).amin(dim=1)
    delta = torch.where(higher.any(dim=1), nearest_higher, dist.max())
    score = rho * delta
    return torch.sort(score, descending=True, stable=True).indices[:count].sort().values
