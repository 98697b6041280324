"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025,
arXiv 2503.02175).

Token pruning as a Max-Min Diversity Problem: keep the subset whose closest pair (cosine distance) is as far apart as
possible, solved greedily (farthest-first: repeatedly add the token farthest from everything kept so far).
Acts on the projector output, before the LLM, over the whole video at once; needs no attention weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import Press, check_compute_dtype, in_compute_dtype, register, token_budget
from vidpress.types import Query, Selection, VideoTokens

# Rows of the all-pairs pass per block: [ROWS, N] similarities at a time, never the [N, N] matrix.
_ROWS_PER_BLOCK = 1024
# Picks folded into the running min-distance vector at once (one [N, D] x [D, 64] product instead of 64 [N] updates).
_PICKS_PER_FOLD = 64
# Most stale candidates brought up to date before folding instead.
_MAX_CANDIDATES = 1024


@register("divprune")
@dataclass
class DivPrunePress(Press):
    """DivPrune: greedy max-min cosine diversity over all T * M tokens of the video.

    Rule (d(i, j) = 1 - cos(x_i, x_j), on the features as given):
      1. First pick: the token whose nearest other token is farthest, argmax_i min_{j != i} d(i, j).
      2. Then, until round(R * T * M) tokens are kept: add the token whose minimum distance to the kept set is largest,
         argmax_{i not kept} min_{j kept} d(i, j). Ties go to the lower index.
    Effective retention: exactly round(R * T * M) / (T * M). Kept tokens keep their features (no merging).
    With frame_budgets="vidcom2" (vidpress's composition with VidCom²'s budgets): the same greedy rule inside each
    frame t, for its k[t] tokens; the effective retention is then sum k[t] / (T * M).

    Cost: step 1 needs every pair once (N^2 D / 2 multiply-adds, in blocks of 1024 rows); step 2 keeps a running [N]
    min-distance vector, updated by one matrix product with the newest picks every 64 picks; in between, only the
    best few candidates are brought up to date (min distances only shrink, so a candidate whose exact value beats
    every other candidate's stale upper bound is the exact argmax; when none does, the update is made early).
    Memory stays O(1024 N), never [N, N].

    Follows the released code exactly in float32 (and the released precision with compute_dtype="model").

    Args:
        retention: R, fraction of video tokens kept.
        compute_dtype: "float32" (default) or "model": the cosine distances in the features' own dtype (bf16/fp16),
            as the released code (see `vidpress.presses.base.check_compute_dtype`).
    """

    compute_dtype: str = "float32"

    supports_frame_budgets = True

    def __post_init__(self):
        super().__post_init__()
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        N = T * M
        budget = token_budget(self.retention, N)
        x = in_compute_dtype(tokens.features.reshape(N, -1), self.compute_dtype)
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
        per_frame = self.frame_budgets_fca(tokens)
        if per_frame is not None:
            frames = x.view(T, M, -1)
            picks = [torch.arange(M) if k >= M else torch.tensor(greedy_max_min(frames[t], k)).sort().values
                     for t, k in enumerate(per_frame.tolist())]
            keep = torch.cat([p + t * M for t, p in enumerate(picks)]).to(x.device)
            return Selection(keep, N, frame_budgets=per_frame)
        if budget >= N:
            keep = torch.arange(N, device=x.device)
        else:
            keep = torch.tensor(greedy_max_min(x, budget), dtype=torch.long, device=x.device).sort().values
        budgets = torch.bincount(keep.cpu() // M, minlength=T)
        return Selection(keep, N, frame_budgets=budgets)


def nearest_neighbour_similarity(x: torch.Tensor) -> torch.Tensor:
    """For unit rows x [N, D]: the largest cosine of each row to any OTHER row, [N] (-inf when N == 1).

    Walks the upper triangle in blocks of rows: block [a, b) against rows [a, N), maxima taken along both axes.
    """
    N = x.shape[0]
    best = torch.full((N,), -float("inf"), device=x.device)
    for a in range(0, N, _ROWS_PER_BLOCK):
        b = min(a + _ROWS_PER_BLOCK, N)
        sim = x[a:b] @ x[a:].T  # [b - a, N - a]
        rows = torch.arange(b - a, device=x.device)
        sim[rows, rows] = -float("inf")  # a token is not its own neighbour
        best[a:b] = torch.maximum(best[a:b], sim.amax(dim=1))
        best[a:] = torch.maximum(best[a:], sim.amax(dim=0))
    return best


def greedy_max_min(x: torch.Tensor, budget: int) -> list[int]:
    """DivPrune's greedy max-min selection on unit rows x [N, D]; returns `budget` row indices in pick order."""
    N = x.shape[0]
    first = int(torch.argmin(nearest_neighbour_similarity(x)))  # largest nearest-neighbour distance; first on ties
    picks = [first]
    # min_dist[i]: exact min distance of token i to the folded picks (an upper bound of its true value); -inf once kept
    min_dist = 1 - x @ x[first]
    min_dist[first] = -float("inf")
    pending: list[int] = []  # picks not yet folded into min_dist
    while len(picks) < budget:
        pick = _best_candidate(x, min_dist, pending, N - len(picks)) if pending else int(torch.argmax(min_dist))
        if pick is None or len(pending) == _PICKS_PER_FOLD:
            # too stale to decide from a few candidates, or due: fold the pending picks into min_dist
            min_dist = torch.minimum(min_dist, 1 - (x @ x[pending].T).amax(dim=1))
            pending = []
            if pick is None:
                pick = int(torch.argmax(min_dist))
        picks.append(pick)
        pending.append(pick)
        min_dist[pick] = -float("inf")
    return picks


def _best_candidate(x: torch.Tensor, min_dist: torch.Tensor, pending: list[int], available: int) -> int | None:
    """argmax over not-kept tokens of min(min_dist, distance to the pending picks), lowest index on ties, found among
    the few best stale candidates; None when that does not settle it (then folding the pending picks is cheaper)."""
    recent = x[pending]  # [P, D]
    width = 16
    while width < min(available, _MAX_CANDIDATES):
        stale, idx = torch.topk(min_dist, width + 1)  # stale upper bounds, best first
        exact = torch.minimum(stale[:width], 1 - (x[idx[:width]] @ recent.T).amax(dim=1))
        top = exact.max()
        # Everything outside the top `width` has true value <= its stale value <= stale[width]: a strictly larger
        # exact value is the global maximum. Equality could hide a lower-index tie outside, so widen instead.
        if bool(top > stale[width]):
            return int(idx[:width][exact == top].min())
        width *= 4
    return None
