"""HoliTom (arXiv 2505.21334, NeurIPS 2025): holistic token merging, as the authors release it.

Outside the LLM, the frames are split into windows by dynamic programming so that as many tokens as possible stay the
same (cosine above tau) at their position through a window; such static tokens become one window-mean token each,
clustered by DPC-kNN; every frame keeps its dynamic tokens that receive the most vision-encoder attention. The budget
of what is left is scaled so the video keeps about R of its tokens. Inside the LLM, at one layer, the half of the
video tokens the last prompt token attends to least is folded into the most similar kept tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidpress.presses.base import LayerPress, check_compute_dtype, in_compute_dtype, register
from vidpress.presses.dpc_knn import dpc_knn
from vidpress.presses.flashvid import vision_received
from vidpress.types import Query, Selection, VideoTokens


@register("holitom")
@dataclass
class HoliTomPress(LayerPress):
    """HoliTom: outer-LLM windows, static clusters and dynamic tokens, then the inner-LLM merge.

    Rule per video X [T, M, D] with vision attention a [T, M] ("vision_received": attention each token receives in
    the vision encoder's last used block, mean over heads and all queries, pooled / merged like the features):
      H1 sim[t, m] = cos(X[t, m], X[t + 1, m]), t = 0 .. T-2.
      H2 Windows by dynamic programming: token m is static in window [s, e] when sim[t, m] > tau for every t in
         [s, e - 1]; gain(s, e) = (e - s) * #static. dp[i] = max(dp[i - 1] (frame i alone), dp[i - w] + gain(i - w + 1,
         i) for w = 2 .. min(i + 1, `max_window`)), replaced only when strictly larger (ties keep the single frame,
         then the shorter window); backtracked from T - 1. removed = dp[T - 1].
      H3 R' = min(R * N / (N - removed), 1), N = T * M.
      H4 A window [s, e], e > s: each static token m becomes the mean of X[s..e, m] at frame s's position; the others
         are dynamic in each frame. A single-frame window: all M tokens are dynamic.
      H5 Dynamic tokens: each frame keeps its ceil(n_dyn * R') with the highest attention (ties to the lower index).
      H6 Static tokens of a window: c = round(n_S * R') DPC-kNN clusters (`vidpress.presses.dpc_knn`, k = min(c,
         `knn`), centres in index order); a centre with members becomes `cluster_weight` * centre + (1 -
         `cluster_weight`) * mean(members) (released 0.6 / 0.4), else stays itself; at the centre's position. c = 0
         drops the window's static tokens (released).
    About R * N tokens enter the LLM (a little more from the ceilings, fewer when the static windows alone leave less
    than R * N): `PressReport.retention_before_llm`. `threshold` None is the released choice: 0.65 at R <= 0.10 (the
    OV-7B script at 10 %), else 0.8.
      H8 Inside the LLM (prefill), at the input of layer K (released 18 of 28; other depths K = floor(18 * Lyr / 28),
         at least the first layer the model allows): the last prompt token's head-averaged attention in layer K - 1
         ranks the L_v frame tokens; round(L_v * (1 - `llm_merge_ratio`)) stay (released r = 0.5). Cosine
         similarities of the hidden states entering layer K are computed once; every other frame token i, in
         ascending order, is folded into its most similar kept token j as h_j := (h_j + h_i) / 2 (released: in
         sequence, so later tokens weigh more; vidpress computes the same sequence in closed form,
         h_j / 2^n + sum_k h_(i_k) / 2^(n - k + 1)). Kept tokens keep their position ids. `llm_merge=False` is the
         release's "HoliTom (w/o M)" (the stage then keeps every token). `PressReport.retention` is the layer
         average, (K + (Lyr - K) * (1 - r)) / Lyr of what enters the LLM: R, as released, is the outer retention.

    Families: released for LLaVA-OneVision / LLaVA-Video only. vidpress runs the same rule on every family: on
    Qwen2-VL / 2.5-VL / 3-VL X is the merger output (a "frame" is a temporal patch of two frames) and a is the
    attention each patch receives in the last vision block, averaged over each 2 x 2 merge group (Qwen2.5-VL's window
    order undone); kept tokens keep their M-RoPE (t, h, w) positions, a static token frame s's; Qwen3-VL's
    DeepStack features are gathered at the kept indices. (The VidCom2 authors' `qwen` port ranks dynamic tokens by
    their L2 norm instead and has no inner merge.)

    Departures from the release: H8 ranks and merges the frame tokens only (the release's visual span also holds
    the video block's newline tokens); tokens are emitted in index order (the released LLaVA-Video "grid" order
    without newlines; for LLaVA-OneVision the release puts a window's static tokens before frame s's dynamic tokens)
    and keep their original position ids (the release renumbers them); the DPC-kNN density noise comes from a generator
    seeded with `seed` per video (the release: the global RNG); similarities in float32 by default
    (`compute_dtype`); batches of any size (the release: 1); if nothing at all would be kept, the token of frame 0
    with the highest attention is.

    Args:
        retention: R, fraction of video tokens kept (about).
        threshold: tau, the static cosine threshold; None: 0.65 at R <= 0.10, else 0.8.
        cluster_weight: Beta, the centre's weight in a merged static cluster (0.6).
        knn: neighbours of the DPC-kNN density (7).
        max_window: longest window in frames (1024 released: unlimited in practice).
        seed: seed of the DPC-kNN density noise.
        llm_merge: run H8 inside the LLM (released "HoliTom"); False: "HoliTom (w/o M)".
        llm_layer: K; None: the released layer 18 of 28 scaled to the model's depth.
        llm_merge_ratio: r, the share of frame tokens folded away at layer K (0.5).
        compute_dtype: "float32" (default) or "model": similarities, means and the LLM ranking in the model's dtype,
            as released (DPC distances are float32 in both).
    """

    supports_frame_budgets = False
    no_frame_budgets_because = ("its temporal windows merge static tokens across frames and set each frame's dynamic "
                                "budget themselves")

    threshold: float | None = None
    cluster_weight: float = 0.6
    knn: int = 7
    max_window: int = 1024
    seed: int = 0
    llm_merge: bool = True
    llm_layer: int | None = None
    llm_merge_ratio: float = 0.5
    compute_dtype: str = "float32"

    needs_vision_stats = True
    prunes_before_llm = True

    def __post_init__(self):
        super().__post_init__()
        if self.threshold is not None:
            if (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
                    or not -1.0 <= self.threshold <= 1.0):
                raise ValueError(f"threshold must be None or a cosine in [-1, 1]; got {self.threshold!r}")
            self.threshold = float(self.threshold)
        weight = self.cluster_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"cluster_weight must be a number in [0, 1]; got {weight!r}")
        for name in ("knn", "max_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")
        if not isinstance(self.llm_merge, bool):
            raise ValueError(f"llm_merge must be True or False; got {self.llm_merge!r}")
        if self.llm_layer is not None and (isinstance(self.llm_layer, bool) or not isinstance(self.llm_layer, int)
                                           or self.llm_layer < 1):
            raise ValueError(f"llm_layer must be None or an integer >= 1; got {self.llm_layer!r}")
        ratio = self.llm_merge_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(f"llm_merge_ratio must be a share in [0, 1); got {ratio!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)
        self._first_layer = 1

    def post_init_from_model(self, model) -> None:
        """The first LLM layer the model lets a stage start at (Qwen3-VL: after its DeepStack layers)."""
        from vidpress.models import get_adapter

        self._first_layer = get_adapter(model).min_prune_layer

    # -- the inner-LLM merge (H8) -----------------------------------------------------------------------------
    def schedule(self, num_layers: int) -> list[tuple[int, float]]:
        """[(K, 1 - r)], or [(K, 1.0)] with `llm_merge=False`."""
        K = self.llm_layer if self.llm_layer is not None else max(self._first_layer, 1, 18 * num_layers // 28)
        if K >= num_layers:
            raise ValueError(f"HoliTom's LLM merge at layer {K} does not fit a model of {num_layers} LLM layers; pass "
                             "llm_layer below that, or llm_merge=False (the outer part alone)")
        return [(K, 1.0 - self.llm_merge_ratio if self.llm_merge else 1.0)]

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """Any retention is reached up to the per-frame rounding: the outer part acts before the first layer."""
        return 0.0

    def fold_pruned(self, hidden: torch.Tensor, keep: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """H8's merge: each dropped frame token of a row folded into its most cosine-similar kept frame token by
        sequential pairwise averaging in ascending order. hidden [B, L, D], keep / frame [B, L] -> [B, L, D]."""
        out = hidden.clone()
        for row in range(hidden.shape[0]):
            kept = (frame[row] & keep[row]).nonzero().squeeze(1)
            folded = (frame[row] & ~keep[row]).nonzero().squeeze(1)  # ascending
            if kept.numel() == 0 or folded.numel() == 0:
                continue
            h = in_compute_dtype(hidden[row], self.compute_dtype)
            unit = F.normalize(h, dim=-1)
            target = (unit[folded] @ unit[kept].T).argmax(dim=1)  # [P] into kept, first maximum
            counts = torch.bincount(target, minlength=kept.numel())  # n per kept token
            order = torch.sort(target, stable=True).indices  # by target, ascending position inside each
            starts = counts.cumsum(0) - counts
            rank = torch.empty_like(target)
            rank[order] = torch.arange(target.numel(), device=target.device) - starts[target[order]]  # 0-based
            # after n averages: h_j / 2^n + the k-th folded token (rank k - 1) / 2^(n - k + 1)
            weights = torch.pow(2.0, (rank - counts[target]).to(h.dtype))
            merged = h[kept] * torch.pow(2.0, -counts.to(h.dtype))[:, None]
            merged.index_add_(0, target, h[folded] * weights[:, None])
            out[row, kept] = merged.to(hidden.dtype)
        return out

    @property
    def tau(self) -> float:
        """The static threshold in use (see `threshold`)."""
        if self.threshold is not None:
            return self.threshold
        return 0.65 if self.retention <= 0.10 + 1e-12 else 0.8

    def similarity(self, tokens: VideoTokens) -> torch.Tensor:
        """H1: cosine of every token to the same position in the next frame, [T - 1, M]."""
        unit = F.normalize(in_compute_dtype(tokens.features, self.compute_dtype), dim=-1)
        return (unit[:-1] * unit[1:]).sum(-1)

    def windows(self, static: torch.Tensor) -> tuple[list[tuple[int, int]], int]:
        """H2 on static [T - 1, M] (sim > tau): windows as (first, last) frames (inclusive) in order, and removed."""
        T = static.shape[0] + 1
        best, length = [0] * T, [1] * T
        for i in range(T):
            best[i] = best[i - 1] if i else 0
            still = torch.ones(static.shape[1], dtype=torch.bool, device=static.device)
            for w in range(2, min(i + 1, self.max_window) + 1):
                j = i - w  # window [j + 1, i]: transitions j + 1 .. i - 1
                still &= static[j + 1]
                value = (best[j] if j >= 0 else 0) + (w - 1) * int(still.sum())
                if value > best[i]:
                    best[i], length[i] = value, w
        windows, i = [], T - 1
        while i >= 0:
            windows.append((i - length[i] + 1, i))
            i -= length[i]
        return windows[::-1], best[T - 1]

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M, D = tokens.features.shape
        N = T * M
        device = tokens.features.device
        attention = vision_received(tokens, type(self).__name__).float()
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        static = self.similarity(tokens) > self.tau  # [T - 1, M]
        windows, removed = self.windows(static)
        share = min(self.retention * N / (N - removed), 1.0)
        generator = torch.Generator().manual_seed(self.seed)
        index = torch.arange(N, device=device).view(T, M)
        keep_parts, feature_parts = [], []
        for first, last in windows:
            still = static[first:last].all(dim=0) if last > first else torch.zeros(M, dtype=torch.bool, device=device)
            dynamic = (~still).nonzero().squeeze(1)
            count = math.ceil(dynamic.numel() * share)
            if count:
                for t in range(first, last + 1):
                    order = torch.sort(attention[t, dynamic], descending=True, stable=True).indices[:count]
                    kept = dynamic[order].sort().values
                    keep_parts.append(index[t, kept])
                    feature_parts.append(tokens.features[t, kept].float())
            positions = still.nonzero().squeeze(1)
            clusters = round(positions.numel() * share)
            if clusters:
                means = x[first : last + 1, positions].mean(dim=0)  # [n_S, D]
                centres, assign = dpc_knn(means, clusters, self.knn, generator, sort_centres=True)
                members = torch.ones(positions.numel(), dtype=torch.bool, device=device)
                members[centres] = False
                sums = torch.zeros(clusters, D, dtype=means.dtype, device=device).index_add_(
                    0, assign[members], means[members])
                counts = torch.bincount(assign[members], minlength=clusters)
                merged = torch.where((counts > 0)[:, None], self.cluster_weight * means[centres]
                                     + (1 - self.cluster_weight) * sums / counts.clamp(min=1)[:, None].to(sums.dtype),
                                     means[centres])
                keep_parts.append(index[first, positions[centres]])
                feature_parts.append(merged.float())
        if not keep_parts:  # every window's static clusters rounded to 0 and no dynamic token: keep one token
            best = int(attention[0].argmax())
            keep_parts, feature_parts = [index[0, best : best + 1]], [tokens.features[0, best : best + 1].float()]
        keep = torch.cat(keep_parts)
        order = torch.argsort(keep)
        keep = keep[order]
        features = torch.cat(feature_parts)[order].to(tokens.features.dtype)
        return Selection(keep, N, features=features, frame_budgets=torch.bincount(keep.cpu() // M, minlength=T))
